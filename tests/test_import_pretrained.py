"""Importing NeMo ``.nemo`` and deepspeech.pytorch checkpoints: files built in tmp_path in exactly those
layouts with random weights; the converted zoo model must match a reference forward written here
directly from the source state dict with torch.nn.functional."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
import yaml
from torch.nn import functional as F

import zoo
from zoo.cli import main as zoo_main
from zoo.speech.nemo_import import NemoImportError, import_nemo

VOCAB = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


# --------------------------------------------------------------------------- NeMo
def nemo_blocks(separable: bool, dense: bool) -> list[dict]:
    common = dict(separable=separable, dropout=0.0)
    residual = dict(residual=True, residual_dense=dense)
    return [
        dict(filters=8, repeat=1, kernel=[5], stride=[2], dilation=[1], residual=False, **common),
        dict(filters=8, repeat=2, kernel=[3], stride=[1], dilation=[1], **residual, **common),
        dict(filters=12, repeat=3, kernel=[5], stride=[1], dilation=[1], **residual, **common),
        dict(filters=12, repeat=2, kernel=[7], stride=[1], dilation=[1], **residual, **common),
        dict(filters=16, repeat=1, kernel=[7], stride=[1], dilation=[2], residual=False, **common),
        # QuartzNet keeps its last 1x1 conv ordinary; a separable one exercises the depthwise fold
        dict(filters=16, repeat=1, kernel=[1], stride=[1], dilation=[1], residual=False, dropout=0.0, separable=separable),
    ]


def nemo_config(blocks: list[dict], feat_in: int = 16) -> dict:
    return {
        "sample_rate": 16000,
        "labels": VOCAB,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": "${sample_rate}", "window_size": 0.02, "window_stride": 0.01,
                         "window": "hann", "features": feat_in, "n_fft": 512, "normalize": "per_feature",
                         "dither": 1e-5, "pad_to": 16, "frame_splicing": 1},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": feat_in,
                    "activation": "relu", "conv_mask": True, "jasper": blocks},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": blocks[-1]["filters"],
                    "num_classes": len(VOCAB), "vocabulary": "${labels}"},
    }


def random_bn(state: dict, prefix: str, channels: int, gen: torch.Generator) -> None:
    state[f"{prefix}.weight"] = 1 + 0.3 * torch.randn(channels, generator=gen)
    state[f"{prefix}.bias"] = 0.3 * torch.randn(channels, generator=gen)
    state[f"{prefix}.running_mean"] = 0.3 * torch.randn(channels, generator=gen)
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=gen)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def nemo_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under NeMo's key names (MaskedConv1d ``.conv.weight``, bare BatchNorm1d keys)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    c_in = config["encoder"]["feat_in"]
    dense_sources: list[int] = []
    for i, block in enumerate(config["encoder"]["jasper"]):
        k, planes, j = block["kernel"][0], block["filters"], 0
        prefix = f"encoder.encoder.{i}"
        for r in range(block["repeat"]):
            cin = c_in if r == 0 else planes
            if block["separable"]:
                state[f"{prefix}.mconv.{j}.conv.weight"] = torch.randn(cin, 1, k, generator=gen) / k**0.5
                state[f"{prefix}.mconv.{j + 1}.conv.weight"] = torch.randn(planes, cin, 1, generator=gen) / cin**0.5
                j += 2
            else:
                state[f"{prefix}.mconv.{j}.conv.weight"] = torch.randn(planes, cin, k, generator=gen) / (cin * k) ** 0.5
                j += 1
            random_bn(state, f"{prefix}.mconv.{j}", planes, gen)
            j += 3  # bn, activation, dropout
        if block.get("residual_dense"):
            dense_sources.append(c_in)
        if block["residual"]:
            for n, source in enumerate(dense_sources if block.get("residual_dense") else [c_in]):
                state[f"{prefix}.res.{n}.0.conv.weight"] = torch.randn(planes, source, 1, generator=gen) / source**0.5
                random_bn(state, f"{prefix}.res.{n}.1", planes, gen)
        c_in = planes
    state["decoder.decoder_layers.0.weight"] = torch.randn(len(VOCAB) + 1, c_in, 1, generator=gen) / c_in**0.5
    state["decoder.decoder_layers.0.bias"] = 0.1 * torch.randn(len(VOCAB) + 1, generator=gen)
    state["preprocessor.featurizer.window"] = torch.hann_window(320)  # buffers NeMo saves too; ignored
    return state


def write_nemo(path, config: dict | None, state: dict | None) -> None:
    with tarfile.open(path, "w:") as archive:
        for name, payload in (("model_config.yaml", config), ("model_weights.ckpt", state)):
            if payload is None:
                continue
            buffer = io.BytesIO()
            if name.endswith(".yaml"):
                buffer.write(yaml.safe_dump(payload).encode())
            else:
                torch.save(payload, buffer)
            info = tarfile.TarInfo(f"./{name}")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)


def nemo_reference(state: dict, blocks: list[dict], x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NeMo's ConvASREncoder + ConvASRDecoder forward in eval mode, from the raw state dict:
    masked convs, BN, residual sums before ReLU, dense residual lists; blank last."""

    def mask(t, lens):
        return t * (torch.arange(t.shape[-1])[None, :] < lens[:, None])[:, None, :]

    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], False, 0.0, 1e-3)

    xs, lens = [x], lengths
    for i, block in enumerate(blocks):
        p, k, s, d = f"encoder.encoder.{i}", block["kernel"][0], block["stride"][0], block["dilation"][0]
        pad = d * (k - 1) // 2
        out, lens_in, j = xs[-1], lens, 0
        for r in range(block["repeat"]):
            if block["separable"]:
                w = state[f"{p}.mconv.{j}.conv.weight"]
                out = F.conv1d(mask(out, lens), w, stride=s, padding=pad, dilation=d, groups=w.shape[0])
                lens = (lens + 2 * pad - d * (k - 1) - 1) // s + 1
                out = F.conv1d(mask(out, lens), state[f"{p}.mconv.{j + 1}.conv.weight"])
                j += 2
            else:
                out = F.conv1d(mask(out, lens), state[f"{p}.mconv.{j}.conv.weight"], stride=s, padding=pad, dilation=d)
                lens = (lens + 2 * pad - d * (k - 1) - 1) // s + 1
                j += 1
            out = bn(out, f"{p}.mconv.{j}")
            j += 3
            if r < block["repeat"] - 1:
                out = F.relu(out)
        if block["residual"]:
            for n in range(len(xs) if block.get("residual_dense") else 1):
                res = F.conv1d(mask(xs[n], lens_in), state[f"{p}.res.{n}.0.conv.weight"])
                out = out + bn(res, f"{p}.res.{n}.1")
        out = F.relu(out)
        xs = xs + [out] if block.get("residual_dense") else [out]
    logits = F.conv1d(xs[-1], state["decoder.decoder_layers.0.weight"], state["decoder.decoder_layers.0.bias"])
    return logits.transpose(1, 2), lens


@pytest.mark.parametrize("separable,dense", [(False, True), (True, False)], ids=["jasper-dr", "quartznet"])
def test_nemo_import_matches_reference_forward(tmp_path, separable, dense):
    blocks = nemo_blocks(separable, dense)
    config, state = nemo_config(blocks), None
    state = nemo_state_dict(config)
    path = tmp_path / "model.nemo"
    write_nemo(path, config, state)
    recognizer = import_nemo(path)
    encoder = recognizer.encoder
    assert encoder.config.residual == ("dense" if dense else "plain") and encoder.config.separable == separable
    assert recognizer.tokenizer.labels[1:] == VOCAB and recognizer.tokenizer.blank == 0
    assert recognizer.featurizer.config.n_mels == 16 and recognizer.featurizer.config.hop_ms == 10.0

    torch.manual_seed(1)
    x, lengths = torch.randn(3, 16, 41), torch.tensor([41, 30, 17])
    x = x * (torch.arange(41)[None, :] < lengths[:, None])[:, None, :]  # zero padding, as NeMo's collate
    with torch.no_grad():
        logits, out_lengths = encoder(x, lengths)
        ref, ref_lengths = nemo_reference(state, blocks, x, lengths)
    assert out_lengths.tolist() == ref_lengths.tolist() == [21, 15, 9]
    ref = torch.cat([ref[..., -1:], ref[..., :-1]], dim=-1)  # NeMo's blank (last) -> zoo id 0
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(logits[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)


def test_zoo_load_nemo_and_import_command(tmp_path):
    blocks = nemo_blocks(True, False)
    config = nemo_config(blocks)
    path = tmp_path / "qn.nemo"
    write_nemo(path, config, nemo_state_dict(config))
    recognizer = zoo.load(path)
    x, lengths = torch.randn(1, 16, 20), torch.tensor([20])
    out = tmp_path / "converted"
    assert zoo_main(["import-nemo", str(path), str(out)]) == 0
    reloaded = zoo.load(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encoder(x, lengths)[0], recognizer.encoder(x, lengths)[0])
    assert reloaded.tokenizer.config.alphabet == "".join(VOCAB)
    text = reloaded.transcribe(torch.zeros(8000))[0].text
    assert set(text) <= set(VOCAB)
    assert zoo_main(["import-nemo", str(tmp_path / "missing.nemo"), str(tmp_path / "o2")]) == 1


def test_nemo_errors(tmp_path):
    config = nemo_config(nemo_blocks(False, True))
    state = nemo_state_dict(config)
    no_config = tmp_path / "noconfig.nemo"
    write_nemo(no_config, None, state)
    with pytest.raises(NemoImportError, match="noconfig.nemo.*model_config.yaml"):
        import_nemo(no_config)

    conformer = {**config, "encoder": {**config["encoder"], "_target_": "nemo.collections.asr.modules.ConformerEncoder"}}
    write_nemo(tmp_path / "conformer.nemo", conformer, state)
    with pytest.raises(NemoImportError, match="ConformerEncoder"):
        import_nemo(tmp_path / "conformer.nemo")

    german = {**config, "labels": [*VOCAB, "ß", "<unk>"], "decoder": {**config["decoder"], "vocabulary": [*VOCAB, "<unk>"]}}
    write_nemo(tmp_path / "vocab.nemo", german, state)
    with pytest.raises(NemoImportError, match="<unk>"):
        import_nemo(tmp_path / "vocab.nemo")

    se_blocks = nemo_blocks(False, True)
    se_blocks[2]["se"] = True
    write_nemo(tmp_path / "se.nemo", nemo_config(se_blocks), state)
    with pytest.raises(NemoImportError, match=r"jasper\[2\]\.se"):
        import_nemo(tmp_path / "se.nemo")

    broken = dict(state)
    del broken["encoder.encoder.2.res.1.0.conv.weight"]
    write_nemo(tmp_path / "broken.nemo", config, broken)
    with pytest.raises(NemoImportError, match="encoder.encoder.2.res.1.0.conv.weight"):
        import_nemo(tmp_path / "broken.nemo")
