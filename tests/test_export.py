"""TorchScript / ONNX export of speech encoders and arbitrary modules, checked against eager (onnxruntime)."""

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import zoo
from zoo.export import ExportError, export_onnx, export_spec, export_torchscript
from zoo.registry import model_to_dict


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
@pytest.mark.parametrize("name", ["jasper-tiny", "ds2-tiny"])
def test_speech_encoders_export_with_dynamic_batch_and_time(tmp_path, name):
    torch.manual_seed(0)
    encoder = zoo.create(name).eval()
    assert export_torchscript(encoder, tmp_path / "encoder.pt") <= 1e-4
    assert export_onnx(encoder, tmp_path / "encoder.onnx") <= 1e-4
    # independent check at a shape the export never saw: 1 utterance of 123 frames
    features = torch.randn(1, encoder.config.in_features, 123)
    lengths = torch.tensor([123])
    with torch.no_grad():
        logits, out_lengths = encoder(features, lengths)
    scripted = torch.jit.load(str(tmp_path / "encoder.pt"))
    torch.testing.assert_close(scripted(features, lengths)[0], logits, atol=1e-4, rtol=0)
    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: {"features": features, "lengths": lengths}[i.name].numpy() for i in session.get_inputs()}
    onnx_logits = session.run(["logits"], feeds)[0]
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4, rtol=0)


def test_speech_recognizer_pipeline_exports_its_encoder(tmp_path):
    from zoo.speech.recognizer import SpeechRecognizer

    encoder = zoo.create("jasper-tiny")
    recognizer = SpeechRecognizer(featurizer={"n_mels": encoder.config.in_features}, encoder=model_to_dict(encoder))
    spec = export_spec(recognizer)
    assert spec.module is recognizer.encoder and spec.input_names == ["features", "lengths"]
    assert export_onnx(recognizer, tmp_path / "r.onnx") <= 1e-4


class ShapeBaking(nn.Module):
    """Uses a Python number from the input shape: tracing freezes it, so other shapes go wrong."""

    def forward(self, x):
        return x * float(x.shape[-1])


def test_generic_module_with_example_inputs_and_detected_mismatch(tmp_path):
    mlp = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 2))
    x = torch.randn(4, 5)
    assert export_torchscript(mlp, tmp_path / "mlp.pt", (x,)) <= 1e-4
    assert export_onnx(mlp, tmp_path / "mlp.onnx", (x,)) <= 1e-4
    with pytest.raises(ExportError, match="pass example_inputs"):
        export_onnx(mlp, tmp_path / "nope.onnx")

    class Spec(ShapeBaking):
        def export_spec(self):
            from zoo.export import ExportSpec

            return ExportSpec(self, (torch.ones(2, 3),), ["x"], ["y"], check_inputs=[(torch.ones(2, 5),)])

    with pytest.raises(ExportError, match=r"inputs 1\): output 0 differs from eager by 2"):
        export_torchscript(Spec(), tmp_path / "bad.pt")
