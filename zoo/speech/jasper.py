"""Jasper and QuartzNet: deep 1D-convolutional CTC acoustic models.

Jasper (Li et al., arXiv 1904.03288, §2, Fig. 1) is a stack of B blocks, each of R sub-blocks
``conv1d -> norm -> ReLU -> dropout``; a residual connection (1x1 conv + norm projection of the
block input) is added to the last sub-block's normalised output before its ReLU. *Dense residual*
(Jasper DR, §2.2, Fig. 2): block ``i`` adds the projections of the prologue's output and of the
output of every earlier block (its own input included). A prologue conv (stride 2 in the paper)
precedes the blocks; the epilogue has one dilated conv and a 1x1 conv; a final 1x1 conv with bias
maps to the vocabulary + blank. QuartzNet (Kriman et al., arXiv 1910.10261) is the same network
with time-channel separable convolutions (depthwise conv over time, then a pointwise 1x1 conv)
and plain residuals.

Convolutions are *masked*: frames past each utterance's length are zeroed before every conv that
mixes frames, so the padding of a batch never changes an utterance's output (in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.registry import register

NORMS = ("batchnorm", "weightnorm", "layernorm")
RESIDUALS = ("dense", "plain", "none")
RESIDUAL_MODES = ("add", "max")


@dataclass
class JasperConfig:
    """Jasper BxR / QuartzNet hyperparameters.

    ``blocks`` holds one ``(filters, kernel, repeat, dropout)`` tuple per block (so B = len(blocks),
    R = repeat); ``epilogue`` one ``(filters, kernel, dilation, dropout)`` tuple per epilogue conv.
    Defaults are Jasper 10x5 DR (NeMo ``jasper_10x5dr.yaml``, 64 log-mels, 28 characters + blank).
    """

    in_features: int = 64
    num_classes: int = 29
    prologue_filters: int = 256
    prologue_kernel: int = 11
    prologue_stride: int = 2
    prologue_dropout: float = 0.2
    blocks: tuple[tuple[int, int, int, float], ...] = (
        (256, 11, 5, 0.2),
        (256, 11, 5, 0.2),
        (384, 13, 5, 0.2),
        (384, 13, 5, 0.2),
        (512, 17, 5, 0.2),
        (512, 17, 5, 0.2),
        (640, 21, 5, 0.3),
        (640, 21, 5, 0.3),
        (768, 25, 5, 0.3),
        (768, 25, 5, 0.3),
    )
    epilogue: tuple[tuple[int, int, int, float], ...] = ((896, 29, 2, 0.4), (1024, 1, 1, 0.4))
    residual: str = "dense"  # "dense" (Jasper DR) | "plain" (block input only) | "none"
    norm: str = "batchnorm"  # "batchnorm" | "weightnorm" | "layernorm"
    separable: bool = False  # time-channel separable convs (QuartzNet)
    norm_eps: float = 1e-3
    residual_mode: str = "add"  # "add" (the paper) | "max": element-wise max with each projection (NeMo option)


def frame_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, 1, max_len) float mask, 1 on valid frames."""
    return (torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1)


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each frame of a (B, C, T) tensor (padding-independent)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvNorm(nn.Module):
    """Masked 1D conv (plain, or depthwise + pointwise when ``separable``) followed by a norm.

    With ``norm="weightnorm"`` the conv is weight-normalised (Salimans & Kingma) and has a bias
    instead of a norm layer; otherwise the conv has no bias (the norm's shift replaces it).

    Shapes: ``x`` (B, C_in, T), ``mask`` (B, 1, T) -> (B, C_out, T // stride rounded up).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        separable: bool = False,
        norm: str = "batchnorm",
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel sizes must be odd (same padding), got {kernel}")
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        padding = dilation * (kernel - 1) // 2
        bias = norm == "weightnorm"
        self.depthwise = (
            nn.Conv1d(c_in, c_in, kernel, stride=stride, dilation=dilation, padding=padding, groups=c_in, bias=False)
            if separable and kernel > 1
            else None
        )
        if self.depthwise is None:
            self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation, padding=padding, bias=bias)
        else:
            self.conv = nn.Conv1d(c_in, c_out, 1, bias=bias)
        if norm == "weightnorm":
            self.conv = nn.utils.parametrizations.weight_norm(self.conv)
            self.norm: nn.Module = nn.Identity()
        elif norm == "layernorm":
            self.norm = ChannelLayerNorm(c_out, eps=eps)
        else:
            self.norm = nn.BatchNorm1d(c_out, eps=eps, momentum=0.1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.kernel > 1:  # 1x1 convs mix no frames: masking them changes no valid output
            x = x * mask
        if self.depthwise is not None:
            x = self.depthwise(x)
        return self.norm(self.conv(x))


class JasperBlock(nn.Module):
    """R sub-blocks ``conv -> norm -> ReLU -> dropout``; the residual projections are added to the
    last sub-block after its norm and before its ReLU (Jasper Fig. 1/2). ``residual_mode="max"``
    instead takes ``x = max(x, proj_k(source_k))`` for each projection in turn (NeMo's ``residual_mode: max``)."""

    def __init__(
        self,
        c_in: int,
        filters: int,
        kernel: int,
        repeat: int,
        dropout: float,
        residual_channels: list[int],
        *,
        separable: bool,
        norm: str,
        eps: float,
        residual_mode: str = "add",
    ) -> None:
        super().__init__()
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode must be one of {RESIDUAL_MODES}, got {residual_mode!r}")
        self.residual_mode = residual_mode
        self.convs = nn.ModuleList(
            ConvNorm(c_in if r == 0 else filters, filters, kernel, separable=separable, norm=norm, eps=eps)
            for r in range(repeat)
        )
        self.residuals = nn.ModuleList(ConvNorm(c, filters, 1, norm=norm, eps=eps) for c in residual_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, earlier: list[Tensor], mask: Tensor) -> Tensor:
        """``earlier``: the outputs the residual projections read (dense: all earlier, plain: input)."""
        for i, conv in enumerate(self.convs):
            x = conv(x, mask)
            if i == len(self.convs) - 1:
                for proj, source in zip(self.residuals, earlier, strict=True):
                    x = x + proj(source, mask) if self.residual_mode == "add" else torch.maximum(x, proj(source, mask))
            x = self.dropout(F.relu(x))
        return x


class Jasper(nn.Module):
    """Jasper BxR (dense residual optional) / QuartzNet encoder with a CTC output layer.

    Follows the zoo speech encoder protocol: ``forward(features (B, F, T), lengths (B,))`` returns
    ``logits (B, T', num_classes)`` (not log-probabilities) and ``out_lengths (B,)`` with
    ``T' = ceil(T / time_reduction)``.
    """

    Config = JasperConfig

    def __init__(self, config: JasperConfig) -> None:
        super().__init__()
        if config.residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {config.residual!r}")
        self.config = config
        self.time_reduction = config.prologue_stride
        common = dict(separable=config.separable, norm=config.norm, eps=config.norm_eps)
        self.prologue = ConvNorm(
            config.in_features, config.prologue_filters, config.prologue_kernel, stride=config.prologue_stride, **common
        )
        self.prologue_dropout = nn.Dropout(config.prologue_dropout)
        outputs = [config.prologue_filters]  # channels of the prologue's and each block's output
        self.blocks = nn.ModuleList()
        for filters, kernel, repeat, dropout in config.blocks:
            sources = {"dense": outputs, "plain": outputs[-1:], "none": []}[config.residual]
            self.blocks.append(
                JasperBlock(
                    outputs[-1],
                    filters,
                    kernel,
                    repeat,
                    dropout,
                    list(sources),
                    residual_mode=config.residual_mode,
                    **common,
                )
            )
            outputs.append(filters)
        self.epilogue = nn.ModuleList()
        self.epilogue_dropout = nn.ModuleList()
        channels = outputs[-1]
        for filters, kernel, dilation, dropout in config.epilogue:
            self.epilogue.append(ConvNorm(channels, filters, kernel, dilation=dilation, **common))
            self.epilogue_dropout.append(nn.Dropout(dropout))
            channels = filters
        self.decoder = nn.Conv1d(channels, config.num_classes, 1, bias=True)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames after the prologue's stride: ceil(T / stride) (same padding)."""
        return torch.div(lengths + self.time_reduction - 1, self.time_reduction, rounding_mode="floor")

    def fuse_batchnorm(self) -> Jasper:
        """Fold batch norm into the convolutions for inference (see :func:`fuse_batchnorm`)."""
        return fuse_batchnorm(self)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, F, T), lengths (B,) -> logits (B, T', num_classes), out_lengths (B,)."""
        if features.dim() != 3 or features.shape[1] != self.config.in_features:
            raise ValueError(f"expected features (B, {self.config.in_features}, T), got {tuple(features.shape)}")
        lengths = lengths.to(features.device)
        x = self.prologue(features, frame_mask(lengths, features.shape[-1]))
        out_lengths = self.output_lengths(lengths)
        mask = frame_mask(out_lengths, x.shape[-1]).to(x.dtype)
        x = self.prologue_dropout(F.relu(x))
        outputs = [x]
        residual = self.config.residual
        for block in self.blocks:
            earlier = outputs if residual == "dense" else outputs[-1:] if residual == "plain" else []
            x = block(x, earlier, mask)
            if residual == "dense":
                outputs.append(x)
            else:
                outputs = [x]
        for conv, dropout in zip(self.epilogue, self.epilogue_dropout, strict=True):
            x = dropout(F.relu(conv(x, mask)))
        logits = self.decoder(x) * mask
        return logits.transpose(1, 2), out_lengths


def _fold(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> nn.Conv1d:
    """Conv followed by eval-mode BN -> one conv with bias: w' = w·γ/σ, b' = (b − μ)·γ/σ + β."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None])
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvNorm`'s batch norm into its conv, in place (inference only: the
    model is put in eval mode). Returns the model. Outputs are unchanged up to float rounding."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvNorm) and isinstance(module.norm, nn.BatchNorm1d):
            module.conv = _fold(module.conv, module.norm)
            module.norm = nn.Identity()
    return model


def _jasper_blocks(pairs: list[tuple[int, int, float]], blocks_per: int, repeat: int):
    return tuple((f, k, repeat, d) for f, k, d in pairs for _ in range(blocks_per))


_JASPER_PAIRS = [(256, 11, 0.2), (384, 13, 0.2), (512, 17, 0.2), (640, 21, 0.3), (768, 25, 0.3)]

register(
    "jasper-10x5dr",
    Jasper,
    JasperConfig(),
    task="speech",
    description="Jasper 10x5 dense residual (arXiv 1904.03288 Table 1; 64 log-mels, 28 chars + blank)",
)
register(
    "jasper-5x3",
    Jasper,
    JasperConfig(blocks=_jasper_blocks(_JASPER_PAIRS, 1, 3), residual="plain"),
    task="speech",
    description="Jasper 5x3 (the paper's normalisation / activation study model)",
)
register(
    "quartznet-15x5",
    Jasper,
    JasperConfig(
        prologue_filters=256,
        prologue_kernel=33,
        prologue_dropout=0.0,
        blocks=_jasper_blocks([(256, 33, 0.0), (256, 39, 0.0), (512, 51, 0.0), (512, 63, 0.0), (512, 75, 0.0)], 3, 5),
        epilogue=((512, 87, 2, 0.0), (1024, 1, 1, 0.0)),
        residual="plain",
        separable=True,
    ),
    task="speech",
    description="QuartzNet 15x5: Jasper with time-channel separable convs (arXiv 1910.10261)",
)
register(
    "jasper-demo",
    Jasper,
    JasperConfig(
        # Plain (not separable) convs and no dropout: on a 2-core CPU, depthwise-conv backward and
        # dropout's Bernoulli sampling dominated the separable 2.0M variant's step (69 vs 120 audio s/s).
        prologue_filters=128,
        prologue_kernel=11,
        prologue_stride=3,
        prologue_dropout=0.0,
        blocks=((128, 11, 2, 0.0), (128, 13, 2, 0.0), (160, 15, 2, 0.0), (160, 17, 2, 0.0)),
        epilogue=((256, 21, 2, 0.0), (384, 1, 1, 0.0)),
        residual="dense",
        separable=False,
    ),
    task="speech",
    description="small CPU Jasper DR (prologue stride 3, 3.6M) for the synthetic-corpus demo",
)
register(
    "jasper-tiny",
    Jasper,
    JasperConfig(
        prologue_filters=16,
        prologue_kernel=5,
        prologue_stride=2,
        prologue_dropout=0.0,
        blocks=((16, 5, 2, 0.0), (24, 7, 2, 0.0)),
        epilogue=((32, 9, 2, 0.0), (32, 1, 1, 0.0)),
    ),
    task="speech",
    description="tiny Jasper DR for tests",
)
