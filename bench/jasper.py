"""Jasper benchmarks: training throughput (seconds of audio per wall second), eager fp32 vs
torch.compile vs bf16 autocast (what ``precision: bf16-mixed`` does on a CPU), for the demo model and one step of jasper-10x5dr at batch 2; inference real-time factor of the demo
model with batch norm folded into the convolutions vs unfolded (same outputs to 1e-5).

    python bench/jasper.py [--steps 5] [--skip-big] [--no-compile] [--no-big-compile]
    python bench/jasper.py --device cuda --big-batch 32 --big-steps 5   # on a GPU: the paper's batch per GPU

Ratios compare numbers measured in the same run. Inputs are random log-mel features (training)
or waveforms (inference) with varied lengths, so masking is included.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from rich.console import Console
from rich.table import Table

import zoo
from zoo.optim import NovoGrad
from zoo.speech.features import Featurizer, FeaturizerConfig

FRAMES_PER_SECOND = 100  # 10 ms hop


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(model: torch.nn.Module, batch: int, seconds: float, steps: int, compiled: bool,
                     bf16: bool = False, device: str = "cpu") -> tuple[float, float]:
    """(audio seconds per wall second over `steps` timed steps, seconds of the first (warm-up/compile) step)."""
    torch.manual_seed(0)
    device = torch.device(device)
    model = model.to(device)
    frames = int(seconds * FRAMES_PER_SECOND)
    features = torch.randn(batch, model.config.in_features, frames, device=device)
    lengths = torch.linspace(frames * 0.7, frames, batch, device=device).long()
    targets = torch.randint(1, model.config.num_classes, (batch, max(1, frames // (4 * model.time_reduction))),
                            device=device)
    target_lengths = torch.full((batch,), targets.shape[1], device=device)
    optimizer = NovoGrad(model.parameters(), lr=0.01, betas=(0.95, 0.5), weight_decay=0.001)
    forward = torch.compile(model) if compiled else model
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, out_lengths = forward(features, lengths)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        loss = torch.nn.functional.ctc_loss(log_probs, targets, out_lengths, target_lengths, zero_infinity=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    audio = float(lengths.sum()) / FRAMES_PER_SECOND * steps
    return audio / elapsed, first


@torch.no_grad()
def inference_rtf(model: torch.nn.Module, batch: int, seconds: float, repeats: int) -> tuple[float, torch.Tensor]:
    """(real-time factor = wall time / audio time, logits) for featurizer + encoder on random audio."""
    featurizer = Featurizer(FeaturizerConfig()).eval()
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    waves = torch.randn(batch, samples, generator=g) * 0.1
    lengths = torch.linspace(samples * 0.6, samples, batch).long()
    model.eval()
    features, frames = featurizer(waves, lengths)
    model(features, frames)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        features, frames = featurizer(waves, lengths)
        logits, _ = model(features, frames)
    elapsed = time.perf_counter() - started
    return elapsed / (float(lengths.sum()) / 16000 * repeats), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--batch", type=int, default=32, help="demo-model training batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="utterance length (s) of the longest in a batch")
    parser.add_argument("--skip-big", action="store_true", help="skip jasper-10x5dr")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile rows")
    parser.add_argument("--no-bf16", action="store_true", help="no bf16 autocast rows")
    parser.add_argument("--no-big-compile", action="store_true", help="jasper-10x5dr eager only (compiling it takes long on CPU)")
    parser.add_argument("--big-batch", type=int, default=2, help="jasper-10x5dr batch (the paper: 32 per GPU)")
    parser.add_argument("--big-steps", type=int, default=1, help="timed jasper-10x5dr steps")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training rows; inference stays on the CPU)")
    args = parser.parse_args()
    console = Console()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    console.print(f"torch {torch.__version__}, {args.device}: {where}; timings on a shared machine are noisy")

    table = Table(title="Jasper training throughput (audio s per wall s)")
    for column in ("model", "batch", "mode", "audio s / s", "first step s", "vs eager"):
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    runs = [("jasper-demo", args.batch, args.seconds, args.steps)]
    if not args.skip_big:
        runs.append(("jasper-10x5dr", args.big_batch, 10.0, args.big_steps))
    for name, batch, seconds, steps in runs:
        eager_model = zoo.create(name)
        eager, first = train_throughput(eager_model, batch, seconds, steps, compiled=False, device=args.device)
        table.add_row(name, str(batch), "eager", f"{eager:.1f}", f"{first:.1f}", "1.00")
        console.print(f"{name} batch {batch} eager: {eager:.1f} audio s/s (first step {first:.1f} s)")
        if not (args.no_compile or (args.no_big_compile and name == "jasper-10x5dr")):
            compiled, first = train_throughput(zoo.create(name), batch, seconds, steps, compiled=True,
                                               device=args.device)
            table.add_row(name, str(batch), "torch.compile", f"{compiled:.1f}", f"{first:.1f}", f"{compiled / eager:.2f}")
            console.print(f"{name} batch {batch} torch.compile: {compiled:.1f} audio s/s (first step incl. compile {first:.1f} s)")
        if not args.no_bf16:
            bf16, first = train_throughput(zoo.create(name), batch, seconds, steps, compiled=False, bf16=True,
                                           device=args.device)
            table.add_row(name, str(batch), "bf16 autocast", f"{bf16:.1f}", f"{first:.1f}", f"{bf16 / eager:.2f}")
            console.print(f"{name} batch {batch} bf16 autocast: {bf16:.1f} audio s/s")
        del eager_model
    console.print(table)

    model = zoo.create("jasper-demo")
    for m in model.modules():  # trained-like batch-norm statistics so folding is non-trivial
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    unfolded_rtf, unfolded = inference_rtf(model, 8, 10.0, 3)
    fused = zoo.speech.jasper.fuse_batchnorm(copy.deepcopy(model))
    fused_rtf, folded = inference_rtf(fused, 8, 10.0, 3)
    diff = (folded - unfolded).abs().max().item()
    table = Table(title="jasper-demo inference (featurizer + encoder, batch 8 x <=10 s)")
    for column in ("batch norm", "real-time factor", "speed-up", "max |Δ logits|"):
        table.add_column(column, justify="left" if column == "batch norm" else "right")
    table.add_row("unfolded", f"{unfolded_rtf:.4f}", "1.00", "")
    table.add_row("folded into convs", f"{fused_rtf:.4f}", f"{unfolded_rtf / fused_rtf:.2f}", f"{diff:.2e}")
    console.print(table)
    if diff > 1e-5:
        raise SystemExit(f"batch-norm folding changed the outputs by {diff:.2e} > 1e-5")


if __name__ == "__main__":
    main()
