"""Importing NeMo ``.nemo`` and deepspeech.pytorch checkpoints: files built in tmp_path in exactly those
layouts with random weights; the converted zoo model must match a reference forward written here
directly from the source state dict with torch.nn.functional."""

from __future__ import annotations

import argparse
import enum
import io
import math
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
        dict(
            filters=16, repeat=1, kernel=[1], stride=[1], dilation=[1], residual=False, dropout=0.0, separable=separable
        ),
    ]


def nemo_config(blocks: list[dict], feat_in: int = 16) -> dict:
    return {
        "sample_rate": 16000,
        "labels": VOCAB,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": "${sample_rate}",
            "window_size": 0.02,
            "window_stride": 0.01,
            "window": "hann",
            "features": feat_in,
            "n_fft": 512,
            "normalize": "per_feature",
            "dither": 1e-5,
            "pad_to": 16,
            "frame_splicing": 1,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConvASREncoder",
            "feat_in": feat_in,
            "activation": "relu",
            "conv_mask": True,
            "jasper": blocks,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": blocks[-1]["filters"],
            "num_classes": len(VOCAB),
            "vocabulary": "${labels}",
        },
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


def nemo_reference(
    state: dict, blocks: list[dict], x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeMo's ConvASREncoder + ConvASRDecoder forward in eval mode, from the raw state dict:
    masked convs, BN, residual sums before ReLU, dense residual lists; blank last."""

    def mask(t, lens):
        return t * (torch.arange(t.shape[-1])[None, :] < lens[:, None])[:, None, :]

    def bn(t, p):
        return F.batch_norm(
            t,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            False,
            0.0,
            1e-3,
        )

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
    config = nemo_config(blocks)
    state = nemo_state_dict(config)
    if separable:  # older NeMo checkpoints have no BN num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
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


def nemo_logmel_reference(
    wave: torch.Tensor,
    sr: int = 16000,
    n_fft: int = 512,
    win: int = 320,
    hop: int = 160,
    n_mels: int = 64,
    preemph: float = 0.97,
) -> torch.Tensor:
    """NeMo's AudioToMelSpectrogramPreprocessor in eval mode for one utterance, with librosa's Slaney mel
    filterbank (``librosa.filters.mel(norm="slaney")``) written out from its formulas."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    def mel_to_hz(m):
        return m * f_sp if m < min_log_mel else min_log_hz * math.exp(logstep * (m - min_log_mel))

    top = hz_to_mel(sr / 2)
    mel_f = torch.tensor([mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)], dtype=torch.float64)
    fft_f = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    ramps = mel_f[:, None] - fft_f[None, :]
    fdiff = mel_f.diff()
    fb = torch.stack(
        [torch.clamp(torch.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]), min=0) for i in range(n_mels)]
    )
    fb = fb * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    x = torch.cat([wave[:1], wave[1:] - preemph * wave[:-1]]).double()
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=torch.hann_window(win, periodic=False, dtype=torch.float64),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    feats = torch.log(fb @ spec.abs().pow(2) + 2.0**-24)[:, : len(wave) // hop]  # NeMo >= 2.5: S // hop frames
    mean, std = feats.mean(1, keepdim=True), feats.std(1, keepdim=True)  # unbiased, as NeMo
    return ((feats - mean) / (std + 1e-5)).float()


def test_nemo_preprocessor_maps_onto_the_zoo_featurizer(tmp_path):
    config = nemo_config(nemo_blocks(False, True), feat_in=64)
    write_nemo(tmp_path / "m.nemo", config, nemo_state_dict(config))
    recognizer = import_nemo(tmp_path / "m.nemo")
    wave = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(3))
    feats, frames = recognizer.featurizer(wave[None], torch.tensor([16000]))
    reference = nemo_logmel_reference(wave)
    assert frames.tolist() == [reference.shape[1]] == [100]
    torch.testing.assert_close(feats[0, :, : frames[0]], reference, rtol=1e-4, atol=1e-4)


def test_nemo_full_size_configs_map_onto_the_zoo_presets():
    """NeMo's published jasper_10x5dr / quartznet_15x5 encoder configs give exactly the zoo presets."""
    from zoo.speech.nemo_import import jasper_config

    def block(filters, kernel, repeat=5, dropout=0.0, **kw):
        return dict(
            filters=filters,
            repeat=repeat,
            kernel=[kernel],
            stride=[kw.pop("stride", 1)],
            dilation=[kw.pop("dilation", 1)],
            dropout=dropout,
            **kw,
        )

    quartznet = [block(256, 33, 1, stride=2, residual=False, separable=True)]
    for filters, kernel in [(256, 33), (256, 39), (512, 51), (512, 63), (512, 75)]:
        quartznet += [block(filters, kernel, residual=True, separable=True) for _ in range(3)]
    quartznet += [block(512, 87, 1, dilation=2, residual=False, separable=True), block(1024, 1, 1, residual=False)]
    jasper = [block(256, 11, 1, 0.2, stride=2, residual=False)]
    for filters, kernel, dropout in [(256, 11, 0.2), (384, 13, 0.2), (512, 17, 0.2), (640, 21, 0.3), (768, 25, 0.3)]:
        jasper += [block(filters, kernel, 5, dropout, residual=True, residual_dense=True) for _ in range(2)]
    jasper += [block(896, 29, 1, 0.4, dilation=2, residual=False), block(1024, 1, 1, 0.4, residual=False)]
    for name, blocks in (("quartznet-15x5", quartznet), ("jasper-10x5dr", jasper)):
        encoder = {"feat_in": 64, "activation": "relu", "conv_mask": True, "jasper": blocks}
        assert jasper_config(encoder, 29)[0] == zoo.registry.get_spec(name).config, name


def test_nemo_errors(tmp_path):
    config = nemo_config(nemo_blocks(False, True))
    state = nemo_state_dict(config)
    no_config = tmp_path / "noconfig.nemo"
    write_nemo(no_config, None, state)
    with pytest.raises(NemoImportError, match="noconfig.nemo.*model_config.yaml"):
        import_nemo(no_config)

    conformer = {
        **config,
        "encoder": {**config["encoder"], "_target_": "nemo.collections.asr.modules.ConformerEncoder"},
    }
    write_nemo(tmp_path / "conformer.nemo", conformer, state)
    with pytest.raises(NemoImportError, match="ConformerEncoder"):
        import_nemo(tmp_path / "conformer.nemo")

    german = {
        **config,
        "labels": [*VOCAB, "ß", "<unk>"],
        "decoder": {**config["decoder"], "vocabulary": [*VOCAB, "<unk>"]},
    }
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


# --------------------------------------------------------------------------- deepspeech.pytorch
DS_LABELS = ["_", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", " "]
SPECT = {"sample_rate": 1600, "window_size": 0.02, "window_stride": 0.01, "window": "hamming"}  # 17 bins


def deepspeech_checkpoint(
    rnn: str, bidirectional: bool, hidden: int = 12, layers: int = 2, context: int = 4, seed: int = 0
) -> dict:
    """A Lightning-style deepspeech.pytorch checkpoint with random weights in its key layout."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for i, (c_in, c_out, k) in enumerate([(1, 32, (41, 11)), (32, 32, (21, 11))]):
        state[f"conv.seq_module.{3 * i}.weight"] = (
            torch.randn(c_out, c_in, *k, generator=gen) / (c_in * k[0] * k[1]) ** 0.5
        )
        state[f"conv.seq_module.{3 * i}.bias"] = 0.2 * torch.randn(c_out, generator=gen)
        random_bn(state, f"conv.seq_module.{3 * i + 1}", c_out, gen)
    gates = {"lstm": 4, "gru": 3}[rnn] * hidden
    width = 32 * 5  # 17 bins -> 9 -> 5
    for layer in range(layers):
        c_in = width if layer == 0 else hidden
        if layer > 0:
            random_bn(state, f"rnns.{layer}.batch_norm.module", c_in, gen)
        for suffix in ["_l0", "_l0_reverse"] if bidirectional else ["_l0"]:
            p = f"rnns.{layer}.rnn"
            state[f"{p}.weight_ih{suffix}"] = torch.randn(gates, c_in, generator=gen) / c_in**0.5
            state[f"{p}.weight_hh{suffix}"] = torch.randn(gates, hidden, generator=gen) / hidden**0.5
            state[f"{p}.bias_ih{suffix}"] = 0.2 * torch.randn(gates, generator=gen)
            state[f"{p}.bias_hh{suffix}"] = 0.2 * torch.randn(gates, generator=gen)
    if not bidirectional:
        state["lookahead.0.conv.weight"] = torch.randn(hidden, 1, context, generator=gen) / context**0.5
    random_bn(state, "fc.0.module.0", hidden, gen)
    state["fc.0.module.1.weight"] = torch.randn(len(DS_LABELS), hidden, generator=gen) / hidden**0.5
    model_cfg = {"rnn_type": rnn, "hidden_size": hidden, "hidden_layers": layers}
    if not bidirectional:
        model_cfg["lookahead_context"] = context
    return {
        "epoch": 3,
        "global_step": 100,
        "pytorch-lightning_version": "1.1.0",
        "state_dict": state,
        "hyper_parameters": {"labels": DS_LABELS, "model_cfg": model_cfg, "spect_cfg": SPECT, "precision": 32},
    }


def deepspeech_reference(ckpt: dict, rnn: str, bidirectional: bool, spect: torch.Tensor, lengths: torch.Tensor):
    """deepspeech.pytorch's DeepSpeech.forward (eval mode, logits before the softmax) from the raw state dict."""
    state = ckpt["state_dict"]

    def bn(x, p):
        return F.batch_norm(
            x,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            False,
            0.0,
            1e-5,
        )

    out_lengths = lengths
    for (kf, kt), (sf, st), (pf, pt) in [((41, 11), (2, 2), (20, 5)), ((21, 11), (2, 1), (10, 5))]:
        out_lengths = (out_lengths + 2 * pt - (kt - 1) - 1) // st + 1
    x = spect  # (N, 1, D, T)
    for i, (stride, pad) in enumerate([((2, 2), (20, 5)), ((2, 1), (10, 5))]):
        x = F.conv2d(x, state[f"conv.seq_module.{3 * i}.weight"], state[f"conv.seq_module.{3 * i}.bias"], stride, pad)
        for module in (lambda t: t, lambda t: bn(t, f"conv.seq_module.{3 * i + 1}"), lambda t: F.hardtanh(t, 0, 20)):
            x = module(x)
            x = x * (torch.arange(x.shape[3])[None, :] < out_lengths[:, None])[:, None, None, :]  # MaskConv
    n, c, d, t = x.shape
    x = x.reshape(n, c * d, t).permute(2, 0, 1)  # (T, N, H)
    hidden = state["rnns.0.rnn.weight_hh_l0"].shape[1]
    layer = 0
    while f"rnns.{layer}.rnn.weight_ih_l0" in state:
        if layer > 0:
            x = bn(x.reshape(-1, x.shape[-1]), f"rnns.{layer}.batch_norm.module").reshape(x.shape)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[rnn]
        module = cls(x.shape[-1], hidden, bidirectional=bidirectional)
        module.load_state_dict(
            {k.removeprefix(f"rnns.{layer}.rnn."): v for k, v in state.items() if k.startswith(f"rnns.{layer}.rnn.")}
        )
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, out_lengths, enforce_sorted=False)
        x, _ = torch.nn.utils.rnn.pad_packed_sequence(module(packed)[0], total_length=t)
        if bidirectional:
            x = x.view(t, n, 2, hidden).sum(2)
        layer += 1
    if not bidirectional:
        w = state["lookahead.0.conv.weight"]
        h = F.conv1d(F.pad(x.permute(1, 2, 0), (0, w.shape[-1] - 1)), w, groups=hidden)
        x = F.hardtanh(h, 0, 20).permute(2, 0, 1)
    x = bn(x.reshape(-1, hidden), "fc.0.module.0") @ state["fc.0.module.1.weight"].T
    return x.reshape(t, n, -1).transpose(0, 1), out_lengths


@pytest.mark.parametrize("rnn,bidirectional", [("lstm", True), ("gru", False)], ids=["bilstm", "gru-lookahead"])
def test_deepspeech_import_matches_reference_forward(tmp_path, rnn, bidirectional):
    from zoo.speech.deepspeech_pytorch_import import import_deepspeech

    ckpt = deepspeech_checkpoint(rnn, bidirectional)
    path = tmp_path / "deepspeech.ckpt"
    torch.save(ckpt, path)
    recognizer = import_deepspeech(path)
    config = recognizer.encoder.config
    assert (config.rnn_type, config.bidirectional, config.sequence_batch_norm) == (rnn, bidirectional, False)
    assert config.lookahead == (0 if bidirectional else 3)
    assert recognizer.tokenizer.labels[1:] == [c.lower() for c in DS_LABELS[1:]]
    assert recognizer.featurizer.num_features == config.in_features == 17

    torch.manual_seed(2)
    lengths = torch.tensor([40, 31, 18])
    spect = torch.randn(3, 1, 17, 40) * (torch.arange(40)[None, :] < lengths[:, None])[:, None, None, :]
    with torch.no_grad():
        logits, out_lengths = recognizer.encoder(spect[:, 0], lengths)
        ref, ref_lengths = deepspeech_reference(ckpt, rnn, bidirectional, spect, lengths)
    assert out_lengths.tolist() == ref_lengths.tolist() == [20, 16, 9]
    for b, n in enumerate(out_lengths.tolist()):  # blank "_" is already label 0
        torch.testing.assert_close(logits[b, :n], ref[b, :n], rtol=1e-5, atol=1e-5)


def test_deepspeech_command_and_errors(tmp_path):
    from zoo.speech.deepspeech_pytorch_import import DeepSpeechImportError, import_deepspeech

    ckpt = deepspeech_checkpoint("lstm", True, layers=1)
    path = tmp_path / "ds.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "converted"
    assert zoo_main(["import-deepspeech", str(path), str(out)]) == 0
    reloaded, direct = zoo.load(out), zoo.load(path)  # the folder, and the .ckpt converted on the fly
    x, lengths = torch.randn(1, 17, 25), torch.tensor([25])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encoder(x, lengths)[0], direct.encoder(x, lengths)[0])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.ones(2)}}, foreign)
    with pytest.raises(zoo.hub.CheckpointError, match="does not name its LightningModule"):
        zoo.load(foreign)  # neither zoo's nor deepspeech.pytorch's: the zoo error stands
    assert zoo_main(["import-deepspeech", str(tmp_path / "missing.ckpt"), str(tmp_path / "o2")]) == 1

    bad_labels = deepspeech_checkpoint("lstm", True, layers=1)
    bad_labels["hyper_parameters"]["labels"] = [*DS_LABELS[:-1], "Ä", " "]
    torch.save(bad_labels, tmp_path / "labels.ckpt")
    with pytest.raises(DeepSpeechImportError, match="labels.ckpt.*'Ä'"):
        import_deepspeech(tmp_path / "labels.ckpt")

    other = deepspeech_checkpoint("lstm", True, layers=1)
    other["state_dict"]["conv.seq_module.0.weight"] = torch.randn(32, 1, 3, 3)
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(DeepSpeechImportError, match="unknown architecture"):
        import_deepspeech(tmp_path / "other.ckpt")

    torch.save(b"not a checkpoint", tmp_path / "bytes.ckpt")
    with pytest.raises(DeepSpeechImportError, match="bytes.ckpt.*no state_dict"):
        import_deepspeech(tmp_path / "bytes.ckpt")


class FakeNode:
    """Pickles like an OmegaConf value node (state ``{"_val": ...}``)."""

    def __init__(self, value):
        self._val, self._metadata = value, argparse.Namespace(optional=True)


class FakeDictConfig:
    """Pickles like an OmegaConf DictConfig (state with ``_content`` of nodes and ``_metadata``)."""

    def __init__(self, content: dict):
        self._content = {k: v if isinstance(v, FakeDictConfig) else FakeNode(v) for k, v in content.items()}
        self._metadata, self._parent = argparse.Namespace(object_type=FakeDictConfig), None


class RNNType(enum.Enum):  # as deepspeech.pytorch's enum: members hold the torch.nn classes
    lstm = torch.nn.LSTM
    gru = torch.nn.GRU


def test_deepspeech_checkpoint_with_pickled_config_objects(tmp_path):
    """Pickled classes other than OmegaConf/deepspeech.pytorch configuration (here look-alikes defined in this
    module) are foreign: refused without trust_pickle by a one-line error naming them; with it, their
    ``_content``/``_val`` state and enum values are read. (Real checkpoints of the peer's training, which load
    safely: tests/test_import_deepspeech_fixtures.py.)"""
    from zoo.speech.deepspeech_pytorch_import import DeepSpeechImportError, import_deepspeech

    ckpt = deepspeech_checkpoint("gru", False, layers=2)
    plain = import_deepspeech_from(ckpt, tmp_path / "plain.ckpt", import_deepspeech)
    hp = ckpt["hyper_parameters"]
    ckpt["hyper_parameters"] = dict(  # Lightning saves dict(hparams) holding DictConfigs
        labels=hp["labels"],
        spect_cfg=FakeDictConfig(hp["spect_cfg"]),
        precision=32,
        model_cfg=FakeDictConfig({**hp["model_cfg"], "rnn_type": RNNType.gru}),
        optim_cfg=FakeDictConfig({"learning_rate": 3e-4, "betas": [0.9, 0.999]}),
    )
    with pytest.raises(DeepSpeechImportError, match=r"objects.ckpt: pickles objects other than .*FakeDictConfig"):
        import_deepspeech_from(ckpt, tmp_path / "objects.ckpt", import_deepspeech)
    recognizer = import_deepspeech(tmp_path / "objects.ckpt", trust_pickle=True)
    assert recognizer.encoder.config == plain.encoder.config and recognizer.featurizer.config.sample_rate == 1600

    ckpt["hyper_parameters"]["model_cfg"] = FakeDictConfig({**hp["model_cfg"], "hidden_size": 99})
    torch.save(ckpt, tmp_path / "wrong.ckpt")
    with pytest.raises(DeepSpeechImportError, match="model_cfg.hidden_size = 99"):  # values read from the objects
        import_deepspeech(tmp_path / "wrong.ckpt", trust_pickle=True)


def import_deepspeech_from(ckpt, path, importer):
    torch.save(ckpt, path)
    return importer(path)
