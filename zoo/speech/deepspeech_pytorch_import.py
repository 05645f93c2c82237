"""Convert deepspeech.pytorch checkpoints (SeanNaren/deepspeech.pytorch) into a zoo DeepSpeech2 recognizer.

Their model (fixed architecture): input spectrogram ``(N, 1, D, T)``; ``conv.seq_module`` = Conv2d(1, 32,
(41, 11) over (freq, time), stride (2, 2), pad (20, 5)) + BatchNorm2d + Hardtanh(0, 20), Conv2d(32, 32,
(21, 11), stride (2, 1), pad (10, 5)) + BatchNorm2d + Hardtanh, padded frames zeroed after every module;
``rnns.{i}`` = [SequenceWise BatchNorm1d of the layer *input* (layers >= 1)] + ``nn.LSTM``/``GRU``/``RNN``
with biases, bidirectional outputs summed; unidirectional models add ``lookahead`` (depthwise conv over
the current and ``context - 1`` future frames) + Hardtanh(0, 20); ``fc.0.module`` = BatchNorm1d +
Linear without bias. The CTC blank is the label ``"_"`` (index 0 in their ``labels.json``).

Mapping onto :class:`~zoo.speech.deepspeech2.DeepSpeech2` (computes the same function in eval mode):

* conv weights ``(C, C_in, k_freq, k_time)`` are transposed to the zoo's ``(time, freq)`` layout; the conv
  bias ``b`` moves into the BN running mean (``BN(Wx + b)`` with ``mu - b`` equals ``BN(Wx)`` with ``mu``);
* their BN sits on the RNN *input* (``W_ih BN(x)``), whereas the zoo's sequence-wise BN normalises
  ``W x`` (DS2 §3.2): ``B(W x)`` and ``W B(x)`` are different functions, so the zoo model is built with
  ``sequence_batch_norm=False`` and the eval-mode BN (a fixed per-feature affine map) is folded into
  ``W_ih`` and ``b_ih`` exactly. Fine-tuning the imported model therefore trains without those BNs;
* the final BN + bias-free Linear fold into the zoo output layer's weight and bias;
* the Hardtanh after the lookahead is represented by a zoo FC layer initialised to the identity
  (``fc_hidden = hidden_size``, ``hardtanh(I h + 0)``), followed by the folded output layer.

Features: the recognizer's featurizer is ``kind="deepspeech_pytorch"`` (:mod:`zoo.speech.peer_features`), their
``SpectrogramParser``: ``log1p(|STFT|)`` with their window function, window and hop, normalised by one mean and
std per utterance; from raw audio the features, outputs and greedy transcripts equal theirs
(``docs/import-deepspeech-pytorch.md``, ``tests/test_import_deepspeech_fixtures.py``).

Loading: checkpoints written by their training (``@hydra.main`` + Lightning ``ModelCheckpoint``) pickle OmegaConf
``DictConfig`` hyper-parameters; :func:`read_checkpoint` reads them with ``torch.load(weights_only=True)``,
rebuilding exactly those classes as inert placeholders, and refuses any other pickled class.
"""

from __future__ import annotations

import enum
import pickle
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo.registry import network_dict
from zoo.speech.deepspeech2 import DeepSpeech2, DeepSpeech2Config
from zoo.speech.features import FeaturizerConfig
from zoo.speech.nemo_import import representable
from zoo.speech.peer_features import PAD_MODES, PERIODIC_WINDOWS
from zoo.speech.recognizer import SpeechRecognizer
from zoo.speech.tokenizer import TokenizerConfig

#: deepspeech.pytorch's hard-coded front end: (out channels, kernel (freq, time), stride (freq, time), padding).
FRONT_END = ((32, (41, 11), (2, 2), (20, 5)), (32, (21, 11), (2, 1), (10, 5)))
_GATES = {4: "lstm", 3: "gru", 1: "rnn_tanh"}
_BLANK = "_"


class DeepSpeechImportError(ValueError):
    """A deepspeech.pytorch checkpoint that is malformed or cannot be represented exactly by the zoo."""


class _Placeholder:
    """Inert stand-in for a class pickled in a checkpoint (OmegaConf containers and nodes, config
    dataclasses, enums, typing forms): records its constructor arguments and pickled state, never
    runs its code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        instance = super().__new__(cls)
        instance.args, instance.state = args, None
        return instance

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _inert_defaultdict(*args: Any) -> dict:
    """``collections.defaultdict(factory)`` as a plain dict (OmegaConf's ``resolver_cache``, filled with
    the ``${now:...}`` results of hydra's run): the default factory is dropped, never called."""
    return {}


#: What deepspeech.pytorch's training pickles besides tensors (``@hydra.main`` config -> ``DictConfig``
#: hyper-parameters whose parents reach the whole ``DeepSpeechConfig``): OmegaConf containers, nodes and
#: metadata, the peer's config dataclasses and enums (``RNNType`` holds the ``torch.nn`` RNN classes),
#: the typing forms of OmegaConf's ``ref_type`` (``Tuple[Any, ...]`` = ``getitem(Tuple, (Any, Ellipsis))``)
#: and the builtin types in its metadata. Each loads as an inert :class:`_Placeholder`.
_INERT_MODULES = ("omegaconf.", "deepspeech_pytorch.configs.", "deepspeech_pytorch.enums.")
_INERT_NAMES = frozenset(
    {
        *(f"typing.{name}" for name in ("Any", "Tuple", "List", "Dict", "Optional", "Union")),
        "_operator.getitem",
        "operator.getitem",
        "builtins.getattr",
        "builtins.Ellipsis",
        "builtins.type",
        *(f"builtins.{name}" for name in ("object", "bool", "int", "float", "str", "bytes", "list", "tuple", "dict")),
        *(f"torch.nn.modules.rnn.{name}" for name in ("LSTM", "GRU", "RNN")),
    }
)


def _plain(node: Any) -> Any:
    """Placeholders and OmegaConf-like objects (``_content``/``_val`` state), enums (their value), classes
    (their dotted name) and mappings -> plain dicts, lists and values."""
    if isinstance(node, Tensor):
        return node
    if isinstance(node, type):  # a class as a value (RNNType.lstm = torch.nn.LSTM) -> its pickled name
        return getattr(node, "pickled_name", f"{node.__module__}.{node.__qualname__}")
    if isinstance(node, enum.Enum):
        return _plain(node.value)
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, _Placeholder):
        state = node.state if isinstance(node.state, dict) else {}
    else:  # --trust-pickle: real objects; OmegaConf nodes keep their value in ``_val``
        state = vars(node) if hasattr(node, "__dict__") else {}
        if "_content" not in state and "_val" not in state:
            return node
    if "_content" in state:
        return _plain(state["_content"])
    if "_val" in state:
        return _plain(state["_val"])
    if state:
        return _plain(state)
    return _plain(node.args[0]) if node.args else None


def _load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``. The classes of a deepspeech.pytorch checkpoint that it
    refuses (:data:`_INERT_NAMES`, :data:`_INERT_MODULES`) load as inert :class:`_Placeholder` objects and
    ``collections.defaultdict`` as a plain dict, so neither omegaconf nor deepspeech_pytorch is needed
    and no pickled code runs; any other class is refused. ``trust_pickle`` loads with
    ``weights_only=False`` instead."""
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    foreign = sorted(
        n
        for n in names
        if n not in _INERT_NAMES and n != "collections.defaultdict" and not n.startswith(_INERT_MODULES)
    )
    if foreign:
        raise DeepSpeechImportError(
            f"{path}: pickles objects other than tensors and deepspeech.pytorch/OmegaConf configuration "
            f"({', '.join(foreign)}); --trust-pickle loads it with weights_only=False, for files you trust"
        )
    stubs: list[Any] = [
        (type(name.rsplit(".", 1)[-1], (_Placeholder,), {"pickled_name": name}), name)
        for name in names
        if name != "collections.defaultdict"
    ]
    stubs.append((_inert_defaultdict, "collections.defaultdict"))
    with torch.serialization.safe_globals(stubs):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint as plain data (see :func:`_load`) with its ``state_dict`` of tensors."""
    path = Path(path)
    if not path.is_file():
        raise DeepSpeechImportError(f"{path}: no such file")
    try:
        checkpoint = _load(path, trust_pickle)
    except DeepSpeechImportError:
        raise
    except pickle.UnpicklingError as error:
        lines = str(error).splitlines()
        reason = next((line.strip() for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
        raise DeepSpeechImportError(
            f"{path}: torch.load(weights_only=True) refused it even with placeholders for its classes "
            f"({reason}); --trust-pickle loads it with weights_only=False, for files you trust"
        ) from error
    except (ModuleNotFoundError, AttributeError) as error:
        raise DeepSpeechImportError(f"{path}: unpickling needs a missing module or class ({error})") from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt files
        raise DeepSpeechImportError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DeepSpeechImportError(f"{path}: not a deepspeech.pytorch checkpoint (no state_dict)")
    return _plain({k: v for k, v in checkpoint.items() if k != "state_dict"}) | {"state_dict": checkpoint["state_dict"]}


def _source_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}


def is_deepspeech_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` loads (as :func:`read_checkpoint` does) into deepspeech.pytorch's layout."""
    try:
        state = _source_state(read_checkpoint(path))
    except DeepSpeechImportError:
        return False
    return "conv.seq_module.0.weight" in state and "rnns.0.rnn.weight_ih_l0" in state


def tokenizer_config(labels: list[str], path: Path) -> tuple[TokenizerConfig, list[int]]:
    """Their labels -> zoo alphabet (lowercased, blank removed) and the output-row order (blank first)."""
    if _BLANK not in labels:
        raise DeepSpeechImportError(f"{path}: labels {labels!r} have no CTC blank {_BLANK!r}")
    blank = labels.index(_BLANK)
    rest = [i for i in range(len(labels)) if i != blank]
    chars = [labels[i].lower() if isinstance(labels[i], str) else labels[i] for i in rest]
    bad = [labels[i] for i, c in zip(rest, chars) if not representable(c)]
    if bad:
        raise DeepSpeechImportError(
            f"{path}: labels {bad!r} are not supported: the zoo's character tokenizer never produces them after "
            "normalisation (single lowercase characters that survive it, space and apostrophe are supported)"
        )
    if len(set(chars)) != len(chars):
        raise DeepSpeechImportError(f"{path}: labels {labels!r} repeat a character once lowercased")
    return TokenizerConfig(alphabet="".join(chars), numbers="spell" if " " in chars else "drop"), [blank, *rest]


def featurizer_config(spect: dict[str, Any], stft_pad: str = "constant") -> FeaturizerConfig:
    """Their ``spect_cfg`` -> the zoo featurizer that reproduces their ``SpectrogramParser``
    (``kind="deepspeech_pytorch"``, :mod:`zoo.speech.peer_features`): the same sample rate, window
    function, window and hop in samples (``int(sample_rate * seconds)``, as theirs). ``stft_pad``: zeros
    (librosa >= 0.10) or ``"reflect"`` (librosa <= 0.9), which the checkpoint does not record."""
    sample_rate = int(spect.get("sample_rate", 16000))
    window_size, window_stride = float(spect.get("window_size", 0.02)), float(spect.get("window_stride", 0.01))
    window = spect.get("window", "hamming")
    win_length, hop_length = int(sample_rate * window_size), int(sample_rate * window_stride)
    return FeaturizerConfig(
        kind="deepspeech_pytorch",
        sample_rate=sample_rate,
        window_ms=window_size * 1000,
        hop_ms=window_stride * 1000,
        win_length=win_length,
        hop_length=hop_length,
        n_fft=win_length,
        window=str(window),
        dither=0.0,
        preemphasis=0.0,
        mag_power=1.0,
        normalize="all_features",
        stft_pad=stft_pad,
    )


class _State:
    def __init__(self, state: dict[str, Tensor], path: Path) -> None:
        self.state, self.path = state, path

    def __call__(self, key: str) -> Tensor:
        if key not in self.state:
            raise DeepSpeechImportError(f"{self.path}: state_dict lacks {key!r}")
        return self.state[key].float()

    def bn_affine(self, prefix: str, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
        """Eval-mode BN as ``x * scale + shift``."""
        scale = self(f"{prefix}.weight") * torch.rsqrt(self(f"{prefix}.running_var") + eps)
        return scale, self(f"{prefix}.bias") - self(f"{prefix}.running_mean") * scale


def import_deepspeech(path: str | Path, trust_pickle: bool = False, stft_pad: str = "constant") -> SpeechRecognizer:
    """Convert a deepspeech.pytorch ``.ckpt`` (Lightning ``hyper_parameters`` or the older top-level
    ``labels``/``audio_conf`` layout) into a zoo DeepSpeech2 :class:`SpeechRecognizer` (eval mode) with
    their featurizer (:func:`featurizer_config`)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, trust_pickle)
    hp = checkpoint.get("hyper_parameters") or {}
    state = _source_state(checkpoint)
    get = _State(state, path)
    labels = hp.get("labels") or checkpoint.get("labels")
    if not labels:
        raise DeepSpeechImportError(f"{path}: no labels (hyper_parameters.labels)")
    tokenizer, order = tokenizer_config(list(labels), path)
    spect = hp.get("spect_cfg") or checkpoint.get("audio_conf") or {}
    if str(spect.get("window", "hamming")) not in PERIODIC_WINDOWS:
        raise DeepSpeechImportError(
            f"{path}: spect_cfg.window {spect.get('window')!r} is not one of "
            f"deepspeech.pytorch's windows {sorted(PERIODIC_WINDOWS)}"
        )
    if stft_pad not in PAD_MODES:
        raise DeepSpeechImportError(f"stft_pad must be one of {PAD_MODES}, got {stft_pad!r}")
    featurizer = featurizer_config(spect, stft_pad)

    for index, (channels, kernel, _, _) in enumerate(FRONT_END):
        weight = get(f"conv.seq_module.{3 * index}.weight")
        if weight.shape[0] != channels or tuple(weight.shape[2:]) != kernel:
            raise DeepSpeechImportError(
                f"{path}: conv.seq_module.{3 * index}.weight has shape {tuple(weight.shape)}; deepspeech.pytorch's "
                f"architecture has ({channels}, _, {kernel[0]}, {kernel[1]}) (unknown architecture)"
            )
    layers = 0
    while f"rnns.{layers}.rnn.weight_ih_l0" in state:
        layers += 1
    if layers == 0:
        raise DeepSpeechImportError(f"{path}: no recurrent layers (rnns.0.rnn.weight_ih_l0); unknown architecture")
    bidirectional = "rnns.0.rnn.weight_ih_l0_reverse" in state
    hidden = get("rnns.0.rnn.weight_hh_l0").shape[1]
    gates = get("rnns.0.rnn.weight_ih_l0").shape[0] // hidden
    if gates not in _GATES:
        raise DeepSpeechImportError(f"{path}: recurrent weights with {gates} gates: unknown RNN type")
    model_cfg = hp.get("model_cfg") or {}
    for key, value in (("hidden_size", hidden), ("hidden_layers", layers)):
        if key in model_cfg and int(model_cfg[key]) != value:
            raise DeepSpeechImportError(f"{path}: model_cfg.{key} = {model_cfg[key]} but the weights say {value}")
    context, lookahead_key = 0, None
    if not bidirectional:
        lookahead_key = next((k for k in ("lookahead.0.conv.weight", "lookahead.conv.weight") if k in state), None)
        if lookahead_key is None:
            raise DeepSpeechImportError(f"{path}: a unidirectional model without lookahead weights")
        context = get(lookahead_key).shape[-1]
        if context < 2:
            raise DeepSpeechImportError(
                f"{path}: lookahead context {context} < 2 is not supported (zoo: context - 1 >= 1)"
            )

    sample_rate, window = featurizer.sample_rate, featurizer.window_ms / 1000
    config = DeepSpeech2Config(
        in_features=featurizer.n_fft // 2 + 1,
        num_classes=len(labels),
        conv_channels=tuple(c for c, _, _, _ in FRONT_END),
        conv_kernels=tuple((k[1], k[0]) for _, k, _, _ in FRONT_END),
        conv_strides=tuple((s[1], s[0]) for _, _, s, _ in FRONT_END),
        conv_padding=tuple((p[1], p[0]) for _, _, _, p in FRONT_END),
        rnn_type=_GATES[gates],
        rnn_layers=layers,
        rnn_hidden=hidden,
        bidirectional=bidirectional,
        merge="sum",
        sequence_batch_norm=False,
        lookahead=max(context - 1, 0),
        fc_hidden=0 if bidirectional else hidden,
        relu_clip=20.0,
        bn_eps=1e-5,
    )
    network = network_dict(DeepSpeech2, config)
    recognizer = SpeechRecognizer(featurizer=asdict(featurizer), encoder=network, tokenizer=asdict(tokenizer))
    model: DeepSpeech2 = recognizer.encoder
    out: dict[str, Tensor] = {}
    for index in range(len(FRONT_END)):
        conv, bn = f"conv.seq_module.{3 * index}", f"conv.seq_module.{3 * index + 1}"
        out[f"front_end.convs.{index}.weight"] = get(f"{conv}.weight").transpose(2, 3)
        bias = state.get(f"{conv}.bias")
        for name in ("weight", "bias", "running_var"):
            out[f"front_end.norms.{index}.{name}"] = get(f"{bn}.{name}")
        mean = get(f"{bn}.running_mean")
        out[f"front_end.norms.{index}.running_mean"] = mean - bias.float() if bias is not None else mean
        out[f"front_end.norms.{index}.num_batches_tracked"] = state.get(f"{bn}.num_batches_tracked", torch.tensor(0))
    width = model.front_end.out_features
    if get("rnns.0.rnn.weight_ih_l0").shape[1] != width:
        raise DeepSpeechImportError(
            f"{path}: rnns.0 takes {get('rnns.0.rnn.weight_ih_l0').shape[1]} inputs but the spectrogram of "
            f"spect_cfg (sample_rate {sample_rate}, window {window}) gives {width} after the convs"
        )
    for layer in range(layers):
        rnn = f"rnns.{layer}.rnn"
        suffixes = ["_l0", "_l0_reverse"] if bidirectional else ["_l0"]
        w_ih = [get(f"{rnn}.weight_ih{s}") for s in suffixes]
        b_ih = [get(f"{rnn}.bias_ih{s}") for s in suffixes]
        if layer > 0:  # W_ih BN(x) + b = (W_ih diag(scale)) x + (b + W_ih shift)
            scale, shift = get.bn_affine(f"rnns.{layer}.batch_norm.module")
            b_ih = [b + w @ shift for w, b in zip(w_ih, b_ih)]
            w_ih = [w * scale[None, :] for w in w_ih]
        out[f"rnns.{layer}.weight_ih"] = torch.cat(w_ih)
        out[f"rnns.{layer}.bias_ih"] = torch.cat(b_ih)
        out[f"rnns.{layer}.weight_hh"] = torch.stack([get(f"{rnn}.weight_hh{s}") for s in suffixes])
        out[f"rnns.{layer}.bias_hh"] = torch.stack([get(f"{rnn}.bias_hh{s}") for s in suffixes])
    if lookahead_key is not None:
        out["lookahead.conv.weight"] = get(lookahead_key)
        out["fc.weight"], out["fc.bias"] = torch.eye(hidden), torch.zeros(hidden)  # carries the Hardtanh
    scale, shift = get.bn_affine("fc.0.module.0")
    linear = get("fc.0.module.1.weight")
    if linear.shape[0] != len(labels):
        raise DeepSpeechImportError(f"{path}: the output layer has {linear.shape[0]} rows for {len(labels)} labels")
    out["output.weight"], out["output.bias"] = (linear * scale[None, :])[order], (linear @ shift)[order]
    model.load_state_dict(out, strict=True)
    return recognizer.eval()
