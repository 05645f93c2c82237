"""Deep Speech 2: 2D-convolutional front end, batch-normalised recurrent stack, lookahead convolution.

Amodei et al., *Deep Speech 2*, arXiv 1512.02595. Layers, bottom to top:

* **Front end** (§3.5): 1-3 2D convolutions over (time, frequency) of a linear log-spectrogram,
  each followed by batch norm and the clipped ReLU ``sigma(x) = min(max(x, 0), 20)`` (§3.1).
  Kernels/strides are written ``(time, frequency)``; the product of the time strides is the
  model's ``time_reduction`` (3 for the Table 11 models).
* **Recurrent stack** (§3.1-3.4): GRU, LSTM or simple RNN layers, bidirectional (directions summed
  as in §3.1, or concatenated as OpenSeq2Seq does) or forward-only, with **sequence-wise batch
  normalisation** (§3.2) of the input-to-hidden term only::

      h_t^l = f( B(W^l h_t^{l-1}) + U^l h_{t-1}^l ),   B(z) = gamma * (z - E[z]) / sqrt(Var[z] + eps) + beta

  where E and Var are taken, per output unit, over every *valid* (unpadded) frame of every
  utterance in the minibatch (training), or are running averages of those (inference).
* **Lookahead (row) convolution** (§3.7) for forward-only stacks: a per-feature convolution over
  the current and ``tau`` future frames, ``r_{t,i} = sum_{j=1}^{tau+1} W_{i,j} h_{t+j-1,i}``.
* A fully connected layer (clipped ReLU) and the output layer (logits over the characters + CTC
  blank; optionally + all character bigrams, §6.1).

How the batch norm of ``W x`` is computed exactly
-------------------------------------------------
**On the CPU** (default, :meth:`DeepSpeech2.recurrent_packed`): the recurrent stack runs on the valid
frames only, packed utterance after utterance (``N`` rows). Each layer computes ``z = W x`` as one
product over the ``N`` frames, ``B(z)`` with ATen's batch norm over those rows (exactly the statistics
of the equation, with its fused backward; running averages as ``nn.BatchNorm1d``), and hands ``B(z)``
to a C++ loop (``csrc/ds2_recurrence.cpp``, :class:`PackedRecurrence`) that per step only adds
``U h_{t-1}`` (one product over the utterances still running) and applies the gates; its backward is
hand-written back-propagation through time with ``dL/dU`` as one product over all steps. Under bf16
autocast the products ``W x``, ``dL/dU`` and (on CPUs with AVX512-BF16) the per-step products with ``U`` run
in bfloat16; statistics, states and gates in float32.

**With PyTorch's fused kernels** (GPUs; ``kernel="fused"``; where the extension cannot be built): a
fused kernel (``torch.gru`` / cuDNN) always multiplies its input by its own ``W_ih``. Because
``B`` is affine per output unit once its statistics are known, ``B(W x) = W' x + b'`` with
``W' = diag(gamma / sigma) W`` and ``b' = beta - gamma * mu / sigma``. The statistics of ``W x``
follow from the masked mean ``m`` and covariance ``C`` of the layer input ``x`` over valid frames:
``mu = W m`` and ``sigma^2 = diag(W C W^T) + eps``. So each layer computes ``m`` and ``C`` (one
``D x D`` matrix product), folds BN into ``W'``/``b'`` and hands them to the fused kernel as its
input weights and biases (hidden-to-hidden biases are zero: in DS2's GRU, §3.4, the biases sit
outside the reset gate). The result is *exactly* ``B(W x)`` of the equation above, with gradients
through the batch statistics as in ordinary batch norm, at the cost of one ``D x D`` covariance
instead of a second input projection (or of the centred projection when that is cheaper: few frames,
wide layers; see :meth:`SequenceBatchNorm.fold`). The running averages track ``mu`` and the unbiased
``sigma^2`` just like :class:`torch.nn.BatchNorm1d` applied to the valid frames of ``W x``.

The conv front end computes its convolutions on the (B, C, F, T) layout, the weights keeping their
``(time, freq)`` layout (transposed on the fly; oneDNN's backward is several times faster so).
Batch statistics are taken in float32 under mixed precision and in float64 for a double model.

Padding never changes an utterance's outputs: the conv front end masks padded frames to zero
before every convolution (exactly zero padding) and uses masked batch statistics; the backward
direction of each recurrent layer runs on each utterance reversed within its own length (an index
gather), and padded frames are zeroed before the lookahead convolution.

Shapes: ``features`` (B, F, T), ``lengths`` (B,) -> ``logits`` (B, T', num_outputs), ``out_lengths`` (B,)
with ``T' = ceil(T / time_reduction)`` for odd time kernels with the default ``k // 2`` padding.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from zoo.cpp_extension import build
from zoo.registry import register

RNN_TYPES = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1}
_KIND_CODES = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}  # csrc/ds2_recurrence.cpp's Kind
MERGES = ("sum", "concat")
_KERNELS = {"gru": torch.gru, "lstm": torch.lstm, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}

#: Recurrent state of one layer: ``(num_directions, B, H)`` or, for LSTMs, a pair ``(h, c)``.
State = Tensor | tuple[Tensor, Tensor]


@dataclass
class DeepSpeech2Config:
    """DeepSpeech2 hyperparameters. Defaults are OpenSeq2Seq's ``ds2_large`` (2 conv + 5
    bidirectional GRU x 800 + FC 1600) on 161 spectrogram bins with 28 characters + blank.

    Attributes:
        conv_channels, conv_kernels, conv_strides: one entry per 2D conv; kernels and strides
            are ``(time, frequency)``.
        conv_padding: ``(time, frequency)`` zero padding per conv; ``None`` = ``k // 2`` each.
        rnn_type: ``"gru"``, ``"lstm"``, ``"rnn_tanh"`` or ``"rnn_relu"`` (DS2's simple RNN uses a
            clipped ReLU, which no fused kernel offers; ``"rnn_relu"`` is the closest).
        merge: how the two directions of a bidirectional layer combine: ``"sum"`` (DS2 §3.1) or
            ``"concat"`` (OpenSeq2Seq).
        sequence_batch_norm: sequence-wise BN of ``W x`` (§3.2); off = plain RNN with biases.
        lookahead: future context ``tau`` of the row convolution (§3.7); 0 = none.
        fc_hidden: width of the fully connected layer before the output; 0 = none.
        bigram_outputs: add every ordered pair of the ``num_classes - 1`` characters as an extra
            output unit (§6.1, Table 11), in the label order of the bigram tokenizer
            (``TokenizerConfig(bigrams=True)``, which ``CTCSpeechRecognizer`` pairs it with).
    """

    in_features: int = 161
    num_classes: int = 29
    conv_channels: tuple[int, ...] = (32, 32)
    conv_kernels: tuple[tuple[int, int], ...] = ((11, 41), (11, 21))
    conv_strides: tuple[tuple[int, int], ...] = ((2, 2), (1, 2))
    conv_padding: tuple[tuple[int, int], ...] | None = None
    rnn_type: str = "gru"
    rnn_layers: int = 5
    rnn_hidden: int = 800
    bidirectional: bool = True
    merge: str = "concat"
    sequence_batch_norm: bool = True
    lookahead: int = 0
    fc_hidden: int = 1600
    bigram_outputs: bool = False
    relu_clip: float = 20.0
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1


def frame_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, ...) within its first ``lengths[b]`` frames; padded
    frames stay in place. The map is an involution (applying it twice restores ``x``)."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Batch statistics are taken in float32 under mixed precision and in float64 for double models."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _MaskedStatistics(nn.BatchNorm1d):
    """Batch-norm running-average bookkeeping shared by the two masked batch norms below."""

    def _update_running(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * count / (count - 1).clamp(min=1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)

    def _use_batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats


class MaskedBatchNorm2d(_MaskedStatistics):
    """Batch norm of conv outputs with per-channel statistics over valid frames only.

    ``forward(x (B, C, T, F), mask (B, T) bool) -> (B, C, T, F)``, or with ``time_dim=3`` on
    ``(B, C, F, T)``; equals ``nn.BatchNorm2d`` over the concatenation of every utterance's valid
    frames. In eval mode the running averages are used.
    """

    def forward(self, x: Tensor, mask: Tensor, time_dim: int = 2) -> Tensor:  # type: ignore[override]
        if not self._use_batch_statistics():
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if bool(mask.all()) and x.numel() > x.shape[1]:  # no padding: ATen's kernel (float32 accumulation)
            factor = 0.0
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
            return torch.batch_norm(x, self.weight, self.bias, *running, True, factor, self.eps, False)
        with torch.autocast(x.device.type, enabled=False):  # statistics in fp32 under mixed precision
            dtype = statistics_dtype(x.dtype)
            m = mask[:, None, :, None] if time_dim == 2 else mask[:, None, None, :]
            xm = x.to(dtype) * m.to(dtype)  # padded frames -> 0
            count = mask.sum() * x.shape[5 - time_dim]
            mean = xm.sum((0, 2, 3)) / count
            var = ((xm - mean[None, :, None, None]) * m.to(dtype)).pow(2).sum((0, 2, 3)) / count
            if self.track_running_stats:
                self._update_running(mean, var, count)
            scale = self.weight.to(dtype) * torch.rsqrt(var + self.eps)
            shift = self.bias.to(dtype) - mean * scale
        return x * scale[None, :, None, None].to(x.dtype) + shift[None, :, None, None].to(x.dtype)


class _Gram(torch.autograd.Function):
    """``X^T X`` for (N, D) ``X`` with a one-GEMM backward ``dX = X (dG + dG^T)`` (autograd's
    generic matmul backward would take two GEMMs, one per operand)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.T @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return x @ (grad + grad.T)


class SequenceBatchNorm(_MaskedStatistics):
    """Sequence-wise batch norm of the input-to-hidden term ``W x`` (DS2 §3.2), folded into ``W``.

    :meth:`fold` returns ``(W', b')`` with ``W' x + b' = B(W x)`` on every frame, the statistics of
    ``W x`` being taken over the valid frames of the batch (see the module docstring).
    """

    def fold(self, weight: Tensor, x: Tensor, mask: Tensor, method: str = "auto") -> tuple[Tensor, Tensor]:
        """``weight`` (G, D), ``x`` (B, T, D), ``mask`` (B, T) bool -> ``W'`` (G, D), ``b'`` (G,).

        ``method`` computes ``Var[W x]`` as ``diag(W C W^T)`` from the covariance ``C``
        (``"covariance"``, ``(N + G) D^2`` multiply-adds for ``N = B T`` frames) or from the centred
        projection ``(x - m) W^T`` (``"projection"``, ``N D G``); ``"auto"`` takes the cheaper.
        """
        with torch.autocast(x.device.type, enabled=False):  # statistics in fp32 under mixed precision
            if self._use_batch_statistics():
                dtype = statistics_dtype(x.dtype)
                x, m, weight = x.to(dtype), mask.to(dtype), weight.to(dtype)
                count = m.sum()
                mean_x = torch.einsum("btd,bt->d", x, m) / count
                centred = ((x - mean_x) * m[..., None]).reshape(-1, x.shape[-1])
                (frames, features), gates = centred.shape, weight.shape[0]
                if method == "auto":
                    cheaper = frames * gates <= (frames + gates) * features
                    method = "projection" if cheaper else "covariance"
                if method == "projection":
                    var = (centred @ weight.T).pow(2).sum(0) / count
                else:
                    covariance = _Gram.apply(centred) / count
                    var = ((weight @ covariance) * weight).sum(1).clamp(min=0)
                mean = weight @ mean_x
                if self.track_running_stats:
                    self._update_running(mean, var, count)
            else:
                mean, var = self.running_mean, self.running_var
            scale = self.weight * torch.rsqrt(var + self.eps)
            return weight * scale[:, None], self.bias - mean * scale

    def normalize(self, z: Tensor) -> Tensor:
        """``B(z)`` of ``z`` (N, G) = ``W x`` on the N valid frames of a batch: batch statistics over
        them (training; running averages updated as by ``nn.BatchNorm1d``) or the running averages."""
        with torch.autocast(z.device.type, enabled=False):  # statistics in fp32 under mixed precision
            z = z.to(statistics_dtype(z.dtype))
            weight, bias = self.weight.to(z.dtype), self.bias.to(z.dtype)
            if not self._use_batch_statistics():
                return F.batch_norm(z, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps)
            if z.shape[0] < 2:  # one frame: variance 0 (ATen's kernel would divide by n - 1 = 0)
                mean, var = z.mean(0), z.new_zeros(z.shape[1])
                if self.track_running_stats:
                    self._update_running(mean, var, z.new_tensor(float(z.shape[0])))
                return (z - mean) * torch.rsqrt(var + self.eps) * weight + bias
            factor = 0.0
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
            return torch.batch_norm(z, weight, bias, *running, True, factor, self.eps, False)


class _FoldedNorm(nn.Module):
    """Stands in for a batch norm already folded into the preceding convolution."""

    def forward(self, x: Tensor, mask: Tensor, time_dim: int = 2) -> Tensor:
        return x


class ConvFrontEnd(nn.Module):
    """1-3 masked 2D convolutions over (time, frequency), each + batch norm + clipped ReLU (§3.5).

    ``forward(features (B, F, T), lengths (B,)) -> (x (B, T', C * F'), out_lengths (B,))``.
    """

    def __init__(self, config: DeepSpeech2Config) -> None:
        super().__init__()
        n = len(config.conv_channels)
        if not 1 <= n <= 3 or len(config.conv_kernels) != n or len(config.conv_strides) != n:
            raise ValueError(
                f"DeepSpeech2 needs 1-3 convs with one kernel and stride each; got {n} channels, "
                f"{len(config.conv_kernels)} kernels, {len(config.conv_strides)} strides"
            )
        padding = config.conv_padding or tuple((kt // 2, kf // 2) for kt, kf in config.conv_kernels)
        if len(padding) != n:
            raise ValueError(f"conv_padding has {len(padding)} entries for {n} convs")
        self.kernels = [tuple(k) for k in config.conv_kernels]
        self.strides = [tuple(s) for s in config.conv_strides]
        self.padding = [tuple(p) for p in padding]
        self.clip = config.relu_clip
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels, freq = 1, config.in_features
        for c_out, (kt, kf), (st, sf), (pt, pf) in zip(config.conv_channels, self.kernels, self.strides, self.padding):
            self.convs.append(nn.Conv2d(channels, c_out, (kt, kf), stride=(st, sf), padding=(0, pf), bias=False))
            self.norms.append(MaskedBatchNorm2d(c_out, eps=config.bn_eps, momentum=config.bn_momentum))
            freq = (freq + 2 * pf - kf) // sf + 1
            if freq < 1:
                raise ValueError(
                    f"DeepSpeech2: {config.in_features} input features leave no frequency bins after "
                    f"conv kernels {self.kernels} with strides {self.strides}"
                )
            channels = c_out
        self.out_features = channels * freq
        self.time_reduction = math.prod(st for st, _ in self.strides)

    def layer_lengths(self, lengths: Tensor, layer: int) -> Tensor:
        (kt, _), (st, _), (pt, _) = self.kernels[layer], self.strides[layer], self.padding[layer]
        return torch.div(lengths + 2 * pt - kt, st, rounding_mode="floor") + 1

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for layer in range(len(self.convs)):
            lengths = self.layer_lengths(lengths, layer)
        return lengths

    def min_input_frames(self) -> int:
        """Fewest input frames that still give one output frame."""
        frames = 1
        for layer in reversed(range(len(self.convs))):
            (kt, _), (st, _), (pt, _) = self.kernels[layer], self.strides[layer], self.padding[layer]
            frames = max(1, (frames - 1) * st + kt - 2 * pt)
        return frames

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold each batch norm's running statistics into its convolution (weights scaled, bias added)."""
        for index, norm in enumerate(self.norms):
            if isinstance(norm, _FoldedNorm):
                continue
            conv = self.convs[index]
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                stride=conv.stride,
                padding=conv.padding,
                bias=True,
            ).to(conv.weight)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(norm.bias - norm.running_mean * scale)
            self.convs[index], self.norms[index] = fused, _FoldedNorm()

    def layer(self, index: int, x: Tensor, mask: Tensor) -> Tensor:
        """One conv + BN + clipped ReLU on (B, C, T, F) already time-padded, ``mask`` for the output."""
        x = self._conv(index, x.transpose(2, 3), mask, time_padding=0)
        return x.transpose(2, 3)

    def _conv(self, index: int, x: Tensor, mask: Tensor, time_padding: int) -> Tensor:
        """Conv ``index`` + BN + clipped ReLU computed on the (B, C, F, T) layout (oneDNN's backward is
        several times faster with time last for these kernels); the weights keep their ``(time, freq)``
        layout and are transposed on the fly. ``mask`` (B, T') marks the output's valid frames."""
        conv = self.convs[index]
        (st, sf), pf = self.strides[index], self.padding[index][1]
        weight = conv.weight.transpose(2, 3).contiguous()
        x = F.conv2d(x, weight, conv.bias, stride=(sf, st), padding=(pf, time_padding))
        return F.hardtanh(self.norms[index](x, mask, time_dim=3), 0.0, self.clip)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = features.unsqueeze(1)  # (B, 1, F, T)
        for index in range(len(self.convs)):
            x = x * frame_mask(lengths, x.shape[3])[:, None, None, :].to(x.dtype)  # padding == zeros
            lengths = self.layer_lengths(lengths, index)
            pt, (kt, _), (st, _) = self.padding[index][0], self.kernels[index], self.strides[index]
            steps = (x.shape[3] + 2 * pt - kt) // st + 1
            x = self._conv(index, x, frame_mask(lengths, steps), time_padding=pt)
        x = x * frame_mask(lengths, x.shape[3])[:, None, None, :].to(x.dtype)
        batch, channels, freq, steps = x.shape
        return x.permute(0, 3, 1, 2).reshape(batch, steps, channels * freq), lengths


SOURCE = Path(__file__).parent / "csrc" / "ds2_recurrence.cpp"


@functools.cache
def load_recurrence() -> ModuleType | None:
    """The compiled DeepSpeech2 recurrence (:func:`zoo.cpp_extension.build`), or None where it cannot be built."""
    return build(
        "ds2_recurrence",
        SOURCE,
        "DeepSpeech2: the C++ recurrence",
        "using PyTorch's fused kernels with the batch norm folded into W (slower training)",
    )


class PackedPlan(NamedTuple):
    """Where each utterance's valid frames sit in the packed ``(N, ...)`` layout (utterance-major, as
    ``x[mask]`` gives them), all int64 on the CPU: ``order`` = utterances by decreasing length,
    ``lengths``, ``starts`` = first row of each utterance, ``active[s]`` = utterances longer than ``s``."""

    order: Tensor
    lengths: Tensor
    starts: Tensor
    active: Tensor

    @classmethod
    def from_lengths(cls, lengths: Tensor) -> PackedPlan:
        lengths = lengths.to("cpu", torch.int64).contiguous()
        order = torch.argsort(lengths, descending=True, stable=True)
        active = (lengths[None, :] > torch.arange(int(lengths.max()))[:, None]).sum(1)
        return cls(order, lengths, torch.cumsum(lengths, 0) - lengths, active)


PANEL_BYTES = 128  # csrc/ds2_recurrence.cpp multiplies by U in panels of this many bytes of columns
_PANELS: dict[str, Tensor] = {}


def panel_layout(hidden: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(P, Hp)``: columns per panel of ``U`` (128 bytes of ``dtype``) and ``H`` padded to a multiple of them."""
    panel = PANEL_BYTES // torch.empty((), dtype=dtype).element_size()
    return panel, -(-hidden // panel) * panel


def panel_scratch(role: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The buffer the C++ loop packs ``U`` into (``role``: ``"forward"`` or ``"backward"``), kept from one call
    to the next: a fresh one per layer and step (16-32 MB at 5x1024) costs its page faults every time, ~10 ms
    per layer. One per role, replaced when the shape changes; the loop holds the GIL while it runs, so two calls
    never fill one at the same time."""
    buffer = _PANELS.get(role)
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
        with torch.inference_mode(False):  # usable in and out of inference mode
            buffer = _PANELS[role] = torch.empty(shape, dtype=dtype)
    return buffer


def packed_panels(role: str, lead: tuple[int, ...], depth: int, panel: int, bf16: bool, dtype: torch.dtype) -> Tensor:
    """The :func:`panel_scratch` buffer of ``role`` for panels of ``depth`` rows of ``panel`` columns, after the
    ``lead`` dimensions: ``(*lead, depth, panel)`` in ``dtype``, or with ``bf16`` ``(*lead, ceil(depth / 2),
    2 * panel)`` bfloat16, each row holding the columns of a pair of depth rows (the layout ``vdpbf16ps`` reads)."""
    if bf16:
        return panel_scratch(role, (*lead, -(-depth // 2), 2 * panel), torch.bfloat16)
    return panel_scratch(role, (*lead, depth, panel), dtype)


def bf16_panels(product_dtype: torch.dtype, state_dtype: torch.dtype) -> bool:
    """Whether the C++ loop multiplies by ``U`` in bf16: asked for (``product_dtype``, bf16 under autocast), float32
    states, and built for a CPU with AVX512-BF16 (its ``bf16_products``)."""
    return (
        product_dtype == torch.bfloat16
        and state_dtype == torch.float32
        and bool(getattr(load_recurrence(), "bf16_products", False))
    )


class PackedRecurrence(torch.autograd.Function):
    """The recurrence of every direction of a layer over packed frames, given the input term ``gx`` =
    ``B(W x)`` (N, dirs * G) of every valid frame: ``(gx, U (dirs, G, H), plan, rnn_type, product_dtype) ->
    y (N, dirs, H)``, the backward direction running each utterance from its last frame. Per step one
    ``U h_{t-1}`` product over the utterances still running and one fused element-wise pass
    (``csrc/ds2_recurrence.cpp``: the threads split the hidden units, each multiplying by its own share of
    ``U``, packed in panels of ``P`` = 128 bytes of columns); the backward is hand-written back-propagation
    through time with ``dL/dU`` as one product over all steps. States, gates and the element-wise math are in
    ``gx``'s dtype (float32 or float64). ``product_dtype`` is that of the products with ``U``: bfloat16 under
    autocast, as autocast runs the layer's other products. Then ``dL/dU`` is a bf16 product and, on CPUs with
    AVX512-BF16 (:func:`bf16_panels`), so are the per-step ``U h`` and ``g U`` (``U`` packed as bf16, the
    step's states and gate gradients rounded to bf16, float32 accumulation): half the bytes of ``U`` per step."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gx: Tensor, weight_hh: Tensor, plan: PackedPlan, rnn_type: str, product_dtype: torch.dtype
    ) -> Tensor:
        dirs, gates, hidden = weight_hh.shape
        steps, batch = plan.active.numel(), plan.lengths.numel()
        panel, padded = panel_layout(hidden, weight_hh.dtype)
        new = gx.new_empty
        weight = weight_hh.contiguous()
        states = gx.new_zeros(dirs, steps + 1, batch, hidden)  # states[d, s] = h_{s-1}; stopped rows stay 0
        acts = new(dirs, steps, batch, gates)
        cells = new(dirs, steps, batch, hidden) if rnn_type in ("lstm", "gru") else new(0)  # LSTM c, GRU U_n h
        y = new(gx.shape[0], dirs, hidden)
        blocks = gates // hidden
        bf16 = bf16_panels(product_dtype, gx.dtype)
        packed = packed_panels("forward", (dirs, padded // panel, blocks), hidden, panel, bf16, gx.dtype)  # U^T
        # the states' bf16 copy (rows padded to pairs), the left operand of the bf16 products
        states_low = gx.new_zeros(dirs, steps + 1, batch, 2 * packed.shape[-2] if bf16 else 0, dtype=torch.bfloat16)
        pre = new(dirs, batch, blocks * padded)
        load_recurrence().forward(
            _KIND_CODES[rnn_type], gx.contiguous(), weight, packed, *plan, y, states, acts, cells, pre, states_low
        )
        ctx.plan, ctx.rnn_type, ctx.product_dtype = plan, rnn_type, product_dtype
        ctx.save_for_backward(weight, states, acts, cells, states_low)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        weight, states, acts, cells, states_low = ctx.saved_tensors
        dirs, steps, batch, gates = acts.shape
        hidden = states.shape[3]
        panel, padded = panel_layout(hidden, weight.dtype)
        grad_gx = acts.new_empty(grad_y.shape[0], dirs * gates)
        grad_pre = acts.new_zeros(dirs, steps, batch, gates)  # dL/d(U h_{s-1}) of all steps
        bf16 = states_low.numel() > 0
        packed = packed_panels("backward", (dirs, padded // panel), gates, panel, bf16, acts.dtype)  # U
        # the gate gradients' bf16 copy (rows padded to pairs)
        grad_low = acts.new_zeros(dirs, steps, batch, 2 * packed.shape[-2] if bf16 else 0, dtype=torch.bfloat16)
        load_recurrence().backward(
            _KIND_CODES[ctx.rnn_type],
            grad_y.to(acts.dtype).contiguous(),
            weight,
            packed,
            *ctx.plan,
            states,
            acts,
            cells,
            grad_gx,
            grad_pre,
            acts.new_zeros(dirs, batch, padded),
            acts.new_zeros(dirs, batch, padded),
            grad_low,
        )
        if bf16:  # the bf16 operands the steps used
            left = grad_low.view(dirs, steps * batch, -1)[:, :, :gates]
            right = states_low[:, :-1].reshape(dirs, steps * batch, -1)[:, :, :hidden]
        else:
            left = grad_pre.view(dirs, steps * batch, gates).to(ctx.product_dtype)
            right = states[:, :-1].reshape(dirs, steps * batch, hidden).to(ctx.product_dtype)
        grad_weight = torch.bmm(left.transpose(1, 2), right)
        return grad_gx, grad_weight.to(weight.dtype), None, None, None


class RecurrentLayer(nn.Module):
    """One (bi)directional GRU/LSTM/simple-RNN layer with sequence-wise batch norm (§3.2), run by
    PyTorch's fused kernels (``torch.gru`` & co., cuDNN on GPU).

    ``forward(x (B, T, D), lengths (B,), mask (B, T), state=None) -> (y (B, T, dirs, H), state)``;
    ``state`` is the final recurrent state of a forward-only layer (``None`` starts from zeros), used
    for streaming. The backward direction sees each utterance reversed within its own length.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        rnn_type: str,
        bidirectional: bool,
        batch_norm: bool,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        self.rnn_type, self.hidden_size = rnn_type, hidden_size
        self.directions = 2 if bidirectional else 1
        gates = RNN_TYPES[rnn_type] * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # nn.GRU's initialisation
        self.weight_ih = nn.Parameter(torch.empty(self.directions * gates, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(self.directions, gates, hidden_size).uniform_(-bound, bound))
        if batch_norm:
            self.norm: SequenceBatchNorm | None = SequenceBatchNorm(self.directions * gates, eps=eps, momentum=momentum)
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        else:
            self.norm = None
            self.bias_ih = nn.Parameter(torch.empty(self.directions * gates).uniform_(-bound, bound))
            self.bias_hh = nn.Parameter(torch.empty(self.directions, gates).uniform_(-bound, bound))

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold the running statistics of the sequence-wise BN into ``W_ih`` and an input bias."""
        if self.norm is None:
            return
        weight, bias = self.norm.fold(self.weight_ih, self.weight_ih.new_zeros(1, 0, 0), self.weight_ih.new_zeros(1, 0))
        self.weight_ih.copy_(weight)
        self.bias_ih = nn.Parameter(bias)
        self.bias_hh = nn.Parameter(self.weight_hh.new_zeros(self.weight_hh.shape[:2]))
        self.norm = None

    def input_weights(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(W', b'_ih, b_hh)`` for all directions: BN folded into the input weights (§3.2)."""
        if self.norm is None:
            return self.weight_ih, self.bias_ih, self.bias_hh
        weight, bias = self.norm.fold(self.weight_ih, x, mask)
        return weight, bias, self.weight_hh.new_zeros(self.weight_hh.shape[:2])

    def _run(
        self, x: Tensor, direction: int, weights: tuple[Tensor, Tensor, Tensor], state: State | None
    ) -> tuple[Tensor, State]:
        weight_ih, bias_ih, bias_hh = (w.chunk(self.directions)[direction] for w in weights)
        params = [weight_ih, self.weight_hh[direction], bias_ih, bias_hh.reshape(-1)]
        if state is None:
            zeros = x.new_zeros(1, x.shape[0], self.hidden_size)
            state = (zeros, zeros) if self.rnn_type == "lstm" else zeros
        if self.rnn_type == "lstm":
            y, h, c = torch.lstm(x, state, params, True, 1, 0.0, self.training, False, True)
            return y, (h, c)
        y, h = _KERNELS[self.rnn_type](x, state, params, True, 1, 0.0, self.training, False, True)
        return y, h

    def packed_supported(self) -> bool:
        """Whether :meth:`forward_packed` computes this layer: all but a GRU with its own hidden biases
        (``r * (U_n h + b_hn)`` keeps ``b_hn`` out of the input term)."""
        return self.norm is not None or self.rnn_type != "gru"

    def forward_packed(self, x: Tensor, plan: PackedPlan) -> Tensor:
        """``x`` (N, D), the valid frames packed as in :class:`PackedPlan` -> ``y`` (N, dirs, H).

        ``W x`` is one product over the valid frames; its batch norm (§3.2) is exact over them; the
        recurrence adds ``U h`` step by step (:class:`PackedRecurrence`, the C++ loop).
        """
        if self.norm is None:
            gx = F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh.flatten())
            gx = gx.to(statistics_dtype(x.dtype))
        else:
            gx = self.norm.normalize(F.linear(x, self.weight_ih))
        autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        product_dtype = torch.bfloat16 if autocast_bf16 and gx.dtype == torch.float32 else gx.dtype
        with torch.autocast("cpu", enabled=False):  # the recurrence in the statistics' dtype
            return PackedRecurrence.apply(gx, self.weight_hh.to(gx.dtype), plan, self.rnn_type, product_dtype)

    def forward(
        self, x: Tensor, lengths: Tensor, mask: Tensor, state: State | None = None
    ) -> tuple[Tensor, State | None]:
        weights = self.input_weights(x, mask)
        forward, final = self._run(x, 0, weights, state)
        if self.directions == 1:
            return forward.unsqueeze(2), final
        backward, _ = self._run(reverse_within_lengths(x, lengths), 1, weights, None)
        return torch.stack([forward, reverse_within_lengths(backward, lengths)], dim=2), None


class Lookahead(nn.Module):
    """Row convolution (DS2 §3.7): ``r_{t,i} = sum_{j=1}^{tau+1} W_{i,j} h_{t+j-1,i}``, future frames
    past the end being zero. ``forward(h (B, T, H)) -> (B, T, H)``; padded frames must be zero."""

    def __init__(self, features: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(features, features, context + 1, groups=features, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(F.pad(h.transpose(1, 2), (0, self.context))).transpose(1, 2)


class DeepSpeech2(nn.Module):
    """DeepSpeech2 acoustic model (see the module docstring); a zoo speech encoder.

    ``forward(features (B, F, T), lengths (B,)) -> (logits (B, T', num_outputs), out_lengths (B,))``.
    """

    Config = DeepSpeech2Config

    def __init__(self, config: DeepSpeech2Config) -> None:
        super().__init__()
        if config.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {config.merge!r}")
        if not 1 <= config.rnn_layers <= 7:
            raise ValueError(f"DeepSpeech2 has 1-7 recurrent layers, got {config.rnn_layers}")
        if config.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {config.lookahead}")
        self.config = config
        self.fused = False
        #: recurrent kernels: "auto" (C++ recurrence on packed frames on the CPU), "cpp" (that, or an error), "fused"
        self.kernel = os.environ.get("ZOO_DS2_KERNEL", "auto")
        self.front_end = ConvFrontEnd(config)
        self.time_reduction = self.front_end.time_reduction
        width = self.front_end.out_features
        self.rnns = nn.ModuleList()
        for _ in range(config.rnn_layers):
            self.rnns.append(
                RecurrentLayer(
                    width,
                    config.rnn_hidden,
                    config.rnn_type,
                    config.bidirectional,
                    config.sequence_batch_norm,
                    config.bn_eps,
                    config.bn_momentum,
                )
            )
            width = config.rnn_hidden * (2 if config.bidirectional and config.merge == "concat" else 1)
        self.lookahead = Lookahead(width, config.lookahead) if config.lookahead > 0 else None
        self.fc = nn.Linear(width, config.fc_hidden) if config.fc_hidden > 0 else None
        self.output = nn.Linear(config.fc_hidden or width, self.num_outputs)

    @property
    def num_outputs(self) -> int:
        """``num_classes``, plus every ordered pair of the non-blank symbols with ``bigram_outputs``."""
        return self.config.num_classes + (self.config.num_classes - 1) ** 2 * self.config.bigram_outputs

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.front_end.output_lengths(lengths)

    def check_lengths(self, lengths: Tensor) -> None:
        """Raise a ValueError naming the utterances too short for the conv front end."""
        too_short = (self.output_lengths(lengths) < 1).nonzero().flatten().tolist()
        if too_short:
            raise ValueError(
                f"DeepSpeech2: utterance(s) at batch index {too_short} have {lengths[too_short].tolist()} "
                f"frames; the conv front end (time kernels {[k for k, _ in self.front_end.kernels]}, strides "
                f"{[s for s, _ in self.front_end.strides]}) needs at least {self.front_end.min_input_frames()}"
            )

    def fuse_batchnorm(self) -> DeepSpeech2:
        """Fold every batch norm's running statistics into the preceding weights, for inference:
        the outputs stay the same in eval mode; batch statistics (training) are no longer available."""
        self.eval()
        self.front_end.fuse_batchnorm()
        for rnn in self.rnns:
            rnn.fuse_batchnorm()
        self.fused = True
        return self

    def train(self, mode: bool = True) -> DeepSpeech2:
        if mode and self.fused:
            raise RuntimeError("this DeepSpeech2's batch norm is folded (fuse_batchnorm); it can only run in eval mode")
        return super().train(mode)

    def merge(self, y: Tensor) -> Tensor:
        """(..., dirs, H) -> (..., H) summed or (..., dirs * H) concatenated."""
        return y.sum(-2) if self.config.merge == "sum" else y.flatten(-2)

    def classify(self, h: Tensor) -> Tensor:
        """FC (clipped ReLU) + output layer, frame by frame: (B, T, H) -> logits (B, T, num_outputs)."""
        if self.fc is not None:
            h = F.hardtanh(self.fc(h), 0.0, self.config.relu_clip)
        return self.output(h)

    def head(self, h: Tensor) -> Tensor:
        """Lookahead (if any) + :meth:`classify` on (B, T, H) with padded frames zeroed -> logits."""
        if self.lookahead is not None:
            h = self.lookahead(h)
        return self.classify(h)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if features.dim() != 3 or features.shape[1] != self.config.in_features:
            raise ValueError(
                f"DeepSpeech2 expects features (B, {self.config.in_features}, T), got {tuple(features.shape)}"
            )
        self.check_lengths(lengths)
        x, lengths = self.front_end(features, lengths)
        mask = frame_mask(lengths, x.shape[1])
        if self.use_packed(x):
            x = self.recurrent_packed(x, lengths, mask)
        else:
            for rnn in self.rnns:
                x = self.merge(rnn(x, lengths, mask)[0])
            x = x * mask[..., None].to(x.dtype)
        return self.head(x), lengths

    def use_packed(self, x: Tensor) -> bool:
        """Whether the recurrent stack runs on packed valid frames with the C++ recurrence (CPU; ``kernel``
        ``"auto"`` or ``"cpp"``) rather than PyTorch's fused kernels with the batch norm folded into ``W``
        (``kernel="fused"``, GPUs, where the extension cannot be built, and in TorchScript/ONNX export, whose
        graphs cannot hold the C++ loop)."""
        if self.kernel not in ("auto", "cpp", "fused"):
            raise ValueError(f"DeepSpeech2.kernel must be 'auto', 'cpp' or 'fused', got {self.kernel!r}")
        exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
        supported_dtype = x.dtype in (torch.float32, torch.float64, torch.bfloat16)
        if self.kernel == "fused" or exporting or x.device.type != "cpu" or not supported_dtype:
            return False
        if not all(rnn.packed_supported() for rnn in self.rnns):
            return False
        if load_recurrence() is None:
            if self.kernel == "cpp":
                raise RuntimeError("DeepSpeech2: kernel='cpp' but the C++ recurrence could not be built (see warning)")
            return False
        return True

    def recurrent_packed(self, x: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        """The recurrent stack on the valid frames only: (B, T, D) -> (B, T, H) with padded frames zero."""
        batch, steps, _ = x.shape
        index = mask.flatten().nonzero().squeeze(1)
        plan = PackedPlan.from_lengths(lengths)
        h = x.reshape(batch * steps, -1).index_select(0, index)
        for rnn in self.rnns:
            h = self.merge(rnn.forward_packed(h, plan))
        return h.new_zeros(batch * steps, h.shape[1]).index_copy(0, index, h).view(batch, steps, -1)


# ---------------------------------------------------------------------------------------------
# Named configurations.
_DS2_PAPER_FRONT_END = dict(  # DS2 Table 4's 3-layer 2D front end (32, 32, 96 channels), temporal stride 3 (§6.1)
    conv_channels=(32, 32, 96),
    conv_kernels=((11, 41), (11, 21), (11, 21)),
    conv_strides=((3, 2), (1, 2), (1, 2)),
)

register(
    "ds2-large",
    DeepSpeech2,
    DeepSpeech2Config(),
    task="speech",
    description="DeepSpeech2 as OpenSeq2Seq ds2_large: 2 conv + 5 biGRU x 800 (concat) + FC 1600, 161 bins",
)
register(
    "ds2-paper",
    DeepSpeech2,
    DeepSpeech2Config(
        **_DS2_PAPER_FRONT_END, rnn_type="rnn_relu", rnn_layers=7, rnn_hidden=1840, merge="sum", fc_hidden=1840
    ),
    task="speech",
    description="DS2 best English model (Table 11): 3 conv, stride 3, 7 bi-RNN x 1840 (sum), ~100M params",
)
register(
    "ds2-streaming",
    DeepSpeech2,
    DeepSpeech2Config(
        rnn_type="rnn_relu", rnn_layers=5, rnn_hidden=2560, bidirectional=False, lookahead=19, fc_hidden=2560
    ),
    task="speech",
    description="DS2 deployment model (§7): 2 conv + 5 forward-only RNN x 2560 + row conv tau=19 + FC 2560",
)
_DEMO_FRONT_END = dict(conv_channels=(16,), conv_kernels=((11, 21),), conv_strides=((3, 4),))  # 161 -> 41 bins
register(
    "ds2-demo",
    DeepSpeech2,
    DeepSpeech2Config(**_DEMO_FRONT_END, rnn_layers=3, rnn_hidden=192, merge="sum", fc_hidden=192),
    task="speech",
    description="small CPU DeepSpeech2: 1 conv x 16 (stride 3) + 3 biGRU x 192 (sum) + FC 192",
)
register(
    "ds2-streaming-demo",
    DeepSpeech2,
    DeepSpeech2Config(**_DEMO_FRONT_END, rnn_layers=3, rnn_hidden=256, bidirectional=False, lookahead=8, fc_hidden=192),
    task="speech",
    description="small CPU streaming DeepSpeech2: 1 conv x 16 (stride 3) + 3 GRU x 256 + row conv tau=8",
)
register(
    "ds2-tiny",
    DeepSpeech2,
    DeepSpeech2Config(
        conv_channels=(4,),
        conv_kernels=((5, 21),),
        conv_strides=((2, 4),),
        rnn_layers=1,
        rnn_hidden=32,
        merge="sum",
        fc_hidden=0,
    ),
    task="speech",
    description="tiny DeepSpeech2 for tests: 1 conv x 4 + 1 biGRU x 32",
)
