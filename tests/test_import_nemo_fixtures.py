"""``zoo import-nemo`` from raw audio against NeMo's own outputs.

The fixtures in ``tests/fixtures/nemo/`` were made by ``make_fixtures.py`` with NVIDIA NeMo's classes
(random-weight QuartzNet-like and Jasper-DR-like ``EncDecCTCModel``s saved with ``model.save_to``, one
per preprocessor/encoder option set) and hold NeMo's features, lengths, log-probs and greedy
transcripts for three WAVs, each alone, in eval mode: NeMo 3.0 (zero-padded STFT, ``S // hop``
frames) and NeMo 2.4.1 (reflection padding, ``1 + S // hop`` frames), also for the 3.0 files.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import zoo
from zoo.cli import main as zoo_main
from zoo.speech.audio import load_audio
from zoo.speech.features import Featurizer
from zoo.speech.nemo_import import NemoImportError, featurizer_config, import_nemo, nemo_conventions

FIXTURES = Path(__file__).parent / "fixtures" / "nemo"
NEW, OLD = FIXTURES / "nemo-3.0.0", FIXTURES / "nemo-2.4.1"
STEMS = ("hello", "seven", "chirp")
NEW_VARIANTS = ("quartznet", "jasper_dr", "samples_allfeat_max", "nonorm_dense_carried_max")
OLD_VARIANTS = ("quartznet", "jasper_dr", "samples_allfeat_max")
# Measured max 6.2e-5 on one Xeon, 2.0e-4 on another (no AMX): float32 filterbank (torchaudio vs librosa in float64)
# and STFT rounding, largest in the chirp's lowest mel bin, far below the frame's energy, where the log and the
# per-feature normalisation magnify it. A wrong window, filterbank, log guard or normalisation moves features by
# 1e-2 or more (the biased vs unbiased std alone by ~1e-2).
FEATURE_ATOL = 3e-4
LOG_PROB_ATOL, LOG_PROB_RTOL = 5e-4, 1e-5  # measured max 6.1e-4 on log-probs down to -155 (2.2e-4 down to -33)


def reference(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """{stem: {features, feature_length, log_probs, encoded_length, transcript}}, metadata."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as handle:
        for key in handle.keys():
            stem, name = key.split(".", 1)
            out.setdefault(stem, {})[name] = handle.get_tensor(key)
        return out, handle.metadata()


def text(tensor: torch.Tensor) -> str:
    return bytes(tensor.tolist()).decode()


def greedy(recognizer, log_probs: torch.Tensor) -> str:
    """CTC best path of (T, V) log-probs in the zoo's label order: collapse repeats, drop blanks."""
    ids = torch.unique_consecutive(log_probs.argmax(-1)).tolist()
    return "".join(recognizer.tokenizer.labels[i] for i in ids if i != recognizer.tokenizer.blank)


def zoo_outputs(recognizer, stems=STEMS) -> dict[str, tuple[torch.Tensor, int, torch.Tensor, int]]:
    """The WAVs as one zero-padded batch: {stem: (features (F, T), T, NeMo-order log-probs (T', V), T')}."""
    waves = [load_audio(FIXTURES / "wavs" / f"{s}.wav") for s in stems]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        feats, frames = recognizer.featurizer(batch, lengths)
        logits, out_lengths = recognizer.encoder(feats, frames)
    log_probs = logits.log_softmax(-1)
    log_probs = torch.cat([log_probs[..., 1:], log_probs[..., :1]], dim=-1)  # zoo blank 0 -> NeMo's last
    return {
        s: (feats[i, :, : frames[i]], int(frames[i]), log_probs[i, : out_lengths[i]], int(out_lengths[i]))
        for i, s in enumerate(stems)
    }


def assert_matches_nemo(recognizer, expected: dict[str, dict[str, torch.Tensor]]) -> None:
    paths = []
    for stem, (feats, frames, log_probs, out_frames) in zoo_outputs(recognizer).items():
        ref = expected[stem]
        assert frames == int(ref["feature_length"]), stem
        assert out_frames == int(ref["encoded_length"]), stem
        torch.testing.assert_close(feats, ref["features"], atol=FEATURE_ATOL, rtol=0, msg=f"{stem} features")
        torch.testing.assert_close(
            log_probs, ref["log_probs"], atol=LOG_PROB_ATOL, rtol=LOG_PROB_RTOL, msg=f"{stem} log-probs"
        )
        zoo_order = torch.cat([log_probs[:, -1:], log_probs[:, :-1]], dim=-1)
        path = greedy(recognizer, zoo_order)
        assert path == text(ref["greedy_path"]), stem  # NeMo's best path, spaces as they are
        assert path.split() == text(ref["transcript"]).split(), stem  # NeMo's model.transcribe (stripped)
        paths.append(path)
    assert len(set("".join(paths))) >= 5, "fixtures whose transcripts have characters to compare"


@pytest.mark.parametrize("variant", NEW_VARIANTS)
def test_nemo_3_from_raw_audio(variant):
    expected, meta = reference(NEW / f"{variant}.safetensors")
    assert meta["nemo_version"] == "3.0.0"
    recognizer = import_nemo(NEW / f"{variant}.nemo")
    assert (recognizer.featurizer.config.stft_pad, recognizer.featurizer.config.frame_count) == ("constant", "nemo")
    assert_matches_nemo(recognizer, expected)
    # NeMo >= 2.5 counts S // hop frames: one fewer than a centred STFT's 1 + S // hop
    assert all(int(r["feature_length"]) == int(r["samples"]) // 160 for r in expected.values())


@pytest.mark.parametrize("variant", OLD_VARIANTS)
def test_nemo_2_4_from_raw_audio(variant):
    """Files saved by NeMo 2.4.1 record it: reflection padding, 1 + S // hop frames."""
    expected, meta = reference(OLD / f"{variant}.safetensors")
    assert meta["nemo_version"] == "2.4.1"
    recognizer = import_nemo(OLD / f"{variant}.nemo")
    assert (recognizer.featurizer.config.stft_pad, recognizer.featurizer.config.frame_count) == ("reflect", "centred")
    assert_matches_nemo(recognizer, expected)
    assert all(int(r["feature_length"]) == 1 + int(r["samples"]) // 160 for r in expected.values())


@pytest.mark.parametrize("variant", OLD_VARIANTS)
def test_nemo_version_override(variant):
    """The same NeMo 3.0 file run by NeMo 2.4.1 (its outputs recorded by make_fixtures.py under 2.4.1):
    ``nemo_version="2.4.1"`` reproduces them; the file's own 3.0 convention does not."""
    expected, meta = reference(NEW / f"{variant}.nemo-2.4.1.safetensors")
    assert meta["nemo_version"] == "2.4.1"
    assert_matches_nemo(import_nemo(NEW / f"{variant}.nemo", nemo_version="2.4.1"), expected)
    mismatched = zoo_outputs(import_nemo(NEW / f"{variant}.nemo"))
    assert all(mismatched[s][1] == int(expected[s]["feature_length"]) - 1 for s in STEMS)


def test_old_convention_is_needed_for_old_files():
    """NeMo 2.4.1's features need both its frame count and its reflection padding: the 3.0 convention
    drops a frame (shifting the normalisation statistics), zero padding changes the edge frames."""
    expected, _ = reference(OLD / "quartznet.safetensors")
    ref = expected["hello"]["features"]
    feats, frames, _, _ = zoo_outputs(import_nemo(OLD / "quartznet.nemo", nemo_version="3.0.0"))["hello"]
    assert frames == ref.shape[1] - 1
    assert (feats - ref[:, :frames]).abs().max() > 100 * FEATURE_ATOL
    recognizer = import_nemo(OLD / "quartznet.nemo")
    recognizer.featurizer = Featurizer(dataclasses.replace(recognizer.featurizer.config, stft_pad="constant")).eval()
    feats, frames, _, _ = zoo_outputs(recognizer)["chirp"]  # a signal from its first to its last sample
    error = (feats - expected["chirp"]["features"]).abs().amax(dim=0)
    assert error[0] > 1 and error[-1] > 1  # the first and last frames see the padding (measured 2.3, 2.6)


def test_nemo_conventions_by_version():
    assert nemo_conventions(None) == nemo_conventions("2.5.0") == nemo_conventions("3.0.0rc1") == ("constant", "nemo")
    old = ("reflect", "centred")
    assert nemo_conventions("1.0.0") == nemo_conventions("2.4.1") == nemo_conventions("v1.23.0") == old
    with pytest.raises(NemoImportError, match="'latest'"):
        nemo_conventions("latest")


def test_window_in_samples():
    """``n_window_size``/``n_window_stride`` (samples) with ``window_size: null``; NeMo's n_fft = 2^ceil(log2(win))."""
    config = featurizer_config(
        {"window_size": None, "window_stride": None, "n_window_size": 400, "n_window_stride": 160, "features": 64}
    )
    assert (config.win_length, config.hop_length, config.n_fft) == (400, 160, 512)
    config = featurizer_config({"window_size": 0.025, "window_stride": 0.01, "sample_rate": 8000})
    assert (config.win_length, config.hop_length, config.n_fft) == (200, 80, 256)
    with pytest.raises(NemoImportError, match="both window_size and n_window_size"):
        featurizer_config({"window_size": 0.02, "n_window_size": 320})
    with pytest.raises(NemoImportError, match="window_size = None / n_window_size = None"):
        featurizer_config({"window_size": None})


def rewrite(source: Path, target: Path, edit) -> Path:
    """Copy a .nemo archive with ``edit(config)`` applied to its model_config.yaml."""
    with tarfile.open(source, "r:*") as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else None) for m in archive.getmembers()]
    with tarfile.open(target, "w:") as archive:
        for member, data in members:
            if member.name.endswith("model_config.yaml"):
                config = yaml.safe_load(data)
                edit(config)
                data = yaml.safe_dump(config).encode()
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return target


def set_pre(**values):
    return lambda config: config["preprocessor"].update(values)


def set_block(index, **values):
    return lambda config: config["encoder"]["jasper"][index].update(values)


REFUSED = {
    "window none": (set_pre(window="none"), "preprocessor.window = 'none'"),
    "exact_pad": (set_pre(exact_pad=True), "preprocessor.exact_pad = True"),
    "frame_splicing": (set_pre(frame_splicing=3), "preprocessor.frame_splicing = 3"),
    "log off": (set_pre(log=False), "preprocessor.log = False"),
    "use_torchaudio": (set_pre(use_torchaudio=True), "preprocessor.use_torchaudio = True"),
    "fixed normalisation": (set_pre(normalize={"fixed_mean": [0.0], "fixed_std": [1.0]}), "fixed_mean/fixed_std"),
    "mel_norm 2": (set_pre(mel_norm=2), "preprocessor.mel_norm = 2"),
    "log guard type": (set_pre(log_zero_guard_type="max"), "preprocessor.log_zero_guard_type = 'max'"),
    "log guard value": (set_pre(log_zero_guard_value="huge"), "log_zero_guard_value = 'huge'"),
    "unknown option": (set_pre(spectral_gating=True), "'spectral_gating'"),
    "both windows": (set_pre(n_window_size=320), "both window_size and n_window_size"),
    "unknown encoder option": (lambda c: c["encoder"].update(se_everywhere=True), "'se_everywhere'"),
    "unknown residual mode": (set_block(2, residual_mode="concat"), "residual_mode 'concat' (from encoder.jasper[2]"),
    # a block-level max on the last residual block only: blocks 1-2 add, block 3 max (NeMo allows the mix)
    "mixed residual modes": (
        set_block(3, residual_mode="max"),
        "mixes residual modes: 'add' in encoder.jasper[1] (from encoder.residual_mode), "
        "'max' in encoder.jasper[3] (from encoder.jasper[3].residual_mode)",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_options_are_refused_by_name(tmp_path, case):
    edit, message = REFUSED[case]
    path = rewrite(NEW / "quartznet.nemo", tmp_path / "edited.nemo", edit)
    with pytest.raises(NemoImportError) as info:
        import_nemo(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_residual_mode_carries_on_like_nemo(tmp_path):
    """NeMo's ConvASREncoder keeps a block's residual_mode for the later blocks: max on block 1 makes
    blocks 1-3 max (the nonorm_dense_carried_max fixture checks the numbers); an explicit 'add'
    on block 2 stops it there, which the zoo's one mode per Jasper cannot express."""
    recognizer = import_nemo(NEW / "nonorm_dense_carried_max.nemo")
    assert recognizer.encoder.config.residual_mode == "max" and recognizer.encoder.config.residual == "dense"
    path = rewrite(NEW / "nonorm_dense_carried_max.nemo", tmp_path / "e.nemo", set_block(2, residual_mode="add"))
    with pytest.raises(NemoImportError, match=r"'add' in encoder.jasper\[2\] \(from encoder.jasper\[2\]"):
        import_nemo(path)
    assert import_nemo(NEW / "samples_allfeat_max.nemo").encoder.config.residual_mode == "max"  # encoder level
    assert import_nemo(NEW / "quartznet.nemo").encoder.config.residual_mode == "add"


def test_import_command_with_version_override(tmp_path, capsys):
    expected, _ = reference(NEW / "jasper_dr.nemo-2.4.1.safetensors")
    out = tmp_path / "converted"
    assert zoo_main(["import-nemo", str(NEW / "jasper_dr.nemo"), str(out), "--nemo-version", "2.4.1"]) == 0
    assert "NeMo 2.4.1 featurizer" in capsys.readouterr().out
    recognizer = zoo.load(out)
    assert_matches_nemo(recognizer, expected)
    transcript = recognizer.transcribe(FIXTURES / "wavs" / "seven.wav", decoder="greedy")[0].text
    assert transcript == " ".join(text(expected["seven"]["transcript"]).split())
    bad = rewrite(NEW / "quartznet.nemo", tmp_path / "bad.nemo", set_pre(mel_norm="htk"))
    assert zoo_main(["import-nemo", str(bad), str(tmp_path / "o2")]) == 1
    assert "preprocessor.mel_norm = 'htk'" in capsys.readouterr().out
