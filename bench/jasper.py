"""Jasper benchmarks: training throughput (seconds of audio per wall second), eager fp32 vs
torch.compile vs bf16 autocast (what ``precision: bf16-mixed`` does on a CPU), for the demo model and one step of
jasper-10x5dr at batch 2; inference real-time factor of the demo
model with batch norm folded into the convolutions vs unfolded (same outputs to 1e-5).

    python bench/jasper.py [--steps 5] [--skip-big] [--no-compile] [--no-big-compile]
    python bench/jasper.py --device cuda --big-batch 32 --big-steps 5   # on a GPU: the paper's batch per GPU

Ratios compare numbers measured in the same run: the modes of one model are timed in interleaved
rounds (``bench/harness.py``), medians reported. Inputs are random log-mel features (training) or
waveforms (inference) with varied lengths, so masking is included. Each training row also gives
the step's FLOPs (FlopCounterMode) and the fraction of this machine's measured matmul rate
(fp32 for eager / compiled, bf16 for the bf16 row) they achieve. Results: ``bench/results/jasper.json``.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from harness import count_flops, environment, interleave, matmul_rate, once, table, write_result

import zoo
from zoo.optim import NovoGrad
from zoo.speech.features import Featurizer, FeaturizerConfig

FRAMES_PER_SECOND = 100  # 10 ms hop


def train_step(
    model: torch.nn.Module, batch: int, seconds: float, compiled: bool, bf16: bool = False, device: str = "cpu"
) -> tuple[Callable[[], None], float]:
    """(one NovoGrad training step of ``model`` on fixed random features, seconds of audio per step)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = model.to(dev)
    frames = int(seconds * FRAMES_PER_SECOND)
    features = torch.randn(batch, model.config.in_features, frames, device=dev)
    lengths = torch.linspace(frames * 0.7, frames, batch, device=dev).long()
    targets = torch.randint(
        1, model.config.num_classes, (batch, max(1, frames // (4 * model.time_reduction))), device=dev
    )
    target_lengths = torch.full((batch,), targets.shape[1], device=dev)
    optimizer = NovoGrad(model.parameters(), lr=0.01, betas=(0.95, 0.5), weight_decay=0.001)
    forward = torch.compile(model) if compiled else model
    model.train()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits, out_lengths = forward(features, lengths)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        loss = torch.nn.functional.ctc_loss(log_probs, targets, out_lengths, target_lengths, zero_infinity=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, float(lengths.sum()) / FRAMES_PER_SECOND


def training_rows(name: str, batch: int, seconds: float, steps: int, modes: list[str], device: str) -> list[dict]:
    """One row per mode (eager, torch.compile, bf16 autocast), timed interleaved on copies of one model."""
    base = zoo.create(name)
    settings = {"eager": (False, False), "torch.compile": (True, False), "bf16 autocast": (False, True)}
    runs = {mode: train_step(copy.deepcopy(base), batch, seconds, *settings[mode], device=device) for mode in modes}
    flops = count_flops(runs["eager"][0]) if "eager" in runs else None
    first = {mode: once(step, device) for mode, (step, _) in runs.items()}  # warm-up / compile
    stats = interleave({mode: step for mode, (step, _) in runs.items()}, repeats=steps, warmup=0, device=device)
    rows = []
    for mode, (_, audio) in runs.items():
        s = stats[mode]
        dtype = torch.bfloat16 if mode == "bf16 autocast" else torch.float32
        rows.append(
            {
                "model": name,
                "batch": batch,
                "mode": mode,
                "audio_per_s": audio / s.median,
                "step_s": s.median,
                "spread": s.spread,
                "first_step_s": first[mode],
                "vs_eager": stats["eager"].median / s.median if "eager" in stats else None,
                "gflop": flops / 1e9 if flops else None,
                "matmul_fraction": flops / s.median / matmul_rate(device, dtype) if flops else None,
                "stats": s,
            }
        )
        print(
            f"{name} batch {batch} {mode}: {audio / s.median:.1f} audio s/s, step {s.median:.3f} s "
            f"(±{s.spread:.0%}), first step {first[mode]:.1f} s",
            flush=True,
        )
    return rows


def inference_rtf(
    models: dict[str, torch.nn.Module], batch: int, seconds: float, repeats: int
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Real-time factor (wall time / audio time, median) of featurizer + encoder on random audio for each
    model, timed interleaved; and each model's logits."""
    featurizer = Featurizer(FeaturizerConfig()).eval()
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    waves = torch.randn(batch, samples, generator=g) * 0.1
    lengths = torch.linspace(samples * 0.6, samples, batch).long()
    logits = {}

    def run(name: str) -> Callable[[], None]:
        @torch.no_grad()
        def call() -> None:
            features, frames = featurizer(waves, lengths)
            logits[name] = models[name].eval()(features, frames)[0]

        return call

    stats = interleave({name: run(name) for name in models}, repeats=repeats, warmup=1)
    audio = float(lengths.sum()) / 16000
    return {name: s.median / audio for name, s in stats.items()}, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--batch", type=int, default=32, help="demo-model training batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="utterance length (s) of the longest in a batch")
    parser.add_argument("--skip-big", action="store_true", help="skip jasper-10x5dr")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile rows")
    parser.add_argument("--no-bf16", action="store_true", help="no bf16 autocast rows")
    parser.add_argument(
        "--no-big-compile", action="store_true", help="jasper-10x5dr eager only (compiling it takes long on CPU)"
    )
    parser.add_argument("--big-batch", type=int, default=2, help="jasper-10x5dr batch (the paper: 32 per GPU)")
    parser.add_argument("--big-steps", type=int, default=1, help="timed jasper-10x5dr steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training rows; inference stays on the CPU)")
    parser.add_argument("--name", default="jasper", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    env = environment(args.device)
    print(f"torch {env['torch']}, {env['device']}, {env['threads']} threads; timings on a shared machine are noisy")

    rows = []
    runs = [("jasper-demo", args.batch, args.seconds, args.steps)]
    if not args.skip_big:
        runs.append(("jasper-10x5dr", args.big_batch, 10.0, args.big_steps))
    for name, batch, seconds, steps in runs:
        modes = ["eager"]
        if not (args.no_compile or (args.no_big_compile and name == "jasper-10x5dr")):
            modes.append("torch.compile")
        if not args.no_bf16:
            modes.append("bf16 autocast")
        rows += training_rows(name, batch, seconds, steps, modes, args.device)
    train = table(
        "Jasper training throughput (NovoGrad step, CTC; modes timed interleaved, medians)",
        [
            ("model", "model"),
            ("batch", "batch"),
            ("mode", "mode"),
            ("audio_per_s", "audio s / s", ".1f"),
            ("step_s", "step s", ".3f"),
            ("spread", "IQR / median", ".0%"),
            ("first_step_s", "first step s", ".1f"),
            ("vs_eager", "vs eager", ".2f"),
            ("gflop", "GFLOP / step", ".1f"),
            ("matmul_fraction", "of matmul rate", ".0%"),
        ],
        rows,
        notes=f"{args.seconds:g} s utterances (lengths 70-100 %) for jasper-demo, 10 s for jasper-10x5dr. "
        "'of matmul rate': the step's FLOPs per second over this machine's measured 2048³ matmul "
        "(fp32, or bf16 for the bf16 row).",
    )

    model = zoo.create("jasper-demo")
    for m in model.modules():  # trained-like batch-norm statistics so folding is non-trivial
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = zoo.speech.jasper.fuse_batchnorm(copy.deepcopy(model))
    rtf, logits = inference_rtf({"unfolded": model, "folded into convs": fused}, 8, 10.0, 3)
    diff = (logits["folded into convs"] - logits["unfolded"]).abs().max().item()
    inference = table(
        "jasper-demo inference (featurizer + encoder, batch 8 x <=10 s, interleaved, medians)",
        [
            ("norm", "batch norm"),
            ("rtf", "real-time factor", ".4f"),
            ("speedup", "speed-up", ".2f"),
            ("diff", "max abs logit difference", ".1e"),
        ],
        [
            {"norm": "unfolded", "rtf": rtf["unfolded"], "speedup": 1.0},
            {
                "norm": "folded into convs",
                "rtf": rtf["folded into convs"],
                "speedup": rtf["unfolded"] / rtf["folded into convs"],
                "diff": diff,
            },
        ],
    )
    print(
        f"inference RTF: unfolded {rtf['unfolded']:.4f}, folded {rtf['folded into convs']:.4f} (max |diff| {diff:.1e})"
    )
    write_result(args.name, [train, inference], env=env, title="Jasper: training modes and folded batch norm")
    if diff > 1e-5:
        raise SystemExit(f"batch-norm folding changed the outputs by {diff:.2e} > 1e-5")


if __name__ == "__main__":
    main()
