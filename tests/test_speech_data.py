"""Speech data pipeline: manifests and their bad input, the bucketing sampler, SortaGrad, the DataModule."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile
import torch

from zoo.callbacks.sortagrad import SortaGrad
from zoo.datamodules.bucketing import BucketingBatchSampler
from zoo.datamodules.manifest import ManifestError, read_manifests, write_manifest
from zoo.datamodules.speech import SpeechDataModule, ctc_min_frames
from zoo.speech.augment import AugmentationConfig
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

RATE = 16000

# ---------------------------------------------------------------- tiny corpus helpers


def _tone(path: Path, seconds: float, freq: float = 300.0, rate: int = RATE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))
    soundfile.write(path, x.astype(np.float32), rate)
    return path


def _corpus(folder: Path, specs: list[tuple[float, str]], name: str = "manifest.json", seed: int = 0) -> Path:
    """Write WAVs (relative paths in the manifest) and a manifest for (duration, text) pairs."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (seconds, text) in enumerate(specs):
        _tone(folder / "audio" / f"{name}-{i}.wav", seconds, 200 + 40 * i, seed=seed + i)
        entries.append({"audio_filepath": f"audio/{name}-{i}.wav", "duration": seconds, "text": text})
    return write_manifest(folder / name, entries)


# ---------------------------------------------------------------- manifests


def test_manifest_relative_paths_and_combination(tmp_path):
    a = _corpus(tmp_path / "a", [(0.3, "Hello there"), (0.5, "Room 42")])
    b = _corpus(tmp_path / "b", [(0.4, "third one")])
    data = read_manifests([a, b], CharTokenizer())
    assert [u.text for u in data.utterances] == ["hello there", "room forty two", "third one"]
    assert data.utterances[0].audio_filepath == str(tmp_path / "a" / "audio" / "manifest.json-0.wav")
    assert data.utterances[2].manifest == str(b) and data.utterances[2].line == 1
    assert data.utterances[1].tokens == tuple(CharTokenizer().encode("room forty two"))


BAD_LINES = {
    "bad JSON": '{"audio_filepath": "audio/manifest.json-0.wav", "duration": 0.3, "text": "x"',
    "missing field": '{"audio_filepath": "audio/manifest.json-0.wav", "text": "hi"}',
    "negative duration": '{"audio_filepath": "audio/manifest.json-0.wav", "duration": -1, "text": "hi"}',
    "duration not a number": '{"audio_filepath": "audio/manifest.json-0.wav", "duration": "long", "text": "hi"}',
    "empty transcript": '{"audio_filepath": "audio/manifest.json-0.wav", "duration": 0.3, "text": " !? "}',
    "unknown character": '{"audio_filepath": "audio/manifest.json-0.wav", "duration": 0.3, "text": "naïve ж"}',
    "audio file not found": '{"audio_filepath": "audio/nothing.wav", "duration": 0.3, "text": "hi"}',
    "unreadable audio": '{"audio_filepath": "audio/corrupt.wav", "duration": 0.3, "text": "hi"}',
    "holds no samples": '{"audio_filepath": "audio/empty.wav", "duration": 0.3, "text": "hi"}',
}
EXPECTED = {
    "bad JSON": "bad JSON",
    "missing field": "missing field\\(s\\) duration",
    "negative duration": "negative duration -1",
    "duration not a number": "duration must be a number of seconds, got 'long'",
    "empty transcript": "empty transcript",
    "unknown character": "unknown character 'ж'",
    "audio file not found": "audio file not found: .*nothing.wav",
    "unreadable audio": "unreadable audio .*corrupt.wav",
    "holds no samples": "audio file holds no samples: .*empty.wav",
}


def _bad_corpus(tmp_path: Path) -> Path:
    manifest = _corpus(tmp_path, [(0.3, "good one"), (0.3, "good two")])
    (tmp_path / "audio" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt nonsense" * 4)
    soundfile.write(tmp_path / "audio" / "empty.wav", np.zeros(0, np.float32), RATE)
    return manifest


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_every_bad_manifest_line_names_manifest_and_line(tmp_path, case):
    manifest = _bad_corpus(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], BAD_LINES[case], lines[1]]) + "\n")
    with pytest.raises(ManifestError, match=f"^{manifest}:2: {EXPECTED[case]}"):
        read_manifests(manifest, CharTokenizer())


def test_skip_bad_counts_and_reports(tmp_path, caplog):
    manifest = _bad_corpus(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], *BAD_LINES.values(), lines[1]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="zoo.datamodules.manifest"):
        data = read_manifests(manifest, CharTokenizer(), skip_bad=True)
    assert [u.text for u in data.utterances] == ["good one", "good two"]
    assert len(data.skipped) == len(BAD_LINES)
    assert [e.line for e in data.skipped] == list(range(2, 2 + len(BAD_LINES)))
    assert f"skipped {len(BAD_LINES)} bad manifest line(s)" in caplog.text
    # "drop" tokenizer policy keeps the line with the unknown character
    dropped = read_manifests(manifest, CharTokenizer(TokenizerConfig(unknown="drop")), skip_bad=True)
    assert "naive" in [u.text for u in dropped.utterances]


def test_corrupt_audio_at_load_time_names_manifest_line(tmp_path):
    manifest = _corpus(tmp_path, [(0.3, "good one"), (0.3, "good two"), (0.3, "good three")])
    (tmp_path / "audio" / "manifest.json-1.wav").write_bytes(b"RIFF" + b"\x00" * 64)
    dm = SpeechDataModule(val_manifests=[str(manifest)], num_workers=0, audio_check="exists")
    with pytest.raises(ManifestError, match=f"{manifest}:2: .*manifest.json-1.wav: cannot decode"):
        list(dm.val_dataloader())
    dm = SpeechDataModule(
        val_manifests=[str(manifest)], num_workers=0, audio_check="exists", skip_bad=True, batch_size=4
    )
    loader = dm.val_dataloader()
    assert [b["texts"] for b in loader] == [["good one", "good three"]]
    assert len(loader.skipped) == 1 and f"{manifest}:2:" in loader.skipped[0]


# ---------------------------------------------------------------- bucketing sampler


def _lengths(n: int = 103, seed: int = 0) -> list[int]:
    return torch.randint(50, 600, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _rank_batches(lengths, world, **kwargs):
    per_rank = []
    for rank in range(world):
        sampler = BucketingBatchSampler(lengths, num_replicas=world, rank=rank, **kwargs)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        per_rank.append(batches)
    return per_rank


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("budget", [None, 2000])
def test_training_sampler_invariants(world, budget):
    lengths = _lengths()
    kwargs = dict(batch_size=8, max_batch_frames=budget, shuffle=True, pad_replicas=True, seed=5)
    per_rank = _rank_batches(lengths, world, **kwargs)
    assert len({len(b) for b in per_rank}) == 1  # every rank has the same number of batches
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert set(flat) == set(range(len(lengths)))  # complete
    extra = len(flat) - len(lengths)  # repeats only to pad short ranks, never more than W-1 batches
    assert 0 <= extra <= (world - 1) * max(len(b) for r in per_rank for b in r)
    if world == 1:
        assert extra == 0
    for batches in per_rank:
        for batch in batches:
            if budget is None:
                assert len(batch) <= 8
            elif len(batch) > 1:
                assert len(batch) * max(lengths[i] for i in batch) <= budget
    assert per_rank == _rank_batches(lengths, world, **kwargs)  # deterministic from (seed, epoch)
    other_epoch = BucketingBatchSampler(lengths, num_replicas=world, rank=0, **kwargs)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != per_rank[0]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [103, 4, 7])
def test_evaluation_sampler_uses_every_utterance_exactly_once(world, n):
    lengths = _lengths(n)
    per_rank = _rank_batches(lengths, world, batch_size=8, shuffle=False, pad_replicas=False)
    assert len({len(b) for b in per_rank}) == 1
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))  # disjoint and complete
    assert all(len(batch) >= 1 for batches in per_rank for batch in batches)


def test_evaluation_sampler_needs_one_utterance_per_rank():
    with pytest.raises(ValueError, match="3 ranks"):
        list(BucketingBatchSampler([10, 20], num_replicas=3, rank=0, shuffle=False, pad_replicas=False))


def test_bucketing_pads_less_than_random_batches():
    lengths = _lengths(2000, seed=3)
    sampler = BucketingBatchSampler(lengths, batch_size=16, seed=1)

    def padding(batches):
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / padded

    random_batches = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).split(16)
    assert padding(list(sampler)) < 0.05 < padding([b.tolist() for b in random_batches])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sorted_mode_increasing_length_on_every_rank_then_shuffled(world):
    lengths = _lengths()
    for rank in range(world):
        sampler = BucketingBatchSampler(lengths, batch_size=4, sorted_epochs=1, num_replicas=world, rank=rank)
        maxima = [max(lengths[i] for i in b) for b in sampler]
        assert maxima == sorted(maxima)
        sampler.set_epoch(1)
        maxima = [max(lengths[i] for i in b) for b in sampler]
        assert maxima != sorted(maxima)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_neither_repeats_nor_skips(world):
    lengths = _lengths()
    for rank in range(world):
        full = BucketingBatchSampler(lengths, batch_size=5, num_replicas=world, rank=rank, seed=3)
        full.set_epoch(2)
        expected = list(full)
        first = BucketingBatchSampler(lengths, batch_size=5, num_replicas=world, rank=rank, seed=3)
        first.set_epoch(2)
        iterator = iter(first)
        seen = [next(iterator) for _ in range(4)]
        state = first.state_dict()
        assert state == {"epoch": 2, "seed": 3, "batches_done": 4}
        resumed = BucketingBatchSampler(lengths, batch_size=5, num_replicas=world, rank=rank, seed=0)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # Lightning calls set_epoch with the same epoch after restoring
        assert seen + list(resumed) == expected
        resumed.set_epoch(3)
        assert len(list(resumed)) == len(expected)  # the next epoch is whole again
    done = BucketingBatchSampler(lengths, batch_size=5)
    done.load_state_dict({"epoch": 0, "seed": 0, "batches_done": len(done)})
    assert done.epoch == 1 and len(list(done)) == len(done)


# ---------------------------------------------------------------- DataModule end to end

SPECS = [
    (0.35, "turn on the light"),
    (0.6, "play some music"),
    (0.45, "what time is it"),
    (0.8, "set an alarm for 7"),
    (0.5, "call mom"),
    (0.12, "this transcript is far too long for such a short clip"),
]


def test_datamodule_end_to_end(tmp_path):
    train = _corpus(tmp_path, SPECS, "train.json")
    val = _corpus(tmp_path, SPECS, "val.json", seed=10)
    dm = SpeechDataModule(
        train_manifests=[str(train)],
        val_manifests=[str(val)],
        time_reduction=2,
        batch_size=2,
        num_workers=0,
        augmentation=AugmentationConfig(enabled=False),
    )
    dm.setup("fit")
    assert dm.tokenizer.vocab_size == 29 and dm.time_reduction == 2
    # training drops the infeasible clip (CTC rule); validation keeps every utterance
    assert len(dm.data["train"]) == 5 and len(dm.data["val"]) == 6
    assert all(dm.output_frames(u.duration) >= ctc_min_frames(u.tokens) for u in dm.data["train"].utterances)
    featurizer = Featurizer(FeaturizerConfig()).eval()
    texts = []
    for batch in dm.val_dataloader():
        assert set(batch) == {"features", "feature_lengths", "targets", "target_lengths", "texts", "ids"}
        b, f, t = batch["features"].shape
        assert f == 64 and batch["features"].dtype == torch.float32 and t == int(batch["feature_lengths"].max())
        assert batch["targets"].dtype == torch.int64 and batch["targets"].shape == (
            b,
            int(batch["target_lengths"].max()),
        )
        for i in range(b):
            n = int(batch["target_lengths"][i])
            assert dm.tokenizer.decode(batch["targets"][i, :n].tolist()) == batch["texts"][i]
            assert torch.all(batch["targets"][i, n:] == 0)
            audio, _ = soundfile.read(batch["ids"][i], dtype="float32")
            ref, ref_len = featurizer(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
            assert int(batch["feature_lengths"][i]) == int(ref_len)
            torch.testing.assert_close(batch["features"][i, :, : int(ref_len)], ref[0], atol=1e-4, rtol=1e-4)
            assert torch.all(batch["features"][i, :, int(ref_len) :] == 0)
        texts += batch["texts"]
    assert sorted(texts) == sorted(CharTokenizer().normalize(s) for _, s in SPECS)
    assert "set an alarm for seven" in texts
    train_ids = [i for batch in dm.train_dataloader() for i in batch["ids"]]
    assert len(train_ids) == 5 and len(set(train_ids)) == 5


def test_datamodule_augmented_training_batches_and_errors(tmp_path):
    train = _corpus(tmp_path, SPECS[:5], "train.json")
    torch.manual_seed(0)
    dm = SpeechDataModule(
        train_manifests=[str(train)],
        val_manifests=[str(train)],
        batch_size=5,
        num_workers=0,
        featurizer={"kind": "spectrogram"},
        augmentation=AugmentationConfig(speed_prob=1, noise_prob=1, reverb_prob=1, eq_prob=1, pitch_prob=1),
    )
    (batch,) = list(dm.train_dataloader())
    assert batch["features"].shape[:2] == (5, 161)
    durations = sorted(round(d * RATE) // 160 + 1 for d, _ in SPECS[:5])
    lengths = sorted(batch["feature_lengths"].tolist())
    assert all(0.85 * d <= n <= 1.15 * d for d, n in zip(durations, lengths))  # speed perturbation within 0.9..1.1
    empty = _corpus(tmp_path / "empty", [], "val.json")
    with pytest.raises(ValueError, match="the val set is empty"):
        SpeechDataModule(train_manifests=[str(train)], val_manifests=[str(empty)], num_workers=0).setup("fit")


def test_training_drops_audio_too_short_for_ctc_at_load_time(tmp_path):
    manifest = _corpus(tmp_path, [(0.5, "call mom"), (0.5, "play some music")], "train.json")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    _tone(tmp_path / lines[1]["audio_filepath"], 0.05)  # the manifest still says 0.5 s
    dm = SpeechDataModule(
        train_manifests=[str(manifest)], num_workers=0, time_reduction=2, augmentation=AugmentationConfig(enabled=False)
    )
    loader = dm.train_dataloader()
    assert [b["texts"] for b in loader] == [["call mom"]]
    assert loader.infeasible == 1
    with pytest.warns(UserWarning, match="dropped 1 training utterance"):
        dm.teardown("fit")


def test_predict_manifests_need_no_text(tmp_path):
    _corpus(tmp_path, [(0.3, "x"), (0.5, "y")], "with_text.json")
    entries = [{"audio_filepath": f"audio/with_text.json-{i}.wav", "duration": d} for i, d in enumerate([0.3, 0.5])]
    manifest = write_manifest(tmp_path / "predict.json", entries)
    dm = SpeechDataModule(predict_manifests=[str(manifest)], num_workers=0, batch_size=4)
    dm.setup("predict")
    (batch,) = list(dm.predict_dataloader())
    assert batch["texts"] == ["", ""] and batch["targets"].shape == (2, 0)
    assert batch["feature_lengths"].tolist() == [1 + 4800 // 160, 1 + 8000 // 160]
    with pytest.raises(ManifestError, match="missing field\\(s\\) text"):
        SpeechDataModule(test_manifests=[str(manifest)], num_workers=0).setup("test")


class _LengthRecorder(pl.LightningModule):
    """Records the longest utterance of every training batch per epoch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.maxima: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.maxima.setdefault(self.current_epoch, []).append(int(batch["feature_lengths"].max()))
        return (self.weight * batch["features"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_sortagrad_first_epoch_sorted_then_shuffled(tmp_path):
    specs = [(0.2 + 0.05 * ((7 * i) % 12), "go") for i in range(12)]
    train = _corpus(tmp_path, specs, "train.json")
    dm = SpeechDataModule(
        train_manifests=[str(train)],
        batch_size=1,
        num_workers=0,
        augmentation=AugmentationConfig(enabled=False),
        seed=1,
    )
    recorder = _LengthRecorder()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[SortaGrad(sorted_epochs=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        use_distributed_sampler=False,
    )
    trainer.fit(recorder, datamodule=dm)
    assert recorder.maxima[0] == sorted(recorder.maxima[0]) and len(recorder.maxima[0]) == 12
    assert recorder.maxima[1] != sorted(recorder.maxima[1])
    assert Counter(recorder.maxima[1]) == Counter(recorder.maxima[0])


def _sortagrad_trainer() -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        callbacks=[SortaGrad(sorted_epochs=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def test_sortagrad_needs_a_datamodule_that_owns_the_setting(tmp_path):
    """SortaGrad's setting lives in one place, the DataModule; anything else is refused, not patched."""

    class PlainData(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(list(range(4)), batch_size=2)

    with pytest.raises(TypeError, match="needs a DataModule with `sorted_epochs`"):
        _sortagrad_trainer().fit(_LengthRecorder(), datamodule=PlainData())

    class IgnoresTheSetting(PlainData):
        sorted_epochs = 0  # accepts the attribute, but its loader has no sorted sampler

    with pytest.raises(TypeError, match="does not iterate the first 1 epoch"):
        _sortagrad_trainer().fit(_LengthRecorder(), datamodule=IgnoresTheSetting())


def test_loader_state_counts_delivered_batches_not_prefetched(tmp_path):
    train = _corpus(tmp_path, [(0.2 + 0.01 * i, "go") for i in range(12)], "train.json")

    def make():
        dm = SpeechDataModule(
            train_manifests=[str(train)], batch_size=2, num_workers=1, augmentation=AugmentationConfig(enabled=False)
        )
        return dm.train_dataloader()

    loader = make()
    full = [b["ids"] for b in loader]
    loader = make()
    iterator = iter(loader)
    seen = [next(iterator)["ids"] for _ in range(2)]
    state = loader.state_dict()
    assert loader.batch_sampler.batches_yielded > 2  # the worker prefetched ahead
    assert state["batches_done"] == 2
    del iterator
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert seen + [b["ids"] for b in resumed] == full


def test_datamodule_builds_the_synthetic_corpus_when_no_manifests(tmp_path):
    from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig

    corpus = SyntheticCorpusConfig(train_utterances=6, val_utterances=3, test_utterances=3, cache_dir=str(tmp_path))
    dm = SpeechDataModule(corpus=corpus, batch_size=4, num_workers=0, augmentation=AugmentationConfig(enabled=False))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.data["val"]) == 3 and 0 < len(dm.data["train"]) <= 6
    batch = next(iter(dm.val_dataloader()))
    assert batch["features"].shape[1] == 64 and all(batch["texts"])
    for i, text in enumerate(batch["texts"]):
        n = int(batch["target_lengths"][i])
        assert dm.tokenizer.decode(batch["targets"][i, :n].tolist()) == text
    # a split with its own manifests uses them; the others still come from the corpus
    own = _corpus(tmp_path / "own", [(0.3, "hello"), (0.4, "world")], "test.json")
    mixed = SpeechDataModule(corpus=corpus, test_manifests=[str(own)], num_workers=0)
    mixed.setup("test")
    mixed.setup("fit")
    assert [u.text for u in mixed.data["test"].utterances] == ["hello", "world"] and len(mixed.data["val"]) == 3


# ---------------------------------------------------------------- LibriSpeech


def _librispeech_tree(root: Path, subset: str = "dev-clean") -> dict[str, float]:
    """A tiny tree in LibriSpeech's exact layout; returns utterance id -> seconds."""
    durations = {}
    for speaker, chapter, utts in [("19", "198", [0.4, 0.55]), ("1272", "128104", [0.3])]:
        folder = root / "LibriSpeech" / subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for k, seconds in enumerate(utts):
            uid = f"{speaker}-{chapter}-{k:04d}"
            _tone(folder / f"{uid}.flac", seconds)
            durations[uid] = seconds
            lines.append(f"{uid} MISTER QUILTER IS THE APOSTLE'S  NUMBER {k}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return durations


def test_librispeech_preparer_writes_manifests(tmp_path):
    from zoo.datamodules.librispeech import prepare_librispeech

    durations = _librispeech_tree(tmp_path)
    manifest = prepare_librispeech(tmp_path, "dev-clean")
    assert manifest == tmp_path / "librispeech_dev-clean.json"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [Path(e["audio_filepath"]).stem for e in entries] == ["1272-128104-0000", "19-198-0000", "19-198-0001"]
    assert all(not Path(e["audio_filepath"]).is_absolute() for e in entries)
    for e in entries:
        assert e["duration"] == pytest.approx(durations[Path(e["audio_filepath"]).stem], abs=1e-4)
    assert entries[0]["text"] == "mister quilter is the apostle's number 0"
    data = read_manifests(manifest, CharTokenizer())  # relative paths resolve, audio headers check out
    assert data.utterances[2].text == "mister quilter is the apostle's number one"


def test_librispeech_preparer_errors_name_transcript_line(tmp_path):
    from zoo.datamodules.librispeech import prepare_librispeech

    _librispeech_tree(tmp_path)
    (tmp_path / "LibriSpeech/dev-clean/19/198/19-198-0001.flac").unlink()
    trans = tmp_path / "LibriSpeech/dev-clean/19/198/19-198.trans.txt"
    with pytest.raises(ManifestError, match=f"{trans}:2: audio file not found"):
        prepare_librispeech(tmp_path, "dev-clean")
    manifest = prepare_librispeech(tmp_path, "dev-clean", skip_bad=True)
    assert len(manifest.read_text().splitlines()) == 2
    from zoo.datamodules.librispeech import main

    assert main(["--root", str(tmp_path), "--subsets", "dev-clean"]) == 1  # the error, not a traceback
    assert main(["--root", str(tmp_path), "--subsets", "dev-clean", "--skip-bad"]) == 0


def test_librispeech_download_extracts_safely(tmp_path):
    import io
    import tarfile

    from zoo.datamodules.librispeech import download_librispeech, prepare_librispeech

    source = tmp_path / "source"
    _librispeech_tree(source, "test-clean")
    with tarfile.open(tmp_path / "test-clean.tar.gz", "w:gz") as tar:
        tar.add(source / "LibriSpeech", arcname="LibriSpeech")
    target = tmp_path / "data"
    (folder,) = download_librispeech(target, ["test-clean"], url=f"file://{tmp_path}/{{subset}}.tar.gz")
    assert folder == target / "LibriSpeech" / "test-clean" and not (target / "test-clean.tar.gz").exists()
    assert len(prepare_librispeech(target, "test-clean").read_text().splitlines()) == 3
    # a hostile archive (member escaping the destination) is refused; the opener is injectable
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="outside"):
        download_librispeech(tmp_path / "evil", ["dev-other"], opener=lambda url: io.BytesIO(evil.getvalue()))
    assert not (tmp_path / "escaped.txt").exists()


class _IdRecorder(_LengthRecorder):
    def training_step(self, batch, batch_idx):
        self.maxima.setdefault(self.current_epoch, []).extend(batch["ids"])
        return (self.weight * batch["features"].mean()).sum()


class _SaveMidEpoch(pl.Callback):
    def __init__(self, path: Path, after_batches: int):
        self.path, self.after_batches = path, after_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx + 1 == self.after_batches:
            trainer.save_checkpoint(self.path)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_lightning_resume_mid_epoch_neither_repeats_nor_skips(tmp_path):
    train = _corpus(tmp_path, [(0.2 + 0.03 * i, "go") for i in range(12)], "train.json")

    def run(module, ckpt_path=None, callbacks=()):
        dm = SpeechDataModule(
            train_manifests=[str(train)], batch_size=2, num_workers=0, augmentation=AugmentationConfig(enabled=False)
        )
        trainer = pl.Trainer(
            max_epochs=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            use_distributed_sampler=False,
            callbacks=list(callbacks),
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    whole = _IdRecorder()
    run(whole, callbacks=[_SaveMidEpoch(tmp_path / "mid.ckpt", after_batches=3)])
    resumed = _IdRecorder()
    run(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert len(whole.maxima[0]) == 12 and sorted(whole.maxima[0]) == sorted(set(whole.maxima[0]))
    assert resumed.maxima[0] == whole.maxima[0][6:]  # the rest of epoch 0: nothing repeated, nothing skipped
    assert resumed.maxima[1] == whole.maxima[1]  # then the next epoch's own order


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_reads_rank_and_world_size_from_torch_distributed(monkeypatch, world):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    for rank in range(world):
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        sampler = BucketingBatchSampler(_lengths(), batch_size=4, sorted_epochs=1)
        expected = BucketingBatchSampler(_lengths(), batch_size=4, sorted_epochs=1, num_replicas=world, rank=rank)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            expected.set_epoch(epoch)
            assert list(sampler) == list(expected) and len(sampler) == len(expected)


# ---------------------------------------------------------------- cached features


def _no_waveform_aug(**kwargs) -> AugmentationConfig:
    return AugmentationConfig(speed_prob=0, pitch_prob=0, eq_prob=0, reverb_prob=0, noise_prob=0, **kwargs)


@pytest.mark.parametrize("workers", [0, 1])
def test_cached_features_equal_computed_ones(tmp_path, workers):
    manifest = _corpus(tmp_path, SPECS[:4], "train.json")
    plain = SpeechDataModule(val_manifests=[str(manifest)], num_workers=0, batch_size=4)
    cached = SpeechDataModule(val_manifests=[str(manifest)], num_workers=workers, batch_size=4, cache_features=True)
    (expected,) = list(plain.val_dataloader())
    for _ in range(2):  # the second epoch reuses the cache
        (batch,) = list(cached.val_dataloader())
        assert batch["ids"] == expected["ids"]
        assert torch.equal(batch["feature_lengths"], expected["feature_lengths"])
        assert torch.allclose(batch["features"], expected["features"], atol=1e-6)
    assert list(cached._feature_cache) == ["val"]


def test_cached_training_features_get_fresh_feature_augmentation_each_epoch(tmp_path):
    manifest = _corpus(tmp_path, SPECS[:4], "train.json")
    aug = _no_waveform_aug(
        stretch_prob=1.0, stretch_min=0.8, stretch_max=1.25, warp_prob=1.0, spec_augment_prob=0, cutout_prob=0
    )
    dm = SpeechDataModule(
        train_manifests=[str(manifest)], num_workers=0, batch_size=4, cache_features=True, augmentation=aug, seed=3
    )
    loader = dm.train_dataloader()
    torch.manual_seed(0)
    first = {i: n for b in loader for i, n in zip(b["ids"], b["feature_lengths"].tolist())}
    second = {i: n for b in loader for i, n in zip(b["ids"], b["feature_lengths"].tolist())}
    frames = {
        i: f.shape[-1]
        for i, f in zip((u.audio_filepath for u in dm.data["train"].utterances), dm._feature_cache["train"])
    }
    assert first != second  # the stretch factor is drawn per item and epoch, not cached
    for lengths in (first, second):
        assert all(round(frames[i] / 1.25) <= n <= round(frames[i] / 0.8) for i, n in lengths.items())


def test_cache_features_refuses_waveform_augmentation_and_keeps_skip_bad(tmp_path):
    manifest = _corpus(tmp_path, SPECS[:3], "train.json")
    dm = SpeechDataModule(
        train_manifests=[str(manifest)],
        num_workers=0,
        cache_features=True,
        augmentation=AugmentationConfig(speed_prob=1.0),
    )
    with pytest.raises(ValueError, match="cache_features needs the waveform augmentations off"):
        dm.train_dataloader()
    bad = _corpus(tmp_path / "bad", [(0.3, "good one"), (0.3, "good two"), (0.3, "good three")])
    (tmp_path / "bad" / "audio" / "manifest.json-1.wav").write_bytes(b"RIFF" + b"\x00" * 64)
    dm = SpeechDataModule(val_manifests=[str(bad)], num_workers=0, audio_check="exists", cache_features=True)
    with pytest.raises(ManifestError, match=f"{bad}:2: .*cannot decode"):
        dm.val_dataloader()
    dm = SpeechDataModule(
        val_manifests=[str(bad)], num_workers=0, audio_check="exists", cache_features=True, skip_bad=True, batch_size=4
    )
    loader = dm.val_dataloader()
    assert [b["texts"] for b in loader] == [["good one", "good three"]]
    assert len(loader.skipped) == 1 and f"{bad}:2:" in loader.skipped[0]
