"""The one mid-epoch resume rule (zoo.datamodules.resumable.ResumePosition) and the loaders that share it:
the map-style ResumableDataLoader, the text ResumableWindows and the speech SpeechDataLoader /
BucketingBatchSampler. Position saved = the trainer's processed batches (else the batches delivered);
restore skips them once, in the saved epoch only; a position at the end of an epoch restarts at batch 0."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zoo.datamodules.bucketing import BucketingBatchSampler
from zoo.datamodules.resumable import ResumableDataLoader, ResumePosition
from zoo.datamodules.speech import SpeechDataLoader
from zoo.datamodules.text import BPTTBatches, ResumableWindows, StreamingBPTTBatches, Vocabulary


def fake_trainer(processed: int = 0) -> SimpleNamespace:
    """The one trainer attribute the rule reads: the processed-batch count of the current epoch."""
    current = SimpleNamespace(processed=processed)
    progress = SimpleNamespace(batch_progress=SimpleNamespace(current=current))
    return SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=progress))


def processed(trainer: SimpleNamespace, count: int) -> None:
    trainer.fit_loop.epoch_loop.batch_progress.current.processed = count


# ---------------------------------------------------------------- the rule itself


def test_saved_position_is_the_trainers_count_else_what_was_delivered() -> None:
    position = ResumePosition()
    position.begin()
    iterator = position.track(range(10))
    for _ in range(5):
        next(iterator)
    assert position.consumed() == 5  # no trainer: every batch that left the loader
    trainer = fake_trainer(processed=4)  # Lightning prefetched the 5th; the trainer has processed 4
    position.trainer = trainer
    assert position.consumed() == 4
    assert not position.epoch_done(10) and not position.epoch_done(None)


def test_restore_skips_once_in_the_saved_epoch_only() -> None:
    position = ResumePosition()
    position.restore(epoch=2, batches=3, length=10)
    assert (position.epoch, position.start, position.delivered) == (2, 3, 3)
    position.set_epoch(2)  # Lightning re-selects the restored epoch: the skip stays
    assert position.begin() == 3 and position.delivered == 3
    assert position.begin() == 0  # the next iteration (the next epoch) is whole
    position.restore(epoch=2, batches=3, length=10)
    position.set_epoch(3)  # another epoch: the skip belonged to epoch 2
    assert position.begin() == 0


def test_a_position_at_the_end_of_an_epoch_restarts_the_next_one_at_zero() -> None:
    position = ResumePosition()
    position.restore(epoch=2, batches=10, length=10)
    assert (position.epoch, position.start) == (3, 0)
    position.restore(epoch=0, batches=7, done=True)  # no length known: the saved flag says so
    assert (position.epoch, position.start) == (1, 0)
    # without a length, "done" = ran out, and the trainer processed everything delivered
    trainer = fake_trainer()
    position = ResumePosition(trainer)
    position.begin()
    for count, _ in enumerate(position.track(range(5)), start=1):
        processed(trainer, count - 1)  # one batch ahead of the trainer (prefetch)
    assert position.exhausted and not position.epoch_done()
    processed(trainer, 5)
    assert position.epoch_done() and position.epoch_done(5)


# ---------------------------------------------------------------- every loader uses it


class Utterances(torch.utils.data.Dataset):
    """Items in collate_speech's format; ``bad`` indices come back as undecodable (``error``)."""

    def __init__(self, n: int, bad: tuple[int, ...] = ()) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i in self.bad:
            return {"error": f"utterance {i}"}
        features = torch.full((2, 3), float(i))
        return {"features": features, "length": 3, "tokens": torch.tensor([1]), "text": "a", "id": str(i)}


def map_loader(trainer=None) -> ResumableDataLoader:
    return ResumableDataLoader(list(range(20)), batch_size=3, seed=1, trainer=trainer)


def window_loader(trainer=None) -> ResumableWindows:
    return ResumableWindows(BPTTBatches(torch.arange(200), batch_size=4, bptt=6), trainer=trainer)


def speech_loader() -> SpeechDataLoader:
    """7 batches of 2 in a shuffled order; utterances 3 and 4 (the shortest: one batch) are undecodable."""
    lengths = [1.0 if i in (3, 4) else 2.0 for i in range(14)]
    return SpeechDataLoader(Utterances(14, bad=(3, 4)), BucketingBatchSampler(lengths, batch_size=2, seed=1))


LOADERS = {"map": map_loader, "windows": window_loader, "speech": speech_loader}


@pytest.mark.parametrize("name", LOADERS)
def test_every_loader_keeps_its_place_with_the_one_rule(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = LOADERS[name]()
    assert type(loader.position) is ResumePosition
    monkeypatch.setattr(ResumePosition, "consumed", lambda self: 2)  # the saved number is the rule's
    assert 2 in loader.state_dict().values()
    restored = []
    monkeypatch.setattr(ResumePosition, "restore", lambda self, *a, **k: restored.append(a))
    loader.load_state_dict(loader.state_dict())
    assert restored  # restoring goes through the rule


def test_the_bucketing_sampler_keeps_its_place_with_the_one_rule() -> None:
    sampler = BucketingBatchSampler([1.0] * 10, batch_size=2, seed=1)
    assert type(sampler.position) is ResumePosition
    sampler.load_state_dict({"epoch": 4, "seed": 1, "batches_done": 2})
    assert (sampler.epoch, sampler.start_batch, sampler.batches_yielded) == (4, 2, 2)
    sampler.set_epoch(5)  # Lightning selecting another epoch drops the skip, as the rule says
    assert sampler.start_batch == 0 and len(list(sampler)) == len(sampler)


def batches(loader) -> list:
    """What identifies each batch: speech ids, text inputs, or the map-style batch itself."""
    return [(b["ids"] if "ids" in b else b["inputs"]) if isinstance(b, dict) else b for b in loader]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["map", "windows"])
def test_a_prefetching_trainer_resumes_at_its_own_count(name: str) -> None:
    """Lightning has taken batch k + 1 from the loader but processed k: the checkpoint resumes at k."""
    full = batches(LOADERS[name]())
    trainer = fake_trainer()
    loader = LOADERS[name](trainer)
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(5)]  # 4 processed + 1 prefetched
    processed(trainer, 4)
    state = loader.state_dict()
    assert state["batches"] == 4
    resumed = LOADERS[name]()
    resumed.load_state_dict(state)
    assert same(batches(seen[:4]) + batches(resumed), full)


@pytest.mark.parametrize("name", LOADERS)
def test_every_loader_restarts_at_zero_after_an_end_of_epoch_checkpoint(name: str) -> None:
    loader = LOADERS[name]()
    first = batches(loader)
    state = loader.state_dict()  # written at the end of the epoch
    resumed = LOADERS[name]()
    resumed.load_state_dict(state)
    again = batches(resumed)
    assert len(again) == len(first) > 0  # a whole epoch, not an empty one
    if name == "windows":
        assert same(again, first)  # every epoch has the same windows
    else:  # the next epoch
        assert (resumed.position.epoch if name == "map" else resumed.batch_sampler.epoch) == 1


def test_speech_position_counts_batches_left_empty() -> None:
    """A batch whose utterances were all skipped is never delivered to the trainer, but it is a batch
    of the sampler: the saved position counts it, so the resumed loader skips it too."""
    full = batches(speech_loader())
    loader = speech_loader()
    assert len(full) == len(loader) - 1  # the batch of utterances 3 and 4 is empty
    iterator = iter(loader)
    seen = [next(iterator)["ids"] for _ in range(len(full) // 2 + 1)]
    state = loader.state_dict()
    resumed = speech_loader()
    resumed.load_state_dict(state)
    assert seen + batches(resumed) == full


def test_streamed_windows_end_of_epoch_is_read_from_the_exhausted_loader(tmp_path: Path) -> None:
    path = tmp_path / "news.en-00001-of-00100"
    path.write_text("".join(f"line {i} of the stream\n" for i in range(30)))
    vocabulary = Vocabulary(["<unk>", "<s>", "</s>", "line", "of", "the", "stream", *map(str, range(30))])
    trainer = fake_trainer()
    loader = ResumableWindows(StreamingBPTTBatches([path], vocabulary, "word", batch_size=2, bptt=5), trainer)
    count = 0
    for count, _ in enumerate(loader, start=1):
        processed(trainer, count - 1)  # Lightning prefetches from a loader without a length
    assert loader.state_dict() == {"batches": count - 1, "epoch_done": 0}  # the last batch is not processed yet
    processed(trainer, count)
    assert loader.state_dict() == {"batches": count, "epoch_done": 1}
