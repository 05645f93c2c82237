"""The DeepSpeech2 recurrence alone: the zoo's C++ loop against oneDNN's LSTM, the kernel deepspeech.pytorch runs.

    python bench/ds2_recurrence.py [--repeats 5] [--threads 1 2]

One bidirectional LSTM layer, forward + backward (back-propagation through time and ``dL/dU``), at the two
shapes of issue 18: 16 utterances x 400 frames x 256 units (2x256 / 3x256 configs after the conv stride) and
2 x 200 x 1024 (5x1024). The zoo's side is :class:`zoo.speech.deepspeech2.PackedRecurrence` given the input
term ``B(W x)``; the peer's side is ``nn.LSTM`` (oneDNN on the CPU) with an 8-wide input, so that its own
input product is negligible and both sides do the recurrence only. Each in float32, and with the products by
``U`` in bf16 (what ``torch.autocast("cpu", torch.bfloat16)`` runs: the zoo's loop on bf16 panels where the CPU
has AVX512-BF16, oneDNN's bf16 LSTM). Interleaved rounds per shape and thread count; results in
``bench/results/ds2_recurrence.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from harness import environment, interleave, table, write_result
from torch import nn

from zoo.speech.deepspeech2 import PackedPlan, PackedRecurrence, bf16_panels, load_recurrence

SHAPES = {"16 x 400 x 256": (16, 400, 256), "2 x 200 x 1024": (2, 200, 1024)}


def zoo_step(batch: int, steps: int, hidden: int, products: torch.dtype) -> Callable[[], None]:
    plan = PackedPlan.from_lengths(torch.full((batch,), steps))
    gx = torch.randn(batch * steps, 2 * 4 * hidden, requires_grad=True)
    weight = (torch.randn(2, 4 * hidden, hidden) / hidden**0.5).requires_grad_()

    def step() -> None:
        y = PackedRecurrence.apply(gx, weight, plan, "lstm", products)
        y.backward(torch.ones_like(y))

    return step


def onednn_step(batch: int, steps: int, hidden: int, products: torch.dtype) -> Callable[[], None]:
    lstm = nn.LSTM(8, hidden, bidirectional=True)
    x = torch.randn(steps, batch, 8, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=products == torch.bfloat16):
            y, _ = lstm(x)
        y.float().backward(torch.ones_like(y, dtype=torch.float32))

    return step


PEER = "oneDNN nn.LSTM (deepspeech.pytorch's kernel)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--name", default="ds2_recurrence")
    args = parser.parse_args()
    if load_recurrence() is None:
        raise SystemExit("the zoo's C++ recurrence could not be built (see the warning)")
    env, rows = environment(), []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape, (batch, steps, hidden) in SHAPES.items():
            torch.manual_seed(0)
            steps_fn = {
                PEER: onednn_step(batch, steps, hidden, torch.float32),
                "zoo C++ loop": zoo_step(batch, steps, hidden, torch.float32),
                f"{PEER}, bf16 autocast": onednn_step(batch, steps, hidden, torch.bfloat16),
                f"zoo C++ loop, bf16 products{'' if bf16_panels(torch.bfloat16, torch.float32) else ' (dL/dU only)'}": (
                    zoo_step(batch, steps, hidden, torch.bfloat16)
                ),
            }
            stats = interleave(steps_fn, repeats=args.repeats)
            peer = stats[PEER]
            for name, s in stats.items():
                rows.append(
                    {
                        "threads": threads,
                        "shape": shape,
                        "kernel": name,
                        "ms_per_step": s.median / steps * 1e3,
                        "spread": s.spread,
                        "vs_onednn": peer.median / s.median,
                        "stats": s,
                    }
                )
                print(
                    f"{threads} threads {shape:15s} {name:60s} {s.median / steps * 1e3:.3f} ms/step "
                    f"(±{s.spread:.0%})  oneDNN / this {peer.median / s.median:.2f}x",
                    flush=True,
                )
    result = table(
        f"DeepSpeech2 recurrence alone: one bidirectional LSTM layer, forward + backward (interleaved medians of "
        f"{args.repeats})",
        [
            ("threads", "threads"),
            ("shape", "batch x frames x units"),
            ("kernel", "kernel"),
            ("ms_per_step", "ms per time step (both directions, fwd + bwd)", ".3f"),
            ("spread", "IQR / median", ".0%"),
            ("vs_onednn", "speed vs oneDNN fp32", ".2f"),
        ],
        rows,
        notes="The zoo's loop is given B(W x); nn.LSTM gets an 8-wide input, so both sides time the recurrence "
        "(its products U h, gates, back-propagation through time and dL/dU).",
    )
    write_result(args.name, [result], env=env, title="DeepSpeech2 recurrence vs oneDNN's LSTM")


if __name__ == "__main__":
    main()
