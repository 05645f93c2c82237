"""DeepSpeech2 training step: the zoo vs deepspeech.pytorch's own ``DeepSpeech`` model, same process.

    python bench/ds2_vs_deepspeech_pytorch.py [--configs 2x256 2x256-varied 3x256 5x1024] [--repeats 5]
                                              [--threads 2] [--modes fp32 bf16]

The peer is SeanNaren/deepspeech.pytorch (commit b88a631, MIT), run from its unmodified code: the folder
comes from ``$ZOO_PEER_DEEPSPEECH_PYTORCH`` (default ``../shared/peers/deepspeech.pytorch`` next to the
repository); without it the peer rows are skipped with a one-line note. Its ``model.py`` imports Hydra /
OmegaConf config classes, a decoder and WER metrics only for configuration and validation, so this script
registers small stand-ins for ``omegaconf``, ``deepspeech_pytorch.configs.train_config``,
``deepspeech_pytorch.decoder`` and ``deepspeech_pytorch.validation`` before importing it; the timed code
(``DeepSpeech.forward``, its ``criterion``) is the peer's own.

Same sizes on both sides: 161 spectrogram bins, the 2D conv front end 32/32 channels with kernels
(41, 11) and (21, 11) over (freq, time), strides (2, 2) and (2, 1), bidirectional LSTM layers with the
directions summed, a linear output over 29 characters. The functions differ where the peer approximates:
it normalises each LSTM's *input* x over all frames, padding included (no BN before the first LSTM), the
zoo normalises ``W x`` over the valid frames only (DS2 §3.2) and every utterance's outputs are those it
would have alone (padding invariance).

Timed: one training step = forward + CTC loss (sum) + backward + SGD (momentum 0.9) on random
spectrograms; lengths equal (all ``--seconds``) or "varied" (evenly spread from 2 s to 4 s, sorted longest
first as the peer's loader sorts them; the zoo needs no sorting). Modes: ``fp32``; ``bf16`` =
``torch.autocast("cpu", bfloat16)`` (what ``precision: bf16-mixed`` does; the peer's autocast is CUDA-only,
so its best CPU mode is fp32). All steps of a config are timed in interleaved rounds after one warm-up
step each (``bench/harness.py``: medians, rounds with other load dropped while enough clean ones remain;
per-call CPU seconds too, which other processes on a shared machine inflate less).

Results: ``bench/results/ds2_vs_deepspeech_pytorch.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import ROOT, count_flops, environment, goal, interleave, matmul_rate, once, table, write_result
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.speech.deepspeech2 import DeepSpeech2, DeepSpeech2Config, frame_mask, load_recurrence

FRAMES_PER_SECOND = 100
LABELS = list("_'ABCDEFGHIJKLMNOPQRSTUVWXYZ ")  # deepspeech.pytorch's labels.json: blank "_" first
#: name -> (LSTM layers, hidden size, batch, seconds, varied lengths)
CONFIGS = {
    "2x256": (2, 256, 16, 4.0, False),
    "2x256-varied": (2, 256, 16, 4.0, True),
    "3x256": (3, 256, 16, 4.0, False),
    "3x256-varied": (3, 256, 16, 4.0, True),
    "5x1024": (5, 1024, 2, 4.0, False),
}
MODES = ("fp32", "bf16")


def peer_folder() -> Path | None:
    folder = os.environ.get("ZOO_PEER_DEEPSPEECH_PYTORCH")
    path = Path(folder) if folder else ROOT.parent / "shared" / "peers" / "deepspeech.pytorch"
    return path if (path / "deepspeech_pytorch" / "model.py").is_file() else None


def import_peer(folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """deepspeech.pytorch's ``model`` module, with stand-ins for its configuration-only imports."""
    sys.path.insert(0, str(folder))
    if importlib.util.find_spec("omegaconf") is None:  # model.py only calls OmegaConf.get_type
        omegaconf = types.ModuleType("omegaconf")
        omegaconf.__spec__ = importlib.machinery.ModuleSpec("omegaconf", None)
        omegaconf.OmegaConf = types.SimpleNamespace(get_type=type)
        omegaconf.MISSING = "???"
        sys.modules["omegaconf"] = omegaconf
    enums = importlib.import_module("deepspeech_pytorch.enums")
    configs = types.ModuleType("deepspeech_pytorch.configs.train_config")

    @dataclasses.dataclass
    class SpectConfig:  # the peer's defaults: 16 kHz, 20 ms windows -> 161 bins
        sample_rate: int = 16000
        window_size: float = 0.02
        window_stride: float = 0.01
        window: Any = enums.SpectrogramWindow.hamming

    @dataclasses.dataclass
    class BiDirectionalConfig:
        rnn_type: Any = enums.RNNType.lstm
        hidden_size: int = 1024
        hidden_layers: int = 5

    @dataclasses.dataclass
    class UniDirectionalConfig(BiDirectionalConfig):
        lookahead_context: int = 20

    @dataclasses.dataclass
    class OptimConfig:
        learning_rate: float = 1.5e-4
        learning_anneal: float = 0.99
        weight_decay: float = 1e-5

    @dataclasses.dataclass
    class SGDConfig(OptimConfig):
        momentum: float = 0.9

    @dataclasses.dataclass
    class AdamConfig(OptimConfig):
        eps: float = 1e-8
        betas: tuple = (0.9, 0.999)

    for cls in (SpectConfig, BiDirectionalConfig, UniDirectionalConfig, OptimConfig, SGDConfig, AdamConfig):
        setattr(configs, cls.__name__, cls)
    decoder = types.ModuleType("deepspeech_pytorch.decoder")
    validation = types.ModuleType("deepspeech_pytorch.validation")

    class Unused:  # decoder / WER metrics: validation only
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    decoder.Decoder = decoder.GreedyDecoder = Unused
    validation.CharErrorRate = validation.WordErrorRate = Unused
    for module in (configs, decoder, validation):
        sys.modules[module.__name__] = module
    return importlib.import_module("deepspeech_pytorch.model"), configs


def zoo_config(layers: int, hidden: int) -> DeepSpeech2Config:
    """The peer's architecture in the zoo's terms: kernels and strides (time, freq), summed BiLSTM, no FC."""
    return DeepSpeech2Config(
        in_features=161,
        num_classes=len(LABELS),
        conv_channels=(32, 32),
        conv_kernels=((11, 41), (11, 21)),
        conv_strides=((2, 2), (1, 2)),
        conv_padding=((5, 20), (5, 10)),
        rnn_type="lstm",
        rnn_layers=layers,
        rnn_hidden=hidden,
        merge="sum",
        fc_hidden=0,
    )


def make_batch(size: int, seconds: float, varied: bool) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    frames = round(seconds * FRAMES_PER_SECOND)
    lengths = torch.linspace(frames, frames // 2, size).round().long() if varied else torch.full((size,), frames)
    features = torch.randn(size, 161, frames, generator=generator) * frame_mask(lengths, frames)[:, None, :]
    targets = torch.randint(1, len(LABELS), (size, 40), generator=generator)
    return {"features": features, "lengths": lengths, "targets": targets, "target_lengths": torch.full((size,), 40)}


def zoo_step(model: DeepSpeech2, mode: str, b: dict[str, Tensor]) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits, out_lengths = model(b["features"], b["lengths"])
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(
            log_probs, b["targets"], out_lengths, b["target_lengths"], reduction="sum", zero_infinity=True
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def peer_step(model: nn.Module, mode: str, b: dict[str, Tensor]) -> Callable[[], float]:
    """The peer's ``training_step`` (forward, log-softmax, its CTCLoss) + backward + SGD."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    features = b["features"].unsqueeze(1)  # (B, 1, F, T)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            out, out_lengths, _ = model(features, b["lengths"].int())
        loss = model.criterion(
            out.float().transpose(0, 1).log_softmax(-1), b["targets"], out_lengths, b["target_lengths"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def compare(name: str, peer: tuple[types.ModuleType, types.ModuleType] | None, args: argparse.Namespace) -> list[dict]:
    layers, hidden, size, seconds, varied = CONFIGS[name]
    b = make_batch(size, seconds, varied)
    torch.manual_seed(0)
    zoo_model = DeepSpeech2(zoo_config(layers, hidden))
    nets: dict[str, nn.Module] = {"zoo": zoo_model}
    if peer is not None:
        model_module, configs = peer
        rnn_config = configs.BiDirectionalConfig(hidden_size=hidden, hidden_layers=layers)
        nets["peer"] = model_module.DeepSpeech(LABELS, rnn_config, 32, configs.SGDConfig(), configs.SpectConfig())
    params = {s: sum(p.numel() for p in m.parameters()) for s, m in nets.items()}
    steps: dict[tuple[str, str], Callable[[], float]] = {}
    for system, net in nets.items():
        for mode in args.modes if system == "zoo" else args.peer_modes:
            steps[(system, mode)] = (zoo_step if system == "zoo" else peer_step)(net, mode, b)
    flops = {s: count_flops((zoo_step if s == "zoo" else peer_step)(m, "fp32", b)) for s, m in nets.items()}
    first = {key: once(step) for key, step in steps.items()}
    stats = interleave({f"{s}/{m}": step for (s, m), step in steps.items()}, repeats=args.repeats, warmup=0)
    audio = float(b["lengths"].sum()) / FRAMES_PER_SECOND
    best = {s: min((k for k in steps if k[0] == s), key=lambda k: stats[f"{k[0]}/{k[1]}"].median) for s in nets}
    label = {"zoo": "zoo DeepSpeech2", "peer": "deepspeech.pytorch"}
    rows = []
    for system, mode in steps:
        s = stats[f"{system}/{mode}"]
        peer_fp32 = stats.get("peer/fp32")
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        rows.append(
            {
                "config": name,
                "params_m": params[system] / 1e6,
                "system": label[system],
                "mode": mode + (" (best)" if best[system] == (system, mode) else ""),
                "step_s": s.median,
                "cpu_s": s.cpu_median,
                "spread": s.spread,
                "dropped": s.dropped,
                "audio_per_s": audio / s.median,
                "first_s": first[(system, mode)],
                "vs_peer_fp32": peer_fp32.median / s.median if peer_fp32 and system == "zoo" else None,
                "vs_peer_fp32_cpu": (
                    peer_fp32.cpu_median / s.cpu_median if peer_fp32 and system == "zoo" and s.cpu_median else None
                ),
                "gflop": flops[system] / 1e9,
                "matmul_fraction": flops[system] / s.median / matmul_rate("cpu", dtype),
                "stats": s,
            }
        )
    if "peer" in nets:
        zoo_best, peer_best = (stats[f"{k[0]}/{k[1]}"] for k in (best["zoo"], best["peer"]))
        rows.append(
            {
                "config": name,
                "system": "zoo best / peer best",
                "mode": f"{best['zoo'][1]} vs {best['peer'][1]}",
                "vs_peer_fp32": peer_best.median / zoo_best.median,
                "vs_peer_fp32_cpu": peer_best.cpu_median / zoo_best.cpu_median if zoo_best.cpu_median else None,
            }
        )
    for r in rows:
        if "step_s" in r:
            ratio = (
                f"  peer fp32 / this: {r['vs_peer_fp32']:.2f}x wall, {r['vs_peer_fp32_cpu']:.2f}x CPU"
                if r["vs_peer_fp32"]
                else ""
            )
            print(
                f"  {name:13s} {r['system']:19s} {r['mode']:12s} {r['step_s']:.3f} s/step (±{r['spread']:.0%}, "
                f"{r['dropped']} rounds dropped) {r['gflop']:.0f} GFLOP, {r['matmul_fraction']:.0%} of matmul rate"
                + ratio,
                flush=True,
            )
        else:
            print(f"  {name:13s} best: {r['mode']}: {r['vs_peer_fp32']:.2f}x wall", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["2x256", "2x256-varied", "3x256", "3x256-varied", "5x1024"],
        choices=list(CONFIGS),
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="zoo modes")
    parser.add_argument(
        "--peer-modes",
        nargs="+",
        default=["fp32"],
        choices=MODES,
        help="peer modes (its autocast is CUDA-only: fp32 is its CPU mode)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="ds2_vs_deepspeech_pytorch", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = peer_folder()
    peer = import_peer(folder) if folder else None
    if peer is None:
        print(
            "peer rows skipped: deepspeech.pytorch not found; clone SeanNaren/deepspeech.pytorch (b88a631) and set "
            "ZOO_PEER_DEEPSPEECH_PYTORCH to its folder"
        )
    if load_recurrence() is None:
        print("note: the zoo's C++ recurrence could not be built; the zoo rows use PyTorch's fused kernels")
    env = environment()
    env["peer"] = str(folder) if folder else None
    rows: list[dict] = []
    for name in args.configs:  # the file is rewritten after each config, so a long run keeps what it measured
        rows += compare(name, peer, args)
        write(rows, env, args)


def write(rows: list[dict], env: dict, args: argparse.Namespace) -> None:
    result = table(
        f"DeepSpeech2 training step vs deepspeech.pytorch (forward + CTC + backward + SGD, {args.threads} threads; "
        f"interleaved medians of {args.repeats})",
        [
            ("config", "config"),
            ("params_m", "params (M)", ".2f"),
            ("system", "system"),
            ("mode", "mode"),
            ("step_s", "s / step", ".3f"),
            ("spread", "IQR / median", ".0%"),
            ("audio_per_s", "audio s / s", ".1f"),
            ("vs_peer_fp32", "speed vs peer fp32 (wall)", ".2f"),
            ("vs_peer_fp32_cpu", "(CPU time)", ".2f"),
            ("gflop", "GFLOP / step", ".1f"),
            ("matmul_fraction", "of matmul rate", ".0%"),
        ],
        rows,
        notes="Configs: LxH = L bidirectional LSTM layers x H units (directions summed); 2x256 / 3x256 at 16 x 4 s, "
        "-varied = 16 utterances of 2-4 s, 5x1024 at 2 x 4 s. GFLOP as counted by FlopCounterMode (the peer's "
        "fused LSTM kernels are not counted). Goals (issue 18): fp32 >= 1.0x the peer, best >= 1.5x the peer's "
        "best (fp32).",
    )
    goals = []
    for r in rows:
        if r["system"] == "zoo DeepSpeech2" and r["mode"].split()[0] == "fp32":
            goals.append(goal(f"{r['config']}: fp32 vs peer fp32", r["vs_peer_fp32"], 1.0))
        elif r["system"] == "zoo best / peer best":
            goals.append(goal(f"{r['config']}: best vs peer best", r["vs_peer_fp32"], 1.5))
    write_result(args.name, [result], env=env, goals=goals, title="DeepSpeech2 vs deepspeech.pytorch")


if __name__ == "__main__":
    main()
