"""The language-model papers' claims at CPU scale, on the embedded corpus (Debian ``fortunes``).

    python bench/lm_reproduce.py [--bn-steps 400] [--eval-every 100] [--factorized-minutes 3]

1. BN-LSTM vs LSTM (1603.09025 §5.2): ``bnlstm_demo.yaml`` vs ``lstm_demo.yaml`` settings
   (char level, 256 units, batch 32, windows of 64, Adam 2e-3, clipping 1.0), the **same number
   of updates**; validation bits per character on the first ``--eval-batches`` validation batches
   every ``--eval-every`` steps (the curve), and on the whole validation split at the end.
2. F-LSTM / G-LSTM vs LSTMP (1703.10722): ``flstm_demo.yaml`` settings (word level, 2 layers,
   n = 512, p = 64, F32 or G4, sampled softmax 1024; Adam 2e-3 by default — the paper's Adagrad 0.2,
   ``--factorized-optimizer adagrad``, diverged for F-LSTM at this scale), the **same wall time** each;
   parameters, training tokens/s, whole-validation perplexity at the end.

Everything goes through the zoo's ``LanguageModel`` and ``TextDataModule`` with a Lightning
``Trainer``. One run, one thread, on a CPU shared with other jobs: timings are noisy.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import timedelta

import pytorch_lightning as pl
import torch
from harness import environment, table, write_result

from zoo.datamodules.text import TextDataModule
from zoo.lightning_modules.language_model import LanguageModel


class Recorder(pl.Callback):
    """Validation metrics with the step and the training wall time at which they were taken."""

    def __init__(self) -> None:
        self.curve: list[tuple[int, float, float]] = []
        self.train_time = 0.0
        self.train_tokens = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.train_time += time.perf_counter() - self._start
        self.train_tokens += batch["targets"].numel()

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.curve.append((trainer.global_step, self.train_time, float(trainer.callback_metrics["val_loss"])))


def run(
    network: str,
    data: TextDataModule,
    optimizer,
    *,
    softmax: str = "full",
    max_steps: int = -1,
    max_minutes: float | None = None,
    eval_every: int | float,
    eval_batches: int,
) -> dict:
    torch.manual_seed(0)
    model = LanguageModel(network, softmax=softmax, num_sampled=1024, optimizer=optimizer)
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_time=timedelta(minutes=max_minutes) if max_minutes else None,
        val_check_interval=eval_every,
        limit_val_batches=eval_batches,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    evaluator = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    final = evaluator.validate(model, data, verbose=False)[0]["val_loss"]
    params = sum(p.numel() for p in model.net.parameters())
    return {
        "network": network,
        "params": params,
        "curve": recorder.curve,
        "final": final,
        "steps": trainer.global_step,
        "tokens_per_s": recorder.train_tokens / max(recorder.train_time, 1e-9),
        "train_s": recorder.train_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bn-steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--factorized-minutes", type=float, default=3.0)
    parser.add_argument("--factorized-optimizer", choices=("adam", "adagrad"), default="adam")
    parser.add_argument("--skip-bn", action="store_true")
    parser.add_argument("--skip-factorized", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = environment()
    tables = []
    pl.seed_everything(0, verbose=False)

    if not args.skip_bn:
        chars = TextDataModule(corpus="fortunes", level="char", batch_size=32, bptt=64, eval_batch_size=32)
        adam = lambda p: torch.optim.Adam(p, lr=0.002)  # noqa: E731
        print(
            f"BN-LSTM vs LSTM, char level, {args.bn_steps} updates each "
            f"(validation bpc on {args.eval_batches} batches every {args.eval_every} steps; 'final' = whole split)"
        )
        results = [
            run(net, chars, adam, max_steps=args.bn_steps, eval_every=args.eval_every, eval_batches=args.eval_batches)
            for net in ("lstm-char-small", "bnlstm-char-small")
        ]
        steps = [s for s, _, _ in results[0]["curve"]]
        print("| model | " + " | ".join(f"step {s}" for s in steps) + " | final (all valid) | train s | tokens/s |")
        print("|---" * (len(steps) + 4) + "|")
        for r in results:
            cells = " | ".join(f"{loss / math.log(2):.3f}" for _, _, loss in r["curve"])
            print(
                f"| {r['network']} | {cells} | {r['final'] / math.log(2):.3f} | {r['train_s']:.0f} | "
                f"{r['tokens_per_s']:.0f} |"
            )
        columns = [("network", "model")] + [(f"step{s}", f"step {s}", ".3f") for s in steps]
        columns += [
            ("final", "final (all valid)", ".3f"),
            ("train_s", "train s", ".0f"),
            ("tokens_per_s", "tokens/s", ".0f"),
        ]
        tables.append(
            table(
                f"BN-LSTM vs LSTM, char level, {args.bn_steps} updates each: validation bits per character",
                columns,
                [
                    {
                        "network": r["network"],
                        "final": r["final"] / math.log(2),
                        "train_s": r["train_s"],
                        "tokens_per_s": r["tokens_per_s"],
                        **{f"step{s}": loss / math.log(2) for s, _, loss in r["curve"]},
                    }
                    for r in results
                ],
            )
        )

    if not args.skip_factorized:
        words = TextDataModule(
            corpus="fortunes", level="word", min_count=3, max_vocab=10000, batch_size=32, bptt=32, eval_batch_size=32
        )
        if args.factorized_optimizer == "adagrad":  # the paper's; unstable at this scale (F-LSTM diverged once)
            optimizer = lambda p: torch.optim.Adagrad(p, lr=0.2, initial_accumulator_value=0.1)  # noqa: E731
        else:
            optimizer = lambda p: torch.optim.Adam(p, lr=0.002)  # noqa: E731
        print(
            f"\nF-LSTM / G-LSTM vs LSTMP, word level (vocabulary {len(words.vocabulary)}), "
            f"{args.factorized_minutes:g} min of training each, {args.factorized_optimizer}"
        )
        print("| model | parameters (all / recurrent) | steps | train tokens/s | vs LSTMP | valid ppl |")
        print("|---|---|---|---|---|---|")
        base = None
        rows = []
        for net in ("lstmp-small", "flstm-small", "glstm-small"):
            r = run(
                net,
                words,
                optimizer,
                softmax="sampled",
                max_minutes=args.factorized_minutes,
                eval_every=1.0,
                eval_batches=0,
            )
            model = LanguageModel(net)
            model.attach_vocabulary(words.vocabulary, "data")
            recurrent = sum(p.numel() for p in model.net.rnn.parameters())
            base = base or r["tokens_per_s"]
            print(
                f"| {net} | {r['params'] / 1e6:.2f}M / {recurrent / 1e6:.2f}M | {r['steps']} | "
                f"{r['tokens_per_s']:.0f} | "
                f"{r['tokens_per_s'] / base:.2f}x | {math.exp(r['final']):.1f} |"
            )
            rows.append(
                {
                    "network": net,
                    "params_m": r["params"] / 1e6,
                    "recurrent_m": recurrent / 1e6,
                    "steps": r["steps"],
                    "tokens_per_s": r["tokens_per_s"],
                    "vs_lstmp": r["tokens_per_s"] / base,
                    "ppl": math.exp(r["final"]),
                }
            )
        tables.append(
            table(
                f"F-LSTM / G-LSTM vs LSTMP, word level, {args.factorized_minutes:g} min of training each",
                [
                    ("network", "model"),
                    ("params_m", "parameters (M)", ".2f"),
                    ("recurrent_m", "recurrent (M)", ".2f"),
                    ("steps", "steps"),
                    ("tokens_per_s", "train tokens/s", ".0f"),
                    ("vs_lstmp", "vs LSTMP", ".2f"),
                    ("ppl", "valid ppl", ".1f"),
                ],
                rows,
            )
        )
    write_result("lm_reproduce", tables, env=env, title="Language-model papers' claims at CPU scale")


if __name__ == "__main__":
    main()
