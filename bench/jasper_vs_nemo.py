"""Jasper / QuartzNet training step: the zoo vs NVIDIA NeMo's own modules, same weights, same process.

Runs in the peers' virtual environment (``make bench-peers`` makes ``.venv-peers`` with
``nemo_toolkit[asr]`` 3.0.0 beside the locked torch, and the zoo):

    .venv-peers/bin/python bench/jasper_vs_nemo.py [--models jasper-demo quartznet-small quartznet-15x5]
                                                   [--modes fp32 bf16 compile compile+bf16] [--repeats 5]

For each model the config is written as NeMo's ``ConvASREncoder`` block list (``jasper:``), NeMo's
``ConvASREncoder`` + ``ConvASRDecoder`` are built from it, and the zoo's :class:`~zoo.speech.jasper.Jasper`
gets the very same weights through the zoo's importer (``zoo.speech.nemo_import``: block layout,
separable convs, dense residual projections, blank moved from NeMo's last row to the zoo's id 0).
Checks (the run stops if one fails): the imported config is the zoo's registered one, eval-mode
log-probabilities agree on every valid frame (1e-4), and the first training step's CTC loss on an
unpadded batch agrees (relative 1e-4; with padding, train-mode batch norm counts padded frames on both
sides and NeMo also masks 1x1 convs' inputs, the zoo not, so the statistics differ slightly).

Timed: one training step = forward + CTC loss + backward + SGD (momentum 0.9) on a batch of
``--batch`` random 64-bin log-mel inputs of ``--seconds`` s (lengths 70-100 %, so masking matters),
``--threads`` threads. Modes: ``fp32`` eager; ``bf16`` = ``torch.autocast("cpu", bfloat16)`` (what
``precision: bf16-mixed`` does); ``compile`` = ``torch.compile`` of the network (encoder + decoder);
``compile+bf16`` both. All (system, mode) steps of a model are timed in interleaved rounds after one
warm-up (compile) step each (``bench/harness.py``; medians, rounds with other load dropped when enough
clean ones remain). "best" is each system's fastest mode. Also the step's FLOPs (FlopCounterMode) and
the fraction of this machine's measured matmul rate (fp32, or bf16 for bf16 modes), and the speed
ratio per CPU-second of this process (steadier than wall time when other processes share the CPU).

Results: ``bench/results/jasper_vs_nemo.json``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from harness import count_flops, environment, goal, interleave, matmul_rate, once, table, write_result
from torch import Tensor, nn
from torch.nn import functional as F

import zoo
from zoo.speech.jasper import Jasper, JasperConfig
from zoo.speech.nemo_import import convert_state_dict, jasper_config

FRAMES_PER_SECOND = 100
VOCABULARY = list(" abcdefghijklmnopqrstuvwxyz'")  # 28 characters + blank = 29 classes

#: QuartzNet 5x3 at reduced width (~1M parameters): the 15x5 kernels, 1/2-1/4 of its channels.
QUARTZNET_SMALL = JasperConfig(
    prologue_filters=128,
    prologue_kernel=33,
    prologue_dropout=0.0,
    blocks=((128, 33, 3, 0.0), (128, 39, 3, 0.0), (192, 51, 3, 0.0), (192, 63, 3, 0.0), (256, 75, 3, 0.0)),
    epilogue=((256, 87, 2, 0.0), (512, 1, 1, 0.0)),
    residual="plain",
    separable=True,
)
MODES = ("fp32", "bf16", "compile", "compile+bf16")


def zoo_config(name: str) -> JasperConfig:
    if name == "quartznet-small":
        return QUARTZNET_SMALL
    return zoo.create(name).config


def nemo_blocks(config: JasperConfig) -> list[dict]:
    """A zoo :class:`JasperConfig` as NeMo ``ConvASREncoder``'s ``jasper`` block list."""
    dense = config.residual == "dense"

    def block(
        filters: int,
        kernel: int,
        repeat: int,
        dropout: float,
        *,
        stride: int = 1,
        dilation: int = 1,
        residual: bool = False,
    ) -> dict:
        return {
            "filters": filters,
            "repeat": repeat,
            "kernel": [kernel],
            "stride": [stride],
            "dilation": [dilation],
            "dropout": dropout,
            "residual": residual,
            "residual_dense": dense and residual,
            "separable": config.separable and kernel > 1,
        }

    blocks = [
        block(
            config.prologue_filters, config.prologue_kernel, 1, config.prologue_dropout, stride=config.prologue_stride
        )
    ]
    blocks += [block(f, k, r, d, residual=config.residual != "none") for f, k, r, d in config.blocks]
    blocks += [block(f, k, 1, d, dilation=dil) for f, k, dil, d in config.epilogue]
    return blocks


class NemoNet(nn.Module):
    """NeMo's ``ConvASREncoder`` + ``ConvASRDecoder`` with the zoo's call signature; returns NeMo's
    log-probabilities (blank last) and output lengths."""

    def __init__(self, config: JasperConfig) -> None:
        super().__init__()
        from nemo.collections.asr.modules import ConvASRDecoder, ConvASREncoder

        self.encoder_config = {
            "feat_in": config.in_features,
            "activation": "relu",
            "conv_mask": True,
            "jasper": nemo_blocks(config),
        }
        self.encoder = ConvASREncoder(**self.encoder_config)
        last = config.epilogue[-1][0] if config.epilogue else config.blocks[-1][0]
        self.decoder = ConvASRDecoder(feat_in=last, num_classes=len(VOCABULARY), vocabulary=VOCABULARY)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        encoded, out_lengths = self.encoder(audio_signal=features, length=lengths)
        return self.decoder(encoder_output=encoded), out_lengths


def build_pair(name: str) -> tuple[NemoNet, Jasper]:
    """NeMo's network and the zoo's with NeMo's weights (through the zoo's importer)."""
    torch.manual_seed(0)
    config = zoo_config(name)
    nemo = NemoNet(config)
    for m in nemo.modules():  # trained-like batch-norm statistics so eval mode is a real check
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    state = {f"encoder.{k}": v for k, v in nemo.encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in nemo.decoder.state_dict().items()}
    imported, blocks = jasper_config(nemo.encoder_config, len(VOCABULARY) + 1)
    expected = replace(config, num_classes=len(VOCABULARY) + 1)
    if asdict(imported) != asdict(expected):
        raise SystemExit(f"{name}: the importer read the NeMo config as {imported}, expected {expected}")
    model = Jasper(imported)
    model.load_state_dict(convert_state_dict(state, imported, blocks, Path(f"<{name} NeMo modules>")), strict=True)
    return nemo, model


def batch(config: JasperConfig, size: int, seconds: float, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * FRAMES_PER_SECOND)
    lengths = torch.linspace(frames * 0.7, frames, size).long()
    labels = max(1, frames // (4 * config.prologue_stride))
    targets = torch.randint(1, len(VOCABULARY) + 1, (size, labels), generator=g)  # zoo ids: blank 0
    return {
        "features": torch.randn(size, config.in_features, frames, generator=g),
        "lengths": lengths,
        "targets": targets,
        "target_lengths": torch.full((size,), labels),
    }


def zoo_log_probs(model: nn.Module, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    logits, out_lengths = model(features, lengths)
    return logits.float().log_softmax(-1), out_lengths


def nemo_log_probs(model: nn.Module, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    log_probs, out_lengths = model(features, lengths)
    return log_probs.float(), out_lengths


def ctc(system: str, log_probs: Tensor, out_lengths: Tensor, b: dict[str, Tensor]) -> Tensor:
    """Mean CTC loss; NeMo's blank is its last class and its labels are the zoo's minus one."""
    if system == "zoo":
        targets, blank = b["targets"], 0
    else:
        targets, blank = b["targets"] - 1, len(VOCABULARY)
    return F.ctc_loss(
        log_probs.transpose(0, 1), targets, out_lengths, b["target_lengths"], blank=blank, zero_infinity=True
    )


@torch.no_grad()
def check_outputs(nemo: NemoNet, model: Jasper, b: dict[str, Tensor], tolerance: float = 1e-4) -> float:
    """Max |Δ log-probability| over valid frames in eval mode (zoo columns reordered to NeMo's)."""
    nemo.eval(), model.eval()
    ref, ref_lengths = nemo_log_probs(nemo, b["features"], b["lengths"])
    out, out_lengths = zoo_log_probs(model, b["features"], b["lengths"])
    if not torch.equal(ref_lengths.cpu(), out_lengths.cpu()):
        raise SystemExit(f"output lengths differ: NeMo {ref_lengths.tolist()} zoo {out_lengths.tolist()}")
    out = torch.cat([out[..., 1:], out[..., :1]], dim=-1)  # zoo: blank first -> NeMo: blank last
    valid = torch.arange(out.shape[1])[None, :] < out_lengths[:, None]
    diff = (out - ref).abs()[valid].max().item()
    if diff > tolerance:
        raise SystemExit(f"zoo and NeMo log-probabilities differ by {diff:.2e} > {tolerance:g}")
    return diff


def train_step(system: str, model: nn.Module, mode: str, b: dict[str, Tensor]) -> Callable[[], float]:
    """One SGD training step of a copy of ``model`` in ``mode``; returns the loss."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if mode.startswith("compile") else model
    log_probs_of = zoo_log_probs if system == "zoo" else nemo_log_probs
    bf16 = mode.endswith("bf16")

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_probs, out_lengths = log_probs_of(forward, b["features"], b["lengths"])
        loss = ctc(system, log_probs.float(), out_lengths, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def compare(name: str, args: argparse.Namespace) -> list[dict]:
    nemo, model = build_pair(name)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    b = batch(config, args.batch, args.seconds)
    diff = check_outputs(nemo, model, b)
    # first training step on an unpadded batch (train-mode batch norm counts padded frames on both sides,
    # and NeMo masks the input of 1x1 convs too, the zoo not: with padding the statistics differ slightly)
    full = {**b, "lengths": torch.full_like(b["lengths"], b["features"].shape[-1])}
    losses = {system: train_step(system, net, "fp32", full)() for system, net in (("zoo", model), ("nemo", nemo))}
    fp32 = {"zoo": train_step("zoo", model, "fp32", b), "nemo": train_step("nemo", nemo, "fp32", b)}
    if abs(losses["zoo"] - losses["nemo"]) > 1e-4 * abs(losses["nemo"]):
        raise SystemExit(f"{name}: first training-step CTC loss zoo {losses['zoo']:.6f} vs NeMo {losses['nemo']:.6f}")
    flops = {system: count_flops(train_step(system, m, "fp32", b)) for system, m in (("zoo", model), ("nemo", nemo))}
    print(
        f"{name}: {params / 1e6:.2f}M parameters; eval log-probs max |Δ| {diff:.1e}; first-step loss "
        f"zoo {losses['zoo']:.5f} NeMo {losses['nemo']:.5f}; {flops['zoo'] / 1e9:.1f} GFLOP / step "
        f"(NeMo {flops['nemo'] / 1e9:.1f})",
        flush=True,
    )
    steps: dict[tuple[str, str], Callable[[], float]] = {}
    first: dict[tuple[str, str], float] = {}
    failed: dict[tuple[str, str], str] = {}
    for mode in args.modes:
        for system, net in (("zoo", model), ("nemo", nemo)):
            key = (system, mode)
            step = fp32[system] if mode == "fp32" else train_step(system, net, mode, b)
            try:
                first[key] = once(step)
            except Exception as error:  # noqa: BLE001 - e.g. torch.compile failing on a peer's module
                failed[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                print(f"  {system} {mode}: failed ({failed[key]})", flush=True)
                continue
            steps[key] = step
    stats = interleave({f"{s}/{m}": step for (s, m), step in steps.items()}, repeats=args.repeats, warmup=0)
    audio = float(b["lengths"].sum()) / FRAMES_PER_SECOND
    best = {
        s: min((k for k in steps if k[0] == s), key=lambda k: stats[f"{k[0]}/{k[1]}"].median) for s in ("zoo", "nemo")
    }
    rows = []
    for system, mode in steps:
        s = stats[f"{system}/{mode}"]
        nemo_same = stats.get(f"nemo/{mode}")
        dtype = torch.bfloat16 if mode.endswith("bf16") else torch.float32
        rows.append(
            {
                "model": name,
                "params_m": params / 1e6,
                "system": "zoo" if system == "zoo" else "NeMo 3.0",
                "mode": mode + (" (best)" if best[system] == (system, mode) else ""),
                "step_s": s.median,
                "spread": s.spread,
                "dropped": s.dropped,
                "audio_per_s": audio / s.median,
                "first_s": first[(system, mode)],
                "eval_max_diff": diff,
                "first_loss": losses[system],
                "vs_nemo_same": nemo_same.median / s.median if system == "zoo" and nemo_same else None,
                "cpu_vs_nemo_same": nemo_same.cpu_median / s.cpu_median if system == "zoo" and nemo_same else None,
                "gflop": flops[system] / 1e9,
                "matmul_fraction": flops[system] / s.median / matmul_rate("cpu", dtype),
                "stats": s,
            }
        )
    for (system, mode), error in failed.items():
        rows.append(
            {
                "model": name,
                "params_m": params / 1e6,
                "system": "zoo" if system == "zoo" else "NeMo 3.0",
                "mode": f"{mode}: {error}",
            }
        )
    zoo_best, nemo_best = (stats[f"{k[0]}/{k[1]}"].median for k in (best["zoo"], best["nemo"]))
    zoo_cpu, nemo_cpu = (stats[f"{k[0]}/{k[1]}"].cpu_median for k in (best["zoo"], best["nemo"]))
    rows.append(
        {
            "model": name,
            "params_m": params / 1e6,
            "system": "zoo best / NeMo best",
            "mode": f"{best['zoo'][1]} vs {best['nemo'][1]}",
            "vs_nemo_same": nemo_best / zoo_best,
            "cpu_vs_nemo_same": nemo_cpu / zoo_cpu,
        }
    )
    for r in rows:
        if "step_s" in r:
            print(
                f"  {r['system']:9s} {r['mode']:22s} {r['step_s']:.3f} s/step (±{r['spread']:.0%}, "
                f"first {r['first_s']:.1f} s) {r['matmul_fraction']:.0%} of matmul rate"
                + (f"  zoo/NeMo same mode {r['vs_nemo_same']:.2f}x" if r.get("vs_nemo_same") else ""),
                flush=True,
            )
    print(f"  best: zoo {best['zoo'][1]} vs NeMo {best['nemo'][1]}: {nemo_best / zoo_best:.2f}x", flush=True)
    return rows


def quiet_nemo() -> None:
    os.environ.setdefault("NEMO_TESTING", "0")
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["jasper-demo", "quartznet-small", "quartznet-15x5"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="jasper_vs_nemo", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    try:
        import nemo
    except ImportError:
        print(
            "skipped: NeMo is not installed in this environment; run `make bench-peers` and use "
            ".venv-peers/bin/python bench/jasper_vs_nemo.py"
        )
        return
    quiet_nemo()
    torch.set_num_threads(args.threads)
    env = environment()
    env["nemo"] = nemo.__version__
    rows = []
    for name in args.models:
        rows += compare(name, args)
    result = table(
        f"Jasper / QuartzNet training step vs NeMo {nemo.__version__} (forward + CTC + backward + SGD, batch "
        f"{args.batch} × {args.seconds:g} s, {args.threads} threads; interleaved medians of {args.repeats})",
        [
            ("model", "model"),
            ("params_m", "params (M)", ".2f"),
            ("system", "system"),
            ("mode", "mode"),
            ("step_s", "s / step", ".3f"),
            ("spread", "IQR / median", ".0%"),
            ("audio_per_s", "audio s / s", ".1f"),
            ("vs_nemo_same", "zoo speed / NeMo (same mode)", ".2f"),
            ("cpu_vs_nemo_same", "same, per CPU-s", ".2f"),
            ("gflop", "GFLOP / step", ".1f"),
            ("matmul_fraction", "of matmul rate", ".0%"),
            ("first_s", "first step s", ".1f"),
        ],
        rows,
        notes="Same weights (NeMo's copied into the zoo by zoo.speech.nemo_import); eval log-probabilities and the "
        "first step's loss checked equal before timing. Goals: fp32 ≥ 1.0× NeMo, best ≥ 1.2× NeMo's best.",
    )
    goals = []
    for r in rows:
        if r["system"] == "zoo" and r["mode"].split()[0] == "fp32":
            goals.append(goal(f"{r['model']}: fp32 vs NeMo fp32", r["vs_nemo_same"], 1.0))
        elif r["system"] == "zoo best / NeMo best":
            goals.append(goal(f"{r['model']}: best vs NeMo's best", r["vs_nemo_same"], 1.2))
    write_result(args.name, [result], env=env, goals=goals, title="Jasper / QuartzNet vs NVIDIA NeMo")


if __name__ == "__main__":
    main()
