"""CTC forced alignment (zoo.speech.alignment) and the PlotCTCAlignment callback's PNG."""

import itertools
import json

import pytest
import pytorch_lightning as pl
import torch

from zoo.callbacks.ctc_alignment import PlotCTCAlignment, plot_ctc_alignment
from zoo.speech.alignment import AlignedToken, ctc_forced_alignment

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = ["<blank>", "a", "b", "c"]


def emissions(rows: list[dict[int, float]], vocab: int = 4) -> torch.Tensor:
    """(T, V) log-posteriors: per frame the given label probabilities, the rest spread evenly over the others."""
    probs = torch.zeros(len(rows), vocab)
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (vocab - len(row))
        probs[t] = rest
        for label, p in row.items():
            probs[t, label] = p
    return probs.log()


def test_alignment_puts_each_character_where_the_emissions_do():
    blank = {0: 0.9}
    rows = [
        blank,
        blank,
        {1: 0.8},
        {1: 0.7},
        blank,
        {3: 0.5, 2: 0.4},  # greedy would say "c"; the transcript says "b": the alignment must put b here
        blank,
        blank,
        {1: 0.9},
        {1: 0.6},
        blank,
        blank,
    ]
    path, aligned = ctc_forced_alignment(emissions(rows), torch.tensor([1, 2, 1]))
    assert path.tolist() == [0, 0, 1, 1, 0, 2, 0, 0, 1, 1, 0, 0]
    assert [(a.label, a.start, a.end) for a in aligned] == [(1, 2, 4), (2, 5, 6), (1, 8, 10)]
    log_probs = emissions(rows)
    assert aligned[0].log_prob == pytest.approx(float(log_probs[2:4, 1].mean()), abs=1e-5)
    # a repeated character needs a blank between its two emissions
    rows = [{1: 0.9}, {1: 0.9}, {0: 0.9}, {1: 0.9}]
    path, aligned = ctc_forced_alignment(emissions(rows), torch.tensor([1, 1]))
    assert path.tolist() == [1, 1, 0, 1]
    assert [(a.start, a.end) for a in aligned] == [(0, 2), (3, 4)]


def collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    return tuple(label for i, label in enumerate(path) if label != blank and (i == 0 or path[i - 1] != label))


@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_is_the_best_path_by_enumeration(seed):
    """The Viterbi path is the most probable of all 4^7 paths that collapse to the transcript."""
    g = torch.Generator().manual_seed(seed)
    log_probs = (2 * torch.randn(7, 4, generator=g)).log_softmax(dim=1)
    target = (2, 2, 3)
    paths = [p for p in itertools.product(range(4), repeat=7) if collapse(p) == target]
    scores = torch.stack([log_probs[torch.arange(7), torch.tensor(p)].sum() for p in paths])
    best = paths[int(scores.argmax())]
    path, aligned = ctc_forced_alignment(log_probs, torch.tensor(target))
    assert tuple(path.tolist()) == best
    assert [a.label for a in aligned] == list(target)


def test_alignment_errors():
    with pytest.raises(ValueError, match="cannot align"):
        ctc_forced_alignment(torch.zeros(3, 4).log_softmax(1), torch.tensor([1, 1, 2]))  # needs 4 frames
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_alignment(torch.zeros(5, 4).log_softmax(1), torch.tensor([1, 0]))


def test_plot_is_a_png_of_the_expected_size(tmp_path):
    import matplotlib.image

    rows = [{0: 0.9}, {1: 0.8}, {0: 0.9}, {2: 0.7}, {0: 0.9}]
    features = torch.randn(20, 10)  # 10 feature frames, time reduction 2
    aligned = plot_ctc_alignment(
        features, emissions(rows), torch.tensor([1, 2]), LABELS, tmp_path / "a.png", title="test"
    )
    assert aligned == [
        AlignedToken(1, 1, 2, pytest.approx(float(torch.tensor(0.8).log()), abs=1e-5)),
        AlignedToken(2, 3, 4, pytest.approx(float(torch.tensor(0.7).log()), abs=1e-5)),
    ]
    image = matplotlib.image.imread(tmp_path / "a.png")
    assert image.shape[:2] == (600, 1000) and image.std() > 0.05
    # no CTC path (3 labels, 2 frames): the posteriors are still drawn
    assert (
        plot_ctc_alignment(features, emissions(rows[:2]), torch.tensor([1, 2, 3]), LABELS, tmp_path / "b.png") is None
    )
    assert matplotlib.image.imread(tmp_path / "b.png").shape[:2] == (600, 1000)


def write_manifest(path, n: int, seed: int) -> None:
    import soundfile

    g = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        samples = 6000 + 500 * i
        audio = path.parent / f"{path.stem}{i}.wav"
        soundfile.write(audio, (0.1 * torch.randn(samples, generator=g)).numpy(), 16000)
        lines.append(json.dumps({"audio_filepath": str(audio), "duration": samples / 16000, "text": "go left"}))
    path.write_text("\n".join(lines) + "\n")


def test_callback_writes_one_png_per_validation_run(tmp_path):
    import matplotlib.image

    from zoo.datamodules.speech import SpeechDataModule
    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer

    write_manifest(tmp_path / "train.json", 4, seed=0)
    write_manifest(tmp_path / "val.json", 3, seed=1)
    pl.seed_everything(0)
    data = SpeechDataModule(
        train_manifests=[str(tmp_path / "train.json")],
        val_manifests=[str(tmp_path / "val.json")],
        time_reduction=2,
        batch_size=2,
        num_workers=0,
    )
    model = CTCSpeechRecognizer("jasper-tiny")
    callback = PlotCTCAlignment(utterance=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )  # (the sanity check validation is not drawn)
    trainer.fit(model, data)
    assert callback.paths == [
        tmp_path / "plots" / "ctc_alignment-step000002.png",
        tmp_path / "plots" / "ctc_alignment-step000004.png",
    ]
    for path in callback.paths:
        assert matplotlib.image.imread(path).shape[:2] == (600, 1000)


def test_callback_refuses_a_module_that_is_not_ctc_speech(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.raises(TypeError, match="tokenizer"):
        PlotCTCAlignment().setup(trainer, pl.LightningModule(), "fit")
