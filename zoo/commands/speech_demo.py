"""The speech stages of ``zoo demo``: train a Jasper recipe on the synthetic corpus, evaluate it on
held-out voices (greedy and beam search), export the ``SpeechRecognizer``, reload it with
``zoo.load`` and transcribe a few test files.

Artifacts under ``--output`` (default ``runs/demo``): ``words.txt`` and ``words.arpa`` (lexicon
and Kneser–Ney 3-gram LM from the training transcripts), ``wer_vs_minutes.csv`` / ``.png`` (the
validation curve against wall-clock training time), ``<encoder>/`` (the exported recognizer, e.g.
``jasper-demo/``: weights, config.json, the lexicon and LM as ``lexicon.txt`` / ``lm.arpa`` with the
beam settings tuned on the validation voices, and a model card with the measured WERs, the data and
its licences and the command that trained it) and ``results.json``. The export is reloaded with
``zoo.load`` and decodes the whole test set again: its WER is printed next to the one measured before export.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from rich.console import Console
from rich.table import Table

from zoo import recipes
from zoo.speech.decoding import BeamSearchConfig

RECIPES = {"commands": "jasper_demo", "english": "jasper_english"}


def recipe_path(text: str) -> Path:
    return recipes.path(RECIPES[text])


class WallClockCurve(pl.Callback):
    """Record (minutes since fit start, step, val WER, val CER) at every validation."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.started = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or "val/wer" not in metrics:
            return
        self.rows.append(
            {
                "minutes": (time.perf_counter() - self.started) / 60,
                "step": trainer.global_step,
                "val_wer": float(metrics["val/wer"]),
                "val_cer": float(metrics["val/cer"]),
            }
        )


def write_curve(rows: list[dict[str, float]], folder: Path, title: str = "Jasper demo") -> Path | None:
    if not rows:
        return None
    path = folder / "wer_vs_minutes.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return path
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["minutes"] for r in rows], [100 * r["val_wer"] for r in rows], "o-", label="WER")
    ax.plot([r["minutes"] for r in rows], [100 * r["val_cer"] for r in rows], "s--", label="CER")
    ax.set_xlabel("training minutes (wall clock)")
    ax.set_ylabel("validation error (%)")
    ax.set_title(f"{title}: held-out voices, greedy decoding")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "wer_vs_minutes.png", dpi=120)
    plt.close(fig)
    return path


def train(
    recipe: Path, corpus, output: Path, max_minutes: float | None, console: Console, overrides: list[str] | None = None
) -> tuple[Any, Any, WallClockCurve]:
    """``zoo fit --config recipe [overrides]`` in-process with the wall-clock curve callback
    -> (trainer, datamodule, curve)."""
    from zoo.cli import ZooCLI

    args = [
        "--config",
        str(recipe),
        "--trainer.default_root_dir",
        str(output / "train"),
        "--trainer.logger.init_args.save_dir",
        str(output / "train"),
    ]
    if max_minutes is not None:
        seconds = int(max_minutes * 60)
        args += ["--trainer.max_time", f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"]
    cli = ZooCLI(args=args + list(overrides or []), run=False)
    cli.datamodule.corpus = corpus
    curve = WallClockCurve()
    cli.trainer.callbacks.append(curve)
    console.rule(f"training {recipe.name}")
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.trainer, cli.datamodule, curve


def best_checkpoint(trainer: pl.Trainer, output: Path) -> Path:
    callback = trainer.checkpoint_callback
    for candidate in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    path = output / "final.ckpt"  # the budget ended before any checkpoint: keep the final weights
    trainer.save_checkpoint(path)
    return path


def language_model_files(datamodule, output: Path) -> tuple[Path, Path]:
    """Lexicon (training words) and a Kneser–Ney 3-gram word LM from the training transcripts."""
    from zoo.speech.ngram import build_arpa

    texts = [u.text for u in datamodule.data["train"].utterances]
    words = output / "words.txt"
    words.write_text("\n".join(sorted({w for t in texts for w in t.split()})) + "\n")
    return words, build_arpa(texts, output / "words.arpa", order=3)


def validation_emissions(module, datamodule) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """The model's log-probabilities on the validation set, computed once: ([(log_probs, lengths)], texts)."""
    module.eval()
    emissions, references = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            emissions.append(module(batch["features"], batch["feature_lengths"]))
            references += batch["texts"]
    return emissions, references


def evaluate(
    checkpoint: Path, datamodule, words: Path, arpa: Path, console: Console | None = None
) -> tuple[dict[str, float], BeamSearchConfig]:
    """Greedy and beam-search (lexicon + 3-gram LM) WER/CER on the held-out test voices; the beam
    search's LM weight and word score are chosen on the validation voices first."""
    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
    from zoo.speech.decoding import tune_beam_search

    module = CTCSpeechRecognizer.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    emissions, references = validation_emissions(module, datamodule)
    base = BeamSearchConfig(lexicon=str(words), lm=str(arpa), beam_size=200)
    tokenizer = module.tokenizer
    config, trials = tune_beam_search(
        emissions, references, tokenizer.labels, base, blank=tokenizer.blank, spell=tokenizer.segment
    )
    if console is not None:
        console.print(
            f"beam search tuned on the validation voices: lm_weight {config.lm_weight}, word_score "
            f"{config.word_score} (val WER {100 * min(t.wer for t in trials):.2f} %, {len(trials)} settings)"
        )
    module.set_beam_search(config)
    tester = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = tester.test(module, datamodule=datamodule, verbose=False)[0]
    return {k: float(v) for k, v in metrics.items()}, config


def results_table(metrics: dict[str, float], minutes: float, title: str) -> Table:
    table = Table(title=title)
    for column in ("decoding", "WER %", "CER %"):
        table.add_column(column, justify="left" if column == "decoding" else "right")
    table.add_row("greedy", f"{100 * metrics['test/wer']:.2f}", f"{100 * metrics['test/cer']:.2f}")
    if "test/wer_beam" in metrics:
        table.add_row(
            "beam (lexicon + 3-gram LM, weights tuned on val)",
            f"{100 * metrics['test/wer_beam']:.2f}",
            f"{100 * metrics['test/cer_beam']:.2f}",
        )
    table.caption = f"held-out voices and sentences; {minutes:.1f} min of training"
    return table


def card_info(
    text: str,
    corpus,
    recipe: Path,
    trainer: pl.Trainer,
    metrics: dict[str, float],
    max_minutes: float | None,
    datamodule=None,
):
    """What the exported recognizer's model card reports: the test metrics, the corpus' voices and
    text with their licences, the recipe and the command that trained it."""
    import yaml

    from zoo.cards import CardInfo

    variants = [v for split in ("train", "val", "test") for v in getattr(corpus, f"{split}_variants", None) or []]
    described = getattr(datamodule, "dataset_card", None) or []
    datasets = list(described) if isinstance(described, (list, tuple)) else [described]
    if not datasets:
        datasets = ["synthetic-speech"] if any(":" not in v for v in variants) or not variants else []
        datasets += ["flite-speech"] if any(v.startswith("flite:") for v in variants) else []
        datasets += ["fortunes" if text == "english" else "voice-commands"]
    if sys.argv[1:2] == ["demo"]:
        command = shlex.join(["zoo", *sys.argv[1:]])
    else:
        command = f"zoo demo --text {text}" + (f" --minutes {max_minutes:g}" if max_minutes is not None else "")
        named = recipe.stem if recipe.parent == recipes.folder() else recipe  # a recipe name where it is one
        command += "" if recipe == recipe_path(text) else f" --recipe {named}"
    corpus_spec = json.dumps(dataclasses.asdict(corpus), default=list) if dataclasses.is_dataclass(corpus) else ""
    seed = (yaml.safe_load(recipe.read_text()) or {}).get("seed_everything")
    return CardInfo(
        title=f"{trainer.lightning_module.hparams.encoder} ({recipe.stem})",
        metrics={k.replace("/", "_"): v for k, v in metrics.items() if k.startswith("test/")},
        recipe=recipe.read_text(),
        datasets=datasets,
        seed=seed if isinstance(seed, int) else None,
        steps=trainer.global_step,
        epochs=trainer.current_epoch,
        command=command,
        notes=f"Test set: held-out voices and sentences of the synthetic corpus `{corpus_spec}`."
        if corpus_spec
        else None,
    )


def export_and_transcribe(
    checkpoint: Path,
    datamodule,
    folder: Path,
    console: Console,
    beam: BeamSearchConfig,
    info,
    metrics: dict[str, float],
    n: int = 4,
) -> dict[str, Any]:
    """Export the SpeechRecognizer with its tuned beam-search decoder (lexicon + LM + weights) and a
    model card into ``folder``, reload it with zoo.load(fuse=True), transcribe the whole test set with
    it (its default decoder: the beam search) and report its WER next to the one measured before export."""
    from torchmetrics.functional.text import word_error_rate

    import zoo
    from zoo.cards import model_card
    from zoo.checkpoints import pipeline_from_checkpoint
    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
    from zoo.pipeline import CARD_NAME, export

    pipeline = pipeline_from_checkpoint(checkpoint, CTCSpeechRecognizer)
    pipeline.set_beam_search(beam)
    export(pipeline, folder, info, load_name=str(folder))
    recognizer = zoo.load(folder, fuse=True)
    utterances = datamodule.data["test"].utterances if "test" in datamodule.data else []
    started = time.perf_counter()
    results = recognizer.transcribe([u.audio_filepath for u in utterances])
    elapsed = time.perf_counter() - started
    audio = sum(r.duration for r in results)
    wer = float(word_error_rate([r.text for r in results], [u.text for u in utterances])) if utterances else None
    table = Table(title=f"zoo.load({folder}, fuse=True).transcribe(...)")
    table.add_column("reference")
    table.add_column("transcript")
    for u, r in list(zip(utterances, results, strict=True))[:n]:
        table.add_row(u.text, r.text)
    console.print(table)
    rtf = elapsed / max(audio, 1e-9)
    console.print(
        f"real-time factor {rtf:.4f} ({audio:.1f} s of audio in {elapsed:.2f} s, batch norm folded, beam search)"
    )
    if wer is not None:
        before = metrics.get("test/wer_beam")
        console.print(
            f"exported recognizer, reloaded: test WER {100 * wer:.2f} % ({len(utterances)} utterances, "
            f"beam search from the folder's lexicon.txt + lm.arpa); measured before export: "
            + (f"{100 * before:.2f} %" if before is not None else "n/a")
        )
        info.metrics["test_wer_beam_reloaded_export"] = wer
        (folder / CARD_NAME).unlink(missing_ok=True)
        model_card(pipeline, info, str(folder)).save(folder / CARD_NAME)
    return {"export": str(folder), "rtf": rtf, "export_test_wer": wer}


def evaluate_real_speech(
    checkpoint: Path,
    beam: BeamSearchConfig,
    metrics: dict[str, float],
    console: Console,
    cache_dir: str | None = None,
    max_clips: int | None = None,
) -> list[dict[str, Any]]:
    """WER per real-speech source (``zoo prepare-real-speech``), greedy and with the tuned beam search, next to
    the synthetic test set's and to pocketsphinx on the same recordings (see :mod:`zoo.commands.real_speech_report`)."""
    from zoo.commands.real_speech_report import Pocketsphinx, PocketsphinxMissing, real_speech_table, results_json
    from zoo.commands.real_speech_report import evaluate_real_speech as score
    from zoo.datamodules.real_speech import prepare_real_speech
    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer

    with console.status("preparing the real-speech test sets ..."):
        prepared = prepare_real_speech(cache_dir=cache_dir, report=lambda line: console.print(line, markup=False))
    if not prepared:
        return []
    module = CTCSpeechRecognizer.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    module.set_beam_search(beam)
    try:
        reference = Pocketsphinx()
    except PocketsphinxMissing as error:
        console.print(str(error))
        reference = None
    with console.status("decoding the real recordings (this model and pocketsphinx) ..."):
        results = score(module, prepared, reference, max_clips=max_clips)
    table = real_speech_table(results, "test WER % per source: real human speech next to the synthetic test voices")
    table.add_row(
        "synthetic (held-out voices)",
        "",
        "",
        "",
        f"{100 * metrics['test/wer']:.1f}",
        f"{100 * metrics['test/wer_beam']:.1f}" if "test/wer_beam" in metrics else "",
        "",
        "",
        style="dim",
    )
    console.print(table)
    return results_json(results)


def run(
    text: str,
    corpus,
    output: Path,
    max_minutes: float | None,
    console: Console,
    overrides: list[str] | None = None,
    recipe: Path | None = None,
    real_speech: bool = False,
    real_speech_clips: int | None = None,
) -> int:
    """Train, evaluate, export, reload, transcribe. Returns the exit code. ``overrides``: extra
    ``zoo fit`` arguments for the recipe (e.g. ``["--trainer.val_check_interval", "1.0"]``);
    ``recipe``: another speech recipe on the synthetic corpus (default: the Jasper recipe for ``text``),
    e.g. ``zoo.recipes.path("ds2_demo")``; ``real_speech``: also report WER per real-speech source
    (:func:`evaluate_real_speech`; ``real_speech_clips``: at most that many clips per source)."""
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    recipe = recipe or recipe_path(text)
    started = time.perf_counter()
    trainer, datamodule, curve = train(recipe, corpus, output, max_minutes, console, overrides)
    minutes = (time.perf_counter() - started) / 60
    checkpoint = best_checkpoint(trainer, output)
    console.print(f"checkpoint: {checkpoint}")
    words, arpa = language_model_files(datamodule, output)
    metrics, beam = evaluate(checkpoint, datamodule, words, arpa, console)
    console.print(results_table(metrics, minutes, f"{recipe.stem} ({text}): test WER/CER"))
    real = []
    if real_speech:
        real = evaluate_real_speech(
            checkpoint, beam, metrics, console, getattr(corpus, "cache_dir", None), real_speech_clips
        )
    curve_path = write_curve(curve.rows, output, recipe.stem)
    if curve_path:
        console.print(f"validation curve: {curve_path}")
    export = output / str(trainer.lightning_module.hparams.encoder)  # e.g. runs/demo/jasper-demo
    info = card_info(text, corpus, recipe, trainer, metrics, max_minutes, datamodule)
    exported = export_and_transcribe(checkpoint, datamodule, export, console, beam, info, metrics)
    results = {
        "recipe": str(recipe),
        "train_minutes": minutes,
        "checkpoint": str(checkpoint),
        "steps": trainer.global_step,
        "metrics": metrics,
        "curve": curve.rows,
        "beam_search": dataclasses.asdict(beam),
        "real_speech": real,
        **exported,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return 0
