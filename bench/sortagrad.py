"""SortaGrad on/off (DeepSpeech2 §3.3, Table 2): the same small DS2, the same steps, several seeds.

    python bench/sortagrad.py [--seeds 0 1 2] [--steps 200] [--batch-size 16] [--train-utterances 1600]
                              [--log-every 25] [--json results.json]
    python bench/sortagrad.py --report a.json [b.json ...]  # the table of earlier (possibly partial) runs

Each seed trains ``ds2-demo`` (the ``ds2_demo`` recipe's model, optimizer and augmentation:
Adam 2e-3, linear warm-up then cosine decay over the run, gradient norm clipped to 400) for a
fixed number of optimizer steps on the first ``--train-utterances`` utterances of the embedded
synthetic corpus's training set, once with the :class:`~zoo.callbacks.sortagrad.SortaGrad`
callback (first epoch in increasing utterance length, then shuffled length buckets) and once
without (shuffled buckets from the start). Both arms of a seed share the initial weights, the
augmentation random stream and the bucketing seed; they differ only in the batch order.

Reported per arm, mean ± std over seeds: the training loss (CTC per target character, the
module's ``train/loss``) averaged over each window of ``--log-every`` steps, and the validation
loss, WER and CER after the last step (greedy decoding; the corpus's 300 validation
utterances: held-out voices saying held-out sentences). The run counts steps, not time, so a busy
machine only makes it slower. Note that under SortaGrad the first epoch's training losses are
measured on short utterances only: compare the arms by the validation numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from harness import environment, write_result
from harness import table as result_table
from rich.console import Console
from rich.table import Table

from zoo.callbacks.sortagrad import SortaGrad
from zoo.datamodules.speech import SpeechDataModule
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus
from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
from zoo.optim import WarmupCosineLR


class LossRecorder(pl.Callback):
    """Training loss of every optimizer step (``None`` for a skipped batch)."""

    def __init__(self) -> None:
        self.losses: list[float | None] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(None if loss is None else float(loss))


def subset_manifest(source: Path, count: int, folder: Path) -> Path:
    """The first ``count`` lines of ``source`` with absolute audio paths (the cached corpus is reused)."""
    lines = source.read_text().splitlines()
    if count > len(lines):
        raise ValueError(f"--train-utterances {count}: {source} has only {len(lines)} utterances")
    out = []
    for line in lines[:count]:
        entry = json.loads(line)
        entry["audio_filepath"] = str((source.parent / entry["audio_filepath"]).resolve())
        out.append(json.dumps(entry))
    path = folder / f"train_first{count}.json"
    path.write_text("\n".join(out) + "\n")
    return path


def run_arm(seed: int, sortagrad: bool, args: argparse.Namespace, train: Path, val: Path) -> dict[str, Any]:
    pl.seed_everything(seed, workers=True, verbose=False)
    data = SpeechDataModule(
        train_manifests=[str(train)],
        val_manifests=[str(val)],
        featurizer={"kind": "spectrogram"},
        augmentation={"enabled": True},
        time_reduction=3,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        seed=seed,
    )
    model = CTCSpeechRecognizer(
        encoder="ds2-demo",
        optimizer=partial(torch.optim.Adam, lr=args.lr),
        lr_scheduler=partial(
            WarmupCosineLR, warmup_steps=args.warmup_steps, total_steps=args.steps, min_lr=args.lr / 40
        ),
    )
    recorder = LossRecorder()
    callbacks: list[pl.Callback] = [recorder] + ([SortaGrad(sorted_epochs=1)] if sortagrad else [])
    common = dict(
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = pl.Trainer(
        max_steps=args.steps,
        max_epochs=-1,
        gradient_clip_val=400.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
        **common,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    metrics = pl.Trainer(**common).validate(model, datamodule=data, verbose=False)[0]
    windows = []
    for first in range(0, args.steps, args.log_every):
        window = [x for x in recorder.losses[first : first + args.log_every] if x is not None]
        windows.append(statistics.fmean(window) if window else math.nan)
    return {
        "seed": seed,
        "sortagrad": sortagrad,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "train_loss_windows": windows,
        "skipped_batches": sum(x is None for x in recorder.losses),
        "val_loss": float(metrics["val/loss"]),
        "val_wer": float(metrics["val/wer"]),
        "val_cer": float(metrics["val/cer"]),
        "train_seconds": seconds,
    }


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    arms = {flag: [r for r in results if r["sortagrad"] == flag] for flag in (True, False)}
    out = Table(
        title=f"SortaGrad on/off: ds2-demo, {args.steps} steps of batch {args.batch_size}, "
        f"{len(args.seeds)} seed(s), mean ± std"
    )
    out.add_column("measure")
    out.add_column("SortaGrad on", justify="right")
    out.add_column("SortaGrad off", justify="right")
    for w, first in enumerate(range(0, args.steps, args.log_every)):
        last = min(first + args.log_every, args.steps)
        out.add_row(
            f"train loss, steps {first + 1}-{last}",
            *(mean_std([r["train_loss_windows"][w] for r in arms[flag]]) for flag in (True, False)),
        )
    for key, name in (("val_loss", "val loss (final)"), ("val_wer", "val WER (final)"), ("val_cer", "val CER (final)")):
        out.add_row(name, *(mean_std([r[key] for r in arms[flag]]) for flag in (True, False)))
    out.add_row("epochs completed", *(str(sorted({r["epochs"] for r in arms[flag]})) for flag in (True, False)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-utterances", type=int, default=1600)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the per-run results here (after every run)")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="only print the table of results saved by --json "
        "(several files: runs of other seeds with the same settings)",
    )
    args = parser.parse_args()
    if args.report:
        saved = [json.loads(path.read_text()) for path in args.report]
        settings = {
            json.dumps({k: v for k, v in s["args"].items() if k not in ("seeds", "json", "report")}) for s in saved
        }
        if len(settings) > 1:
            raise ValueError(f"--report: the files were run with different settings: {sorted(settings)}")
        results = [r for s in saved for r in s["results"]]
        args.steps, args.batch_size, args.log_every = (
            int(saved[0]["args"][k]) for k in ("steps", "batch_size", "log_every")
        )
        args.seeds = sorted({r["seed"] for r in results})
        Console().print(table(results, args))
        return
    torch.set_num_threads(args.threads)
    env = environment()
    corpus = build_corpus(SyntheticCorpusConfig())  # the cached demo corpus
    console = Console()
    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-sortagrad-") as tmp:
        train = subset_manifest(corpus.train, args.train_utterances, Path(tmp))
        for seed in args.seeds:
            for sortagrad in (True, False):
                result = run_arm(seed, sortagrad, args, train, corpus.val)
                results.append(result)
                console.print(
                    f"seed {seed} SortaGrad {'on ' if sortagrad else 'off'}: val WER {result['val_wer']:.3f}, "
                    f"val loss {result['val_loss']:.3f}, {result['train_seconds']:.0f} s"
                )
                if args.json:
                    args.json.write_text(
                        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
                    )
    console.print(table(results, args))
    rows = [
        {
            "measure": name,
            "on": mean_std([r[key] for r in results if r["sortagrad"]]),
            "off": mean_std([r[key] for r in results if not r["sortagrad"]]),
        }
        for key, name in (
            ("val_loss", "val loss (final)"),
            ("val_wer", "val WER (final)"),
            ("val_cer", "val CER (final)"),
        )
    ]
    write_result(
        "sortagrad",
        [
            result_table(
                f"SortaGrad on/off: ds2-demo, {args.steps} steps of batch {args.batch_size}, {len(args.seeds)} "
                "seed(s), mean ± std",
                [("measure", "measure"), ("on", "SortaGrad on"), ("off", "SortaGrad off")],
                rows,
            )
        ],
        env=env,
        title="SortaGrad on/off",
        results=results,
    )


if __name__ == "__main__":
    main()
