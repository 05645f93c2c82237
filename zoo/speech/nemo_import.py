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

The decoder ``decoder.decoder_layers.0.{weight,bias}`` has the CTC blank *last*; the zoo's blank is
id 0, so its rows are rotated (blank first, then the vocabulary in NeMo's order, which becomes the
zoo tokenizer's alphabet). The ``preprocessor`` maps onto :class:`~zoo.speech.features.FeaturizerConfig`
(``kind="logmel"``); options the zoo featurizer lacks raise :class:`NemoImportError`.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from zoo.registry import network_dict
from zoo.speech.features import FeaturizerConfig
from zoo.speech.jasper import Jasper, JasperConfig
from zoo.speech.recognizer import SpeechRecognizer
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"

#: Block options with the only value the zoo Jasper computes (``None``: must be absent or this value).
_BLOCK_DEFAULTS: dict[str, Any] = {
    "groups": 1, "heads": -1, "se": False, "kernel_size_factor": 1.0, "stride_last": False,
    "future_context": -1, "normalization": "batch", "quantize": False, "padding": "same",
}
_BLOCK_KEYS = {"filters", "repeat", "kernel", "stride", "dilation", "dropout", "residual", "separable",
               "residual_dense", "residual_mode", "norm_groups", "se_reduction_ratio", "se_context_size",
               "se_interpolation_mode", *_BLOCK_DEFAULTS}


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
                    raise NemoImportError(f"{path}: the archive holds no {name} (found: {sorted(members) or 'nothing'})")
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


def featurizer_config(pre: dict[str, Any]) -> FeaturizerConfig:
    """NeMo ``AudioToMelSpectrogramPreprocessor`` options -> zoo log-mel :class:`FeaturizerConfig`."""
    checks = {"window": "hann", "log": True, "mag_power": 2.0, "frame_splicing": 1, "lowfreq": 0,
              "log_zero_guard_type": "add", "exact_pad": False, "stft_exact_pad": False}
    for key, expected in checks.items():
        if key in pre and pre[key] != expected:
            raise NemoImportError(f"{CONFIG_NAME}: preprocessor.{key} = {pre[key]!r} is not supported (zoo: {expected!r})")
    if pre.get("log_zero_guard_value", 2**-24) != 2**-24:
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.log_zero_guard_value must be 2**-24")
    sample_rate = int(pre.get("sample_rate", 16000))
    if pre.get("highfreq") not in (None, sample_rate / 2):
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.highfreq = {pre['highfreq']!r} is not supported (zoo: sample_rate / 2)")
    normalize = pre.get("normalize", "per_feature")
    if normalize not in ("per_feature", None, "none"):
        raise NemoImportError(f"{CONFIG_NAME}: preprocessor.normalize = {normalize!r} is not supported (per_feature or none)")
    return FeaturizerConfig(
        kind="logmel", sample_rate=sample_rate, n_mels=int(pre.get("features", pre.get("nfilt", 64))),
        n_fft=pre.get("n_fft"), window_ms=float(pre.get("window_size", 0.02)) * 1000,
        hop_ms=float(pre.get("window_stride", 0.01)) * 1000, dither=float(pre.get("dither", 1e-5)),
        preemphasis=float(pre.get("preemph", 0.97) or 0.0), normalize="per_feature" if normalize == "per_feature" else "none",
    )


def representable(char: object) -> bool:
    """Whether the zoo's character tokenizer can emit ``char``: a space, or one character that its text
    normalisation keeps (lowercase, accents stripped, punctuation other than the apostrophe removed)."""
    if not isinstance(char, str) or len(char) != 1:
        return False
    return char == " " or CharTokenizer(TokenizerConfig(alphabet=char, unknown="drop", numbers="drop")).normalize(char) == char


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


def _block(cfg: dict[str, Any], index: int) -> dict[str, Any]:
    unknown = set(cfg) - _BLOCK_KEYS
    if unknown:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}] has options the zoo Jasper lacks: {sorted(unknown)}")
    for key, expected in _BLOCK_DEFAULTS.items():
        value = cfg.get(key, expected)
        if (float(value) if key == "kernel_size_factor" else value) != expected:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}].{key} = {value!r} is not supported (zoo: {expected!r})")
    block = dict(filters=int(cfg["filters"]), repeat=int(cfg.get("repeat", 1)),
                 kernel=_single(cfg["kernel"], "kernel", index), stride=_single(cfg.get("stride", 1), "stride", index),
                 dilation=_single(cfg.get("dilation", 1), "dilation", index), dropout=float(cfg.get("dropout", 0.0)),
                 residual=bool(cfg.get("residual", False)), dense=bool(cfg.get("residual_dense", False)),
                 separable=bool(cfg.get("separable", False)))
    if block["kernel"] % 2 == 0:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}].kernel = {block['kernel']} is even; the zoo needs odd kernels")
    mode = cfg.get("residual_mode", "add")
    if block["residual"] and not (mode == "add" or (mode == "stride_add" and block["stride"] == 1)):
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}].residual_mode = {mode!r} is not supported (zoo: 'add')")
    if block["dense"] and not block["residual"]:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{index}] has residual_dense without residual")
    return block


def jasper_config(encoder: dict[str, Any], num_classes: int) -> tuple[JasperConfig, list[dict[str, Any]]]:
    """``ConvASREncoder`` options -> :class:`JasperConfig` and the parsed NeMo blocks."""
    if str(encoder.get("activation", "relu")) != "relu":
        raise NemoImportError(f"{CONFIG_NAME}: encoder.activation = {encoder['activation']!r}; the zoo Jasper uses relu")
    if not encoder.get("conv_mask", True):
        raise NemoImportError(f"{CONFIG_NAME}: encoder.conv_mask = false; the zoo Jasper always masks padded frames")
    for key, expected in (("normalization_mode", "batch"), ("frame_splicing", 1), ("quantize", False)):
        if encoder.get(key, expected) != expected:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.{key} = {encoder[key]!r} is not supported (zoo: {expected!r})")
    blocks = [_block(b, i) for i, b in enumerate(encoder.get("jasper") or [])]
    if len(blocks) < 2:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper needs a prologue block and at least one more block")
    prologue = blocks[0]
    if prologue["repeat"] != 1 or prologue["residual"] or prologue["dilation"] != 1:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[0] (the prologue) must have repeat 1, no residual, dilation 1")
    end = len(blocks)
    while end > 1 and blocks[end - 1]["repeat"] == 1 and not blocks[end - 1]["residual"]:
        end -= 1
    middle, epilogue = blocks[1:end], blocks[end:]
    kinds = {"dense" if b["dense"] else "plain" if b["residual"] else "none" for b in middle}
    if len(kinds) > 1:
        raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper mixes residual kinds {sorted(kinds)}; the zoo Jasper uses one")
    for i, b in enumerate(middle, start=1):
        if b["stride"] != 1 or b["dilation"] != 1:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{i}] strides or dilates; zoo Jasper blocks cannot")
    for i, b in enumerate(epilogue, start=end):
        if b["stride"] != 1:
            raise NemoImportError(f"{CONFIG_NAME}: encoder.jasper[{i}] (epilogue) strides; the zoo epilogue cannot")
    separable = {b["separable"] for b in blocks if b["kernel"] > 1}
    if len(separable) > 1:
        raise NemoImportError(
            f"{CONFIG_NAME}: encoder.jasper mixes separable and ordinary convs with kernel > 1; the zoo Jasper uses one setting"
        )
    config = JasperConfig(
        in_features=int(encoder["feat_in"]), num_classes=num_classes,
        prologue_filters=prologue["filters"], prologue_kernel=prologue["kernel"], prologue_stride=prologue["stride"],
        prologue_dropout=prologue["dropout"],
        blocks=tuple((b["filters"], b["kernel"], b["repeat"], b["dropout"]) for b in middle),
        epilogue=tuple((b["filters"], b["kernel"], b["dilation"], b["dropout"]) for b in epilogue),
        residual=kinds.pop() if kinds else "none", norm="batchnorm", separable=separable.pop() if separable else False,
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


def convert_state_dict(state: dict[str, Tensor], config: JasperConfig, blocks: list[dict[str, Any]],
                       path: Path) -> dict[str, Tensor]:
    """NeMo encoder/decoder state dict -> zoo :class:`Jasper` state dict (blank moved to row 0)."""
    mapper, out = _StateMapper(state, path), {}
    groups = ["prologue"] + [f"blocks.{b}" for b in range(len(config.blocks))] + [f"epilogue.{e}" for e in range(len(config.epilogue))]
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
        raise NemoImportError(f"{path}: the decoder has {weight.shape[0]} outputs, the vocabulary + blank {config.num_classes}")
    order = [config.num_classes - 1, *range(config.num_classes - 1)]  # NeMo's blank is last; the zoo's is id 0
    out["decoder.weight"], out["decoder.bias"] = weight[order], bias[order]
    leftover = [k for k in state if k.startswith(("encoder.", "decoder.")) and k not in mapper.used]
    if leftover:
        raise NemoImportError(f"{path}: {WEIGHTS_NAME} has weights the zoo Jasper would ignore: {leftover[:5]}")
    return out


def import_nemo(path: str | Path) -> SpeechRecognizer:
    """Convert a NeMo Jasper/QuartzNet ``.nemo`` file into a zoo :class:`SpeechRecognizer` (eval mode).

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
    tokenizer = tokenizer_config(vocabulary)
    pre = config.get("preprocessor") or {}
    pre = {**pre, **(pre.get("params") or {})}
    featurizer = featurizer_config(pre)
    jasper, blocks = jasper_config(encoder, len(vocabulary) + 1)
    if featurizer.n_mels != jasper.in_features:
        raise NemoImportError(f"{path}: preprocessor.features = {featurizer.n_mels} but encoder.feat_in = {jasper.in_features}")
    weights = convert_state_dict(state, jasper, blocks, path)
    network = network_dict(Jasper, jasper)
    recognizer = SpeechRecognizer(featurizer=asdict(featurizer), encoder=network, tokenizer=asdict(tokenizer))
    recognizer.encoder.load_state_dict(weights, strict=True)
    return recognizer.eval()
