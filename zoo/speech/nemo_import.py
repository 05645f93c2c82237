"""Convert NVIDIA NeMo ``.nemo`` Jasper/QuartzNet CTC checkpoints into a zoo :class:`SpeechRecognizer`.

A ``.nemo`` file is a tar archive holding ``model_config.yaml`` (sections ``preprocessor``,
``encoder`` = ``ConvASREncoder`` with its ``jasper`` list of blocks, ``decoder`` = ``ConvASRDecoder``)
and ``model_weights.ckpt`` (a ``torch.save``-d state dict). NeMo's encoder is a flat list of blocks
``encoder.encoder.{i}``; the zoo :class:`~zoo.speech.jasper.Jasper` reads it as

* block 0 -> the prologue (one conv, may stride),
* the trailing blocks with ``repeat: 1`` and no residual -> the epilogue convs (may dilate),
* the blocks in between -> the Jasper blocks (one residual kind for all: dense / plain / none).

Inside block ``i``, ``mconv`` is the flat list ``[conv(s), bn, activation, dropout] * (R-1) + [conv(s), bn]``
where *conv(s)* is one masked conv (``mconv.{j}.conv.weight``), or for separable blocks a depthwise
and a pointwise conv; a batch norm stores ``mconv.{j}.{weight,bias,running_mean,running_var}``.
Residual projections are ``res.{k}.0.conv.weight`` (1x1 conv) + ``res.{k}.1.*`` (batch norm), one per
earlier output read (dense residual: the prologue's and every earlier dense block's output). NeMo
adds them to the last sub-block's normalised output before the activation, exactly as the zoo does,
and both use "same" padding ``dilation * (kernel - 1) // 2`` with the input masked past each length,
so the converted encoder computes the same function (in eval mode) on every valid frame.

A block's ``residual_mode`` (``add``/``stride_add``: sum, ``max``: element-wise max with each
projection) defaults to the encoder's, and, as in NeMo's ``ConvASREncoder``, a value set on one block
carries on to every later block that sets none; the zoo Jasper takes one mode for all its blocks.

The decoder ``decoder.decoder_layers.0.{weight,bias}`` has the CTC blank *last*; the zoo's blank is
id 0, so its rows are rotated (blank first, then the vocabulary in NeMo's order, which becomes the
zoo tokenizer's alphabet). The ``preprocessor`` maps onto :class:`~zoo.speech.features.FeaturizerConfig`
(``kind="logmel"``) option by option; NeMo's STFT padding and frame count changed in NeMo 2.5
(PR #13827), so the import reproduces the release recorded in ``nemo_version`` (or the one asked for):
<= 2.4 reflects each utterance at its ends and counts ``1 + S // hop`` frames, >= 2.5 pads with
zeros and counts ``S // hop``. Options the zoo cannot compute raise :class:`NemoImportError`
(``docs/import-nemo.md`` lists them).
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from zoo.registry import network_dict
from zoo.speech.features import WINDOWS, FeaturizerConfig
from zoo.speech.jasper import Jasper, JasperConfig
from zoo.speech.recognizer import SpeechRecognizer
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"

#: Block options with the only value the zoo Jasper computes (``None``: must be absent or this value).
_BLOCK_DEFAULTS: dict[str, Any] = {
    "groups": 1,
    "heads": -1,
    "se": False,
    "kernel_size_factor": 1.0,
    "stride_last": False,
    "future_context": -1,
    "normalization": "batch",
    "quantize": False,
    "padding": "same",
}
_BLOCK_KEYS = {
    "filters",
    "repeat",
    "kernel",
    "stride",
    "dilation",
    "dropout",
    "residual",
    "separable",
    "residual_dense",
    "residual_mode",
    "norm_groups",
    "se_reduction_ratio",
    "se_context_size",
    "se_interpolation_mode",
    *_BLOCK_DEFAULTS,
}


#: ``AudioToMelSpectrogramPreprocessor`` arguments (NeMo 1.0 - 3.0); any other key is refused by name.
_PRE_KEYS = {
    "_target_",
    "cls",
    "params",
    "sample_rate",
    "window_size",
    "window_stride",
    "n_window_size",
    "n_window_stride",
    "window",
    "normalize",
    "n_fft",
    "preemph",
    "features",
    "nfilt",
    "lowfreq",
    "highfreq",
    "log",
    "log_zero_guard_type",
    "log_zero_guard_value",
    "dither",
    "pad_to",
    "pad_value",
    "frame_splicing",
    "exact_pad",
    "mag_power",
    "rng",
    "nb_augmentation_prob",
    "nb_max_freq",
    "mel_norm",
    "use_torchaudio",
    "stft_exact_pad",
    "stft_conv",
}
#: ``ConvASREncoder`` arguments.
_ENCODER_KEYS = {
    "_target_",
    "cls",
    "params",
    "jasper",
    "activation",
    "feat_in",
    "normalization_mode",
    "residual_mode",
    "norm_groups",
    "conv_mask",
    "frame_splicing",
    "init_mode",
    "quantize",
}
#: First NeMo release whose preprocessor pads the STFT with zeros and counts ``S // hop`` frames.
NEMO_CONVENTION_CHANGE = (2, 5)


class NemoImportError(ValueError):
    """A ``.nemo`` file that is malformed or uses something the zoo Jasper cannot represent."""


def read_nemo(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` of a ``.nemo`` archive (weights loaded with ``weights_only=True``)."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                if name not in members:
                    raise NemoImportError(
                        f"{path}: the archive holds no {name} (found: {sorted(members) or 'nothing'})"
                    )
            config = yaml.safe_load(archive.extractfile(members[CONFIG_NAME]).read())
            weights = archive.extractfile(members[WEIGHTS_NAME]).read()
    except (tarfile.TarError, OSError) as error:
        raise NemoImportError(f"{path}: not a readable .nemo tar archive ({error})") from error
    except yaml.YAMLError as error:
        raise NemoImportError(f"{path}: {CONFIG_NAME} is not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise NemoImportError(f"{path}: {CONFIG_NAME} is not a mapping")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt files
        raise NemoImportError(f"{path}: {WEIGHTS_NAME} is not a readable torch state dict ({error})") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise NemoImportError(f"{path}: {WEIGHTS_NAME} holds no state dict")
    return _resolve(config, config), state


def nemo_version(path: str | Path) -> str | None:
    """The NeMo release recorded in a ``.nemo`` file (``model_config.yaml``'s ``nemo_version``), if any."""
    version = read_nemo(path)[0].get("nemo_version")
    return None if version is None else str(version)


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Resolve OmegaConf interpolations of the form ``${a.b}`` (or ``${model.a.b}``) against ``root``."""
    if isinstance(node, dict):
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    if isinstance(node, str) and node.startswith("${") and node.endswith("}"):
        keys = node[2:-1].split(".")
        for candidate in (keys, keys[1:] if keys[0] == "model" else None):
            value: Any = root
            for key in candidate or []:
                value = value.get(key) if isinstance(value, dict) else None
            if candidate and value is not None:
                return _resolve(value, root)
        raise NemoImportError(f"{CONFIG_NAME}: cannot resolve the interpolation {node!r}")
    return node


def _section(config: dict[str, Any], name: str, target: str) -> dict[str, Any]:
    """A config section with ``params`` (NeMo < 1.0 layout) merged in; checks its ``_target_``/``cls``."""
    section = config.get(name)
    if not isinstance(section, dict):
        raise NemoImportError(f"{CONFIG_NAME}: no {name!r} section")
    section = {**section, **(section.get("params") or {})}
    cls = str(section.get("_target_", section.get("cls", target)))
    if cls.rsplit(".", 1)[-1] != target:
        raise NemoImportError(
            f"{CONFIG_NAME}: unsupported NeMo {name} {cls!r}; only {target} (Jasper/QuartzNet CTC models) converts"
        )
    return section


def _single(value: Any, key: str, index: int) -> int:
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) != 1:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}].{key} = {value!r}; expected one value")
    return int(values[0])


def nemo_conventions(version: str | None) -> tuple[str, str]:
    """``(stft_pad, frame_count)`` of the featurizer of NeMo release ``version`` (``None``: the current one).

    NeMo 1.0-2.4 pad the centred STFT by reflection and count ``1 + S // hop`` frames; NeMo >= 2.5
    pads with zeros and counts ``(S + 2 * (n_fft // 2) - n_fft) // hop`` (NeMo PR #13827).
    """
    if version is None:
        return "constant", "nemo"
    match = re.match(r"\s*v?(\d+)\.(\d+)", str(version))
    if match is None:
        raise NemoImportError(f"NeMo version {version!r} is not of the form MAJOR.MINOR[.PATCH]")
    if (int(match[1]), int(match[2])) >= NEMO_CONVENTION_CHANGE:
        return "constant", "nemo"
    return "reflect", "centred"


def _window(pre: dict[str, Any], seconds: str, samples: str, default: float, sample_rate: int) -> int:
    """NeMo's window or hop in samples: ``int(seconds * sample_rate)`` or the ``n_``-prefixed count."""
    in_seconds = pre.get(seconds, default if samples not in pre else None)
    in_samples = pre.get(samples)
    if in_seconds and in_samples:
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor sets both {seconds} and {samples}; NeMo takes only one")
    try:
        value = int(float(in_seconds) * sample_rate) if in_seconds else int(in_samples)
    except (TypeError, ValueError):
        raise NemoImportError(
            f"{CONFIG_NAME}: preprocessor.{seconds} = {in_seconds!r} / {samples} = {in_samples!r}: "
            "need a window in seconds or in samples"
        ) from None
    if value <= 0 or (not in_seconds and float(in_samples) != value):
        key = samples if in_samples else seconds
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.{key} gives {value} samples; need a positive whole number")
    return value


def featurizer_config(pre: dict[str, Any], nemo_version: str | None = None) -> FeaturizerConfig:
    """NeMo ``AudioToMelSpectrogramPreprocessor`` options -> zoo log-mel :class:`FeaturizerConfig` that
    computes the same features (in eval mode) as NeMo release ``nemo_version`` (``None``: current)."""
    unknown = sorted(set(pre) - _PRE_KEYS)
    if unknown:
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor options the zoo featurizer does not know: {unknown}")
    checks = {
        "log": True,
        "frame_splicing": 1,
        "exact_pad": False,
        "stft_exact_pad": False,
        "stft_conv": False,
        "use_torchaudio": False,
    }
    for key, expected in checks.items():
        if pre.get(key, expected) != expected:
            raise NemoImportError(
                f"{CONFIG_NAME}: preprocessor.{key} = {pre[key]!r} is not supported (zoo: {expected!r})"
            )
    window = pre.get("window", "hann")
    if window not in WINDOWS:
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.window = {window!r} is not supported ({sorted(WINDOWS)})")
    sample_rate = int(pre.get("sample_rate", 16000))
    win_length = _window(pre, "window_size", "n_window_size", 0.02, sample_rate)
    hop_length = _window(pre, "window_stride", "n_window_stride", 0.01, sample_rate)
    n_fft = int(pre.get("n_fft") or 2 ** math.ceil(math.log2(win_length)))
    if n_fft < win_length:
        raise NemoImportError(
            f"{CONFIG_NAME}: preprocessor.n_fft = {n_fft} is shorter than the window ({win_length} samples)"
        )
    normalize = pre.get("normalize", "per_feature")
    if isinstance(normalize, dict):
        raise NemoImportError(
            f"{CONFIG_NAME}: preprocessor.normalize with fixed_mean/fixed_std is not supported "
            "(per_feature, all_features or none)"
        )
    guard_type = pre.get("log_zero_guard_type", "add")
    if guard_type not in ("add", "clamp"):
        raise NemoImportError(
            f"{CONFIG_NAME}: preprocessor.log_zero_guard_type = {guard_type!r} is not supported (add, clamp)"
        )
    guard = pre.get("log_zero_guard_value", 2**-24)
    named_guards = {"tiny": torch.finfo(torch.float32).tiny, "eps": torch.finfo(torch.float32).eps}
    if isinstance(guard, str) and guard not in named_guards:
        raise NemoImportError(
            f"{CONFIG_NAME}: preprocessor.log_zero_guard_value = {guard!r}; NeMo takes a number, 'tiny' or 'eps'"
        )
    mel_norm = pre.get("mel_norm", "slaney")
    if mel_norm not in ("slaney", None):
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.mel_norm = {mel_norm!r} is not supported (slaney or null)")
    stft_pad, frame_count = nemo_conventions(nemo_version)
    return FeaturizerConfig(
        kind="logmel",
        sample_rate=sample_rate,
        n_mels=int(pre.get("features", pre.get("nfilt", 64))),
        n_fft=n_fft,
        window_ms=win_length / sample_rate * 1000,
        hop_ms=hop_length / sample_rate * 1000,
        win_length=win_length,
        hop_length=hop_length,
        window=window,
        dither=float(pre.get("dither", 1e-5) or 0.0),
        preemphasis=float(pre.get("preemph", 0.97) or 0.0),
        # NeMo normalises for these two values only; any other (null, "none", ...) leaves the log-mels as they are
        normalize=normalize if normalize in ("per_feature", "all_features") else "none",
        mag_power=float(pre.get("mag_power", 2.0)),
        mel_norm=mel_norm,
        f_min=float(pre.get("lowfreq") or 0.0),
        f_max=float(pre.get("highfreq") or sample_rate / 2),
        log_guard=guard_type,
        log_guard_value=float(named_guards.get(guard, guard)),
        stft_pad=stft_pad,
        frame_count=frame_count,
    )


def representable(char: object) -> bool:
    """Whether the zoo's character tokenizer can emit ``char``: a space, or one character that its text
    normalisation keeps (lowercase, accents stripped, punctuation other than the apostrophe removed)."""
    if not isinstance(char, str) or len(char) != 1:
        return False
    return (
        char == " "
        or CharTokenizer(TokenizerConfig(alphabet=char, unknown="drop", numbers="drop")).normalize(char) == char
    )


def tokenizer_config(vocabulary: list[str]) -> TokenizerConfig:
    """NeMo's vocabulary (blank excluded) -> zoo alphabet in the same order (ids 1..V)."""
    bad = [v for v in vocabulary if not representable(v)]
    if bad:
        raise NemoImportError(
            f"{CONFIG_NAME}: decoder.vocabulary holds {bad!r}, which the zoo's character tokenizer never produces "
            "after normalisation (supported: single lowercase characters that survive it, space, apostrophe)"
        )
    if len(set(vocabulary)) != len(vocabulary):
        raise NemoImportError(f"{CONFIG_NAME}: decoder.vocabulary repeats a character")
    return TokenizerConfig(alphabet="".join(vocabulary), numbers="spell" if " " in vocabulary else "drop")


def _block(cfg: dict[str, Any], index: int, mode: str, mode_from: str) -> dict[str, Any]:
    """One NeMo block's options; ``mode`` is its effective residual mode, set at ``mode_from``."""
    unknown = set(cfg) - _BLOCK_KEYS
    if unknown:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper[{index}] has options the zoo Jasper lacks: {sorted(unknown)}"
        )
    for key, expected in _BLOCK_DEFAULTS.items():
        value = cfg.get(key, expected)
        if (float(value) if key == "kernel_size_factor" else value) != expected:
            raise NemoImportError(
                f"{CONFIG_NAME}: encoder.jasper[{index}].{key} = {value!r} is not supported (zoo: {expected!r})"
            )
    block = dict(
        filters=int(cfg["filters"]),
        repeat=int(cfg.get("repeat", 1)),
        kernel=_single(cfg["kernel"], "kernel", index),
        stride=_single(cfg.get("stride", 1), "stride", index),
        dilation=_single(cfg.get("dilation", 1), "dilation", index),
        dropout=float(cfg.get("dropout", 0.0)),
        residual=bool(cfg.get("residual", False)),
        dense=bool(cfg.get("residual_dense", False)),
        separable=bool(cfg.get("separable", False)),
    )
    if block["kernel"] % 2 == 0:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper[{index}].kernel = {block['kernel']} is even; the zoo needs odd kernels"
        )
    if block["residual"] and not (mode in ("add", "max") or (mode == "stride_add" and block["stride"] == 1)):
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper[{index}] has residual_mode {mode!r} (from {mode_from}); "
            "the zoo Jasper supports 'add' and 'max' ('stride_add' without stride)"
        )
    block["mode"], block["mode_from"] = ("add" if mode == "stride_add" else mode), mode_from
    if block["dense"] and not block["residual"]:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}] has residual_dense without residual")
    return block


def jasper_config(encoder: dict[str, Any], num_classes: int) -> tuple[JasperConfig, list[dict[str, Any]]]:
    """``ConvASREncoder`` options -> :class:`JasperConfig` and the parsed NeMo blocks."""
    unknown = sorted(set(encoder) - _ENCODER_KEYS)
    if unknown:
        raise NemoImportError(f"{CONFIG_NAME}: encoder options the zoo Jasper does not know: {unknown}")
    if str(encoder.get("activation", "relu")) != "relu":
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.activation = {encoder['activation']!r}; the zoo Jasper uses relu"
        )
    if not encoder.get("conv_mask", True):
        raise NemoImportError(f"{CONFIG_NAME}: encoder.conv_mask = false; the zoo Jasper always masks padded frames")
    for key, expected in (("normalization_mode", "batch"), ("frame_splicing", 1), ("quantize", False)):
        if encoder.get(key, expected) != expected:
            raise NemoImportError(
                f"{CONFIG_NAME}: encoder.{key} = {encoder[key]!r} is not supported (zoo: {expected!r})"
            )
    blocks, mode, mode_from = [], encoder.get("residual_mode", "add"), "encoder.residual_mode"
    for i, cfg in enumerate(encoder.get("jasper") or []):
        if not isinstance(cfg, dict):
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{i}] is not a mapping")
        if "residual_mode" in cfg:  # NeMo's ConvASREncoder carries it on to the later blocks
            mode, mode_from = cfg["residual_mode"], f"encoder.jasper[{i}].residual_mode"
        blocks.append(_block(cfg, i, mode, mode_from))
    if len(blocks) < 2:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper needs a prologue block and at least one more block")
    prologue = blocks[0]
    if prologue["repeat"] != 1 or prologue["residual"] or prologue["dilation"] != 1:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper[0] (the prologue) must have repeat 1, no residual, dilation 1"
        )
    end = len(blocks)
    while end > 1 and blocks[end - 1]["repeat"] == 1 and not blocks[end - 1]["residual"]:
        end -= 1
    middle, epilogue = blocks[1:end], blocks[end:]
    kinds = {"dense" if b["dense"] else "plain" if b["residual"] else "none" for b in middle}
    if len(kinds) > 1:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper mixes residual kinds {sorted(kinds)}; the zoo Jasper uses one"
        )
    modes: dict[str, tuple[int, str]] = {}  # mode -> the first block using it, and where it was set
    for i, b in enumerate(middle, start=1):
        if b["residual"]:
            modes.setdefault(b["mode"], (i, b["mode_from"]))
    if len(modes) > 1:
        described = ", ".join(f"{m!r} in encoder.jasper[{i}] (from {src})" for m, (i, src) in modes.items())
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper mixes residual modes: {described}; the zoo Jasper uses one"
        )
    for i, b in enumerate(middle, start=1):
        if b["stride"] != 1 or b["dilation"] != 1:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{i}] strides or dilates; zoo Jasper blocks cannot")
    for i, b in enumerate(epilogue, start=end):
        if b["stride"] != 1:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{i}] (epilogue) strides; the zoo epilogue cannot")
    separable = {b["separable"] for b in blocks if b["kernel"] > 1}
    if len(separable) > 1:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper mixes separable and ordinary convs with kernel > 1; "
            "the zoo Jasper uses one setting"
        )
    config = JasperConfig(
        in_features=int(encoder["feat_in"]),
        num_classes=num_classes,
        prologue_filters=prologue["filters"],
        prologue_kernel=prologue["kernel"],
        prologue_stride=prologue["stride"],
        prologue_dropout=prologue["dropout"],
        blocks=tuple((b["filters"], b["kernel"], b["repeat"], b["dropout"]) for b in middle),
        epilogue=tuple((b["filters"], b["kernel"], b["dilation"], b["dropout"]) for b in epilogue),
        residual=kinds.pop() if kinds else "none",
        norm="batchnorm",
        separable=separable.pop() if separable else False,
        residual_mode=next(iter(modes), "add"),
    )
    return config, blocks


class _StateMapper:
    """Copies NeMo tensors into the zoo state dict, reporting any missing key by name."""

    def __init__(self, source: dict[str, Tensor], path: Path) -> None:
        self.source, self.path, self.used = source, path, set()

    def get(self, key: str) -> Tensor:
        if key not in self.source:
            raise NemoImportError(f"{self.path}: {WEIGHTS_NAME} lacks {key!r}")
        self.used.add(key)
        return self.source[key]

    def conv_norm(self, out: dict[str, Tensor], zoo: str, nemo: str, first: int, separable: bool, kernel: int) -> None:
        """One NeMo ``[conv(s), bn]`` run starting at ``{nemo}.{first}`` -> zoo ConvNorm ``zoo``."""
        if separable:
            depthwise, pointwise = self.get(f"{nemo}.{first}.conv.weight"), self.get(f"{nemo}.{first + 1}.conv.weight")
            if kernel > 1:
                out[f"{zoo}.depthwise.weight"] = depthwise
                out[f"{zoo}.conv.weight"] = pointwise
            else:  # 1x1 depthwise = per-channel scale: fold it into the pointwise conv (zoo has no 1x1 depthwise)
                out[f"{zoo}.conv.weight"] = pointwise * depthwise[:, 0, 0][None, :, None]
            bn = first + 2
        else:
            out[f"{zoo}.conv.weight"] = self.get(f"{nemo}.{first}.conv.weight")
            bn = first + 1
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{zoo}.norm.{name}"] = self.get(f"{nemo}.{bn}.{name}")
        tracked = f"{nemo}.{bn}.num_batches_tracked"  # absent from some older checkpoints
        out[f"{zoo}.norm.num_batches_tracked"] = self.get(tracked) if tracked in self.source else torch.tensor(0)


def convert_state_dict(
    state: dict[str, Tensor], config: JasperConfig, blocks: list[dict[str, Any]], path: Path
) -> dict[str, Tensor]:
    """NeMo encoder/decoder state dict -> zoo :class:`Jasper` state dict (blank moved to row 0)."""
    mapper, out = _StateMapper(state, path), {}
    groups = (
        ["prologue"]
        + [f"blocks.{b}" for b in range(len(config.blocks))]
        + [f"epilogue.{e}" for e in range(len(config.epilogue))]
    )
    for index, (zoo, block) in enumerate(zip(groups, blocks, strict=True)):
        nemo = f"encoder.encoder.{index}"
        step = (3 if block["separable"] else 2) + 2  # conv(s) + bn + activation + dropout
        for r in range(block["repeat"]):
            target = f"{zoo}.convs.{r}" if zoo.startswith("blocks") else zoo
            mapper.conv_norm(out, target, f"{nemo}.mconv", r * step, block["separable"], block["kernel"])
        if block["residual"]:
            sources = index if block["dense"] else 1
            for k in range(sources):
                mapper.conv_norm(out, f"{zoo}.residuals.{k}", f"{nemo}.res.{k}", 0, False, 1)
    weight, bias = mapper.get("decoder.decoder_layers.0.weight"), mapper.get("decoder.decoder_layers.0.bias")
    if weight.shape[0] != config.num_classes:
        raise NemoImportError(
            f"{path}: the decoder has {weight.shape[0]} outputs, the vocabulary + blank {config.num_classes}"
        )
    order = [config.num_classes - 1, *range(config.num_classes - 1)]  # NeMo's blank is last; the zoo's is id 0
    out["decoder.weight"], out["decoder.bias"] = weight[order], bias[order]
    leftover = [k for k in state if k.startswith(("encoder.", "decoder.")) and k not in mapper.used]
    if leftover:
        raise NemoImportError(f"{path}: {WEIGHTS_NAME} has weights the zoo Jasper would ignore: {leftover[:5]}")
    return out


def import_nemo(path: str | Path, nemo_version: str | None = None) -> SpeechRecognizer:
    """Convert a NeMo Jasper/QuartzNet ``.nemo`` file into a zoo :class:`SpeechRecognizer` (eval mode).

    Args:
        path: the ``.nemo`` file.
        nemo_version: the NeMo release whose featurizer (STFT padding, frame count) to reproduce;
            ``None``: the ``nemo_version`` recorded in the file, or the current convention if none is.

    Raises:
        NemoImportError: naming the file and the option or key that prevents an exact conversion.
    """
    path = Path(path)
    config, state = read_nemo(path)
    encoder = _section(config, "encoder", "ConvASREncoder")
    decoder = _section(config, "decoder", "ConvASRDecoder")
    vocabulary = list(decoder.get("vocabulary") or config.get("labels") or [])
    if not vocabulary:
        raise NemoImportError(f"{path}: {CONFIG_NAME} has no decoder.vocabulary")
    pre = config.get("preprocessor") or {}
    pre = {**pre, **(pre.get("params") or {})}
    try:
        tokenizer = tokenizer_config(vocabulary)
        featurizer = featurizer_config(pre, nemo_version or config.get("nemo_version"))
        jasper, blocks = jasper_config(encoder, len(vocabulary) + 1)
    except NemoImportError as error:
        raise NemoImportError(f"{path}: {error}") from None
    if featurizer.n_mels != jasper.in_features:
        raise NemoImportError(
            f"{path}: preprocessor.features = {featurizer.n_mels} but encoder.feat_in = {jasper.in_features}"
        )
    weights = convert_state_dict(state, jasper, blocks, path)
    network = network_dict(Jasper, jasper)
    recognizer = SpeechRecognizer(featurizer=asdict(featurizer), encoder=network, tokenizer=asdict(tokenizer))
    recognizer.encoder.load_state_dict(weights, strict=True)
    return recognizer.eval()
