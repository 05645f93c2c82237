"""Export to TorchScript and ONNX, verified against eager PyTorch.

What is exported is the network's tensor-in/tensor-out part. For a speech model (a
``SpeechRecognizer`` pipeline or any zoo speech encoder: its config has ``in_features``) that is
the encoder, ``(features (B, F, T), lengths (B,)) -> (logits (B, T', C), out_lengths (B,))``,
with batch and time dynamic; the featurizer (STFT) and the decoder stay in Python. Any other
module is exported with the ``example_inputs`` you give (or its ``export_spec()`` method's).

Both functions run the exported program on the example inputs and on ``check_inputs`` (other
shapes: a traced graph that baked in one shape fails there) and raise :class:`ExportError` unless
every output equals eager within ``atol`` (default 1e-4). ONNX files are written by
``torch.onnx.export`` (TorchScript-based exporter) and run with ``onnxruntime``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class ExportError(RuntimeError):
    """The exported program could not be written or does not reproduce eager outputs."""


@dataclass
class ExportSpec:
    """A module, example inputs (plus other shapes to check) and the ONNX names / dynamic axes."""

    module: nn.Module
    example_inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    check_inputs: list[tuple[Tensor, ...]] = field(default_factory=list)


def _speech_inputs(in_features: int, batch: int, frames: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(frames)
    features = torch.randn(batch, in_features, frames, generator=generator)
    lengths = torch.linspace(frames, frames * 0.6, batch).round().long()
    features[..., :] *= (torch.arange(frames) < lengths[:, None]).unsqueeze(1)  # zero padding, as the loaders do
    return features, lengths


def export_spec(obj: nn.Module, example_inputs: tuple[Tensor, ...] | None = None) -> ExportSpec:
    """How ``obj`` is exported: its ``export_spec()``, the speech-encoder convention, or ``example_inputs``."""
    if example_inputs is None and callable(getattr(obj, "export_spec", None)):
        return obj.export_spec()
    encoder = getattr(obj, "encoder", obj)
    in_features = getattr(getattr(encoder, "config", None), "in_features", None)
    if example_inputs is None and in_features is not None:
        return ExportSpec(
            module=encoder,
            example_inputs=_speech_inputs(in_features, 2, 160),
            input_names=["features", "lengths"],
            output_names=["logits", "out_lengths"],
            dynamic_axes={
                "features": {0: "batch", 2: "frames"},
                "lengths": {0: "batch"},
                "logits": {0: "batch", 1: "out_frames"},
                "out_lengths": {0: "batch"},
            },
            check_inputs=[_speech_inputs(in_features, 3, 97)],
        )
    if example_inputs is None:
        raise ExportError(
            f"{type(obj).__name__}: pass example_inputs (it is not a speech encoder and has no export_spec())"
        )
    names = [f"input_{i}" for i in range(len(example_inputs))]
    return ExportSpec(module=obj, example_inputs=tuple(example_inputs), input_names=names, output_names=["output"])


def _as_tuple(outputs: Any) -> tuple[Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _compare(name: str, expected: tuple[Tensor, ...], actual: tuple[Any, ...], atol: float) -> float:
    if len(expected) != len(actual):
        raise ExportError(f"{name}: {len(actual)} outputs, eager has {len(expected)}")
    worst = 0.0
    for i, (e, a) in enumerate(zip(expected, actual)):
        a = torch.as_tensor(a)
        if e.shape != a.shape:
            raise ExportError(f"{name}: output {i} has shape {tuple(a.shape)}, eager {tuple(e.shape)}")
        diff = (e.double() - a.double()).abs().max().item() if e.numel() else 0.0
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"{name}: output {i} differs from eager by {diff:.3g} (> {atol:g})")
        worst = max(worst, diff)
    return worst


@torch.no_grad()
def export_torchscript(
    obj: nn.Module, path: str | Path, example_inputs: tuple[Tensor, ...] | None = None, atol: float = 1e-4
) -> float:
    """Trace ``obj`` (see :func:`export_spec`) to ``path``; returns the largest deviation from eager."""
    spec = export_spec(obj, example_inputs)
    module = spec.module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated (in favour of torch.export); it is still what
        # libtorch / C++ runtimes load. Shape-specialisation is checked below instead of warned about.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, spec.example_inputs, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    return max(
        _compare(f"{path} (inputs {i})", _as_tuple(module(*inputs)), _as_tuple(loaded(*inputs)), atol)
        for i, inputs in enumerate([spec.example_inputs, *spec.check_inputs])
    )


@torch.no_grad()
def export_onnx(
    obj: nn.Module,
    path: str | Path,
    example_inputs: tuple[Tensor, ...] | None = None,
    atol: float = 1e-4,
    opset_version: int = 17,
) -> float:
    """Write ``obj`` (see :func:`export_spec`) as ONNX and check it with onnxruntime; returns the largest deviation."""
    import onnxruntime

    spec = export_spec(obj, example_inputs)
    module = spec.module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            spec.example_inputs,
            str(path),
            dynamo=False,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset_version,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    worst = 0.0
    for i, inputs in enumerate([spec.example_inputs, *spec.check_inputs]):
        # ONNX drops inputs the graph does not use; feed only those it kept
        given = dict(zip(spec.input_names, inputs))
        outputs = session.run(None, {name: given[name].numpy() for name in feeds})
        worst = max(worst, _compare(f"{path} (inputs {i})", _as_tuple(module(*inputs)), tuple(outputs), atol))
    return worst
