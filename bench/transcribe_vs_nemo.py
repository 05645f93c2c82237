"""Inference: ``zoo transcribe``'s real-time factor vs NeMo's ``EncDecCTCModel.transcribe``, same QuartzNet weights.

Runs in the peers' virtual environment (``make bench-peers`` makes ``.venv-peers`` with NeMo 3.0.0 and
the zoo installed editable):

    .venv-peers/bin/python bench/transcribe_vs_nemo.py [--models quartznet-15x5 quartznet-small]
                                                       [--utterances 24] [--repeats 3] [--quick]

For each model a NeMo ``EncDecCTCModel`` is built with NeMo's own classes from a config dict (QuartzNet's
published preprocessor — 64 log-mels, 20 ms Hann window, 10 ms hop, per-feature normalisation,
``pad_to: 16`` — and the zoo preset's block list as NeMo's ``ConvASREncoder`` ``jasper:`` list,
``bench/jasper_vs_nemo.py``), with fixed-seed random weights made non-degenerate the way the NeMo
import fixtures are (``tests/fixtures/nemo/make_fixtures.py``: random batch-norm statistics, a decoder
that reads the encoder output's variation, so greedy transcripts change frame by frame). It is saved
with ``model.save_to`` and converted by the zoo's own command, ``zoo import-nemo``, into an exported
SpeechRecognizer folder that ``zoo.load`` reads. Before timing (the run stops if a check fails):
the encoder + decoder agree on NeMo's features of a padded batch (``jasper_vs_nemo.check_outputs``,
1e-4), the whole pipeline from the waveform (featurizer included, unfused and batch-norm-folded)
agrees with NeMo's ``forward`` on each of a few clips, and every greedy transcript of the timed files
is the same on both sides.

The audio: ``--utterances`` sentences of the project's synthetic corpus (``text: english``, espeak-ng
through ``libespeak-ng``, resampled to 16 kHz, 2-6 s each, written as 16-bit WAVs to a temporary
folder; nothing downloaded). Timed, in interleaved rounds (``bench/harness.py``, ``--threads``
threads, fp32, greedy decoding on both sides since NeMo's ``transcribe`` is greedy):

* NeMo ``model.transcribe(paths, batch_size=B, verbose=False)`` at its default ``B = 4`` and larger;
* the zoo's ``zoo.load(folder).transcribe(paths)`` as loaded (the API default: batch 8, batch norm
  unfolded) and with batch norm folded into the convolutions (``recognizer.fuse()``, what
  ``zoo transcribe`` does unless ``--no-fuse``) at batch 8 (the CLI's default) and larger.

Each call reads the WAV files, computes features, runs the network and decodes: the real-time factor
is its wall time / the seconds of audio (below 1: faster than real time). "best" is each side's
fastest setting. The ``zoo transcribe`` command is also run once end to end as a subprocess (Python
start, imports, model loading, the same files): its own reported factor (audio decoding included,
loading excluded) and the whole command's wall time. Results: ``bench/results/transcribe_vs_nemo.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile
import torch
from harness import ROOT, Stats, environment, interleave, table, write_result
from torch import Tensor, nn

MODELS = ("quartznet-15x5", "quartznet-small")
SAMPLE_RATE = 16000
FIXTURES = ROOT / "tests" / "fixtures" / "nemo"
#: the line ``zoo transcribe`` ends with (zoo/commands/transcribe.py)
CLI_SUMMARY = re.compile(
    r"(?P<files>\d+) file\(s\), (?P<audio>[\d.]+) s of audio in (?P<seconds>[\d.]+) s: real-time factor (?P<rtf>[\d.]+)"
)


def real_time_factor(seconds: float, audio_seconds: float) -> float:
    """Processing seconds per second of audio (below 1: faster than real time)."""
    if audio_seconds <= 0:
        raise ValueError(f"real_time_factor: no audio ({audio_seconds} s)")
    return seconds / audio_seconds


def parse_cli_summary(output: str) -> dict[str, float]:
    """``zoo transcribe``'s last line -> files, audio seconds, processing seconds and real-time factor."""
    matches = list(CLI_SUMMARY.finditer(output))
    if not matches:
        raise ValueError(f"no 'real-time factor' line in zoo transcribe's output: {output[-300:]!r}")
    return {key: float(value) for key, value in matches[-1].groupdict().items()}


def timing_rows(model: str, settings: dict[str, dict], stats: dict[str, Stats], audio_seconds: float) -> list[dict]:
    """One row per (system, setting): real-time factor, spread, and for the zoo its speed relative to
    NeMo at NeMo's default and at NeMo's best setting (NeMo's time / the zoo's); then a best-vs-best row.

    ``settings``: key -> ``{"system": "zoo" | "NeMo", "setting": text, "default": bool}``."""
    by_system = {s: [k for k in settings if settings[k]["system"] == s] for s in ("zoo", "NeMo")}
    best = {s: min(keys, key=lambda k: stats[k].median) for s, keys in by_system.items()}
    nemo_default = next(k for k in by_system["NeMo"] if settings[k]["default"])
    rows = []
    for key, info in settings.items():
        s = stats[key]
        label = (
            info["setting"]
            + (" (default)" if info["default"] else "")
            + (" (best)" if best[info["system"]] == key else "")
        )
        zoo_side = info["system"] == "zoo"
        rows.append(
            {
                "model": model,
                "system": info["system"],
                "setting": label,
                "seconds": s.median,
                "spread": s.spread,
                "dropped": s.dropped,
                "rtf": real_time_factor(s.median, audio_seconds),
                "cpu_rtf": real_time_factor(s.cpu_median, audio_seconds) if s.cpu_median is not None else None,
                "vs_nemo_default": stats[nemo_default].median / s.median if zoo_side else None,
                "vs_nemo_best": stats[best["NeMo"]].median / s.median if zoo_side else None,
                "cpu_vs_nemo_best": (
                    stats[best["NeMo"]].cpu_median / s.cpu_median if zoo_side and s.cpu_median else None
                ),
                "stats": s,
            }
        )
    zoo_best, nemo_best = stats[best["zoo"]], stats[best["NeMo"]]
    rows.append(
        {
            "model": model,
            "system": "zoo best / NeMo best",
            "setting": f"{settings[best['zoo']]['setting']} vs {settings[best['NeMo']]['setting']}",
            "vs_nemo_best": nemo_best.median / zoo_best.median,
            "cpu_vs_nemo_best": (
                nemo_best.cpu_median / zoo_best.cpu_median if nemo_best.cpu_median and zoo_best.cpu_median else None
            ),
        }
    )
    return rows


# ---------------------------------------------------------------------------------------------- audio
def make_wavs(folder: Path, count: int, seconds: tuple[float, float] = (2.0, 6.0), seed: int = 0) -> list[Path]:
    """``count`` espeak-ng sentences of the synthetic corpus (``text: english``) lasting ``seconds``, as
    16-bit 16 kHz WAVs in ``folder``."""
    from zoo.datamodules.espeak import Espeak, resample
    from zoo.datamodules.synthetic_speech import ESPEAK, SyntheticCorpusConfig, plan_corpus, voice_family

    config = SyntheticCorpusConfig(
        text="english", train_utterances=4 * count, val_utterances=0, test_utterances=0, seed=seed
    )
    engine = Espeak("auto")
    paths: list[Path] = []
    for utterance in plan_corpus(config):
        if len(paths) == count:
            break
        if voice_family(utterance.voicing.voice.split("+")[-1]) != ESPEAK:
            continue
        wave = resample(engine.render(utterance.text, utterance.voicing), engine.sample_rate, SAMPLE_RATE)
        if not seconds[0] <= len(wave) / SAMPLE_RATE <= seconds[1]:
            continue
        path = folder / f"{len(paths):03d}.wav"
        soundfile.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} of {count} synthetic sentences last {seconds[0]}-{seconds[1]} s")
    return paths


def audio_seconds(paths: Sequence[Path]) -> float:
    return sum(soundfile.info(str(p)).frames for p in paths) / SAMPLE_RATE


# ---------------------------------------------------------------------------------------------- models
def _fixtures_module():
    """The NeMo fixture maker (``tests/fixtures/nemo/make_fixtures.py``): its QuartzNet preprocessor,
    ``EncDecCTCModel`` config and weight randomisation."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nemo_make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_nemo(name: str, wavs: Sequence[Path], seed: int = 0):
    """A NeMo ``EncDecCTCModel`` with the zoo preset's encoder, QuartzNet's preprocessor and fixed-seed
    non-degenerate random weights (eval mode)."""
    from jasper_vs_nemo import nemo_blocks, zoo_config
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    fixtures = _fixtures_module()
    torch.manual_seed(seed)
    config = fixtures.model_config({"pre": fixtures.PRE, "jasper": nemo_blocks(zoo_config(name)), "encoder": {}})
    model = EncDecCTCModel(cfg=OmegaConf.create(config))
    fixtures.randomize(model, seed, list(wavs))
    return model.eval()


class NemoNetwork(nn.Module):
    """An ``EncDecCTCModel``'s encoder + decoder with ``jasper_vs_nemo.check_outputs``'s call signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        encoded, out_lengths = self.encoder(audio_signal=features, length=lengths)
        return self.decoder(encoder_output=encoded), out_lengths


def _waves(paths: Sequence[Path]) -> list[Tensor]:
    return [torch.from_numpy(soundfile.read(str(p), dtype="float32")[0]) for p in paths]


@torch.no_grad()
def check_pair(nemo, recognizers: dict[str, nn.Module], paths: Sequence[Path], tolerance: float = 1e-3) -> dict:
    """The checks before timing (SystemExit on a mismatch): encoder + decoder on NeMo's features of a
    padded batch (1e-4), the whole pipeline from each waveform (``tolerance``) and the greedy transcripts."""
    from jasper_vs_nemo import check_outputs

    nemo.eval()
    waves = _waves(paths[:4])
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    features, frames = nemo.preprocessor(input_signal=batch, length=lengths)
    report = {
        "network_max_diff": check_outputs(
            NemoNetwork(nemo), recognizers["unfused"].encoder, {"features": features, "lengths": frames}
        )
    }
    nemo.eval()
    for name, recognizer in recognizers.items():
        worst = 0.0
        for wave in waves:
            ref, ref_len, _ = nemo.forward(input_signal=wave[None], input_signal_length=torch.tensor([len(wave)]))
            ref = ref[0, : ref_len[0]]
            out = recognizer.log_probs([wave])[0]
            out = torch.cat([out[:, 1:], out[:, :1]], dim=-1)  # zoo: blank first -> NeMo: blank last
            if out.shape != ref.shape:
                raise SystemExit(f"{name}: zoo log-probs {tuple(out.shape)} vs NeMo {tuple(ref.shape)}")
            worst = max(worst, (out - ref).abs().max().item())
        if worst > tolerance:
            raise SystemExit(f"{name}: zoo and NeMo log-probabilities from the waveform differ by {worst:.2e}")
        report[f"pipeline_max_diff_{name}"] = worst
    nemo_texts = nemo_transcribe(nemo, paths, 4)
    for name, recognizer in recognizers.items():
        zoo_texts = [t.text for t in recognizer.transcribe([str(p) for p in paths])]
        differ = [
            (p.name, a, b) for p, a, b in zip(paths, nemo_texts, zoo_texts, strict=True) if a.split() != b.split()
        ]
        if differ:
            raise SystemExit(f"{name}: {len(differ)} of {len(paths)} greedy transcripts differ, e.g. {differ[0]}")
    report["transcripts_equal"] = len(paths)
    report["example_transcript"] = nemo_texts[0]
    return report


def nemo_transcribe(model, paths: Sequence[Path], batch_size: int) -> list[str]:
    out = model.transcribe([str(p) for p in paths], batch_size=batch_size, verbose=False)
    out = out[0] if isinstance(out, tuple) else out
    return [h.text if hasattr(h, "text") else h for h in out]


def bf16(call: Callable[[], list]) -> list:
    """``call()`` under ``torch.autocast("cpu", bfloat16)`` (neither ``transcribe`` has a precision option)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return call()


def run_cli(folder: Path, paths: Sequence[Path], threads: int) -> dict[str, float]:
    """``zoo transcribe --model FOLDER files...`` once as a subprocess: its own summary and the wall time."""
    program = Path(sys.executable).with_name("zoo")
    command = [str(program), "transcribe", "--model", str(folder), *map(str, paths)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"zoo transcribe failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    summary = parse_cli_summary(result.stdout + result.stderr)
    return {**summary, "wall": wall}


def compare(name: str, args: argparse.Namespace, paths: list[Path], work: Path) -> tuple[list[dict], dict, dict]:
    import zoo
    from zoo.commands import import_nemo

    nemo = build_nemo(name, paths[:4])
    params = sum(p.numel() for p in nemo.encoder.parameters()) + sum(p.numel() for p in nemo.decoder.parameters())
    nemo_file, folder = work / f"{name}.nemo", work / name
    nemo.save_to(str(nemo_file))
    if import_nemo.main([str(nemo_file), str(folder)]) != 0:
        raise SystemExit(f"zoo import-nemo {nemo_file} failed")
    unfused, fused = zoo.load(folder), zoo.load(folder).fuse()
    report = check_pair(nemo, {"unfused": unfused, "fused": fused}, paths)
    print(
        f"{name}: {params / 1e6:.2f}M parameters; network max |Δ log p| {report['network_max_diff']:.1e}, from the "
        f"waveform {report['pipeline_max_diff_unfused']:.1e} (BN folded {report['pipeline_max_diff_fused']:.1e}); "
        f"{report['transcripts_equal']} greedy transcripts equal, e.g. {report['example_transcript']!r}",
        flush=True,
    )
    files = [str(p) for p in paths]
    calls: dict[str, Callable[[], object]] = {}
    settings: dict[str, dict] = {}
    for b in args.nemo_batches:
        key = f"nemo/b{b}"
        calls[key] = lambda b=b: nemo_transcribe(nemo, paths, b)
        settings[key] = {"system": "NeMo", "setting": f"transcribe, batch {b}", "default": b == 4}
    if args.bf16:
        best_nemo = max(args.nemo_batches)
        calls["nemo/bf16"] = lambda: bf16(lambda: nemo_transcribe(nemo, paths, best_nemo))
        settings["nemo/bf16"] = {"system": "NeMo", "setting": f"bf16 autocast, batch {best_nemo}", "default": False}
    calls["zoo/unfused"] = lambda: unfused.transcribe(files)
    settings["zoo/unfused"] = {"system": "zoo", "setting": "zoo.load(...).transcribe, batch 8", "default": True}
    for b in args.zoo_batches:
        key = f"zoo/fused/b{b}"
        calls[key] = lambda b=b: fused.transcribe(files, batch_size=b)
        cli = " = zoo transcribe" if b == 8 else ""
        settings[key] = {"system": "zoo", "setting": f"BN folded{cli}, batch {b}", "default": False}
    if args.bf16:
        best_zoo = max(args.zoo_batches)
        calls["zoo/bf16"] = lambda: bf16(lambda: fused.transcribe(files, batch_size=best_zoo))
        settings["zoo/bf16"] = {
            "system": "zoo",
            "setting": f"BN folded, bf16 autocast, batch {best_zoo}",
            "default": False,
        }
    stats = interleave(calls, repeats=args.repeats, warmup=1)
    seconds = audio_seconds(paths)
    cli = run_cli(folder, paths, args.threads)
    rows = timing_rows(name, settings, stats, seconds) + [
        {
            "model": name,
            "system": "zoo",
            "setting": "`zoo transcribe` command, once (its own factor: audio decoding included, loading excluded)",
            "seconds": cli["seconds"],
            "rtf": cli["rtf"],
            "command_s": cli["wall"],
            "startup_s": cli["wall"] - cli["seconds"],
        }
    ]
    rows = [{"params_m": params / 1e6, **r} for r in rows]
    for r in rows:
        if "rtf" in r:
            print(
                f"  {r['system']:4s} {r['setting'][:60]:60s} {r['seconds']:.3f} s, RTF {r['rtf']:.4f}"
                + (f" (±{r['spread']:.0%})" if "spread" in r else "")
                + (f"  zoo/NeMo default {r['vs_nemo_default']:.2f}x" if r.get("vs_nemo_default") else ""),
                flush=True,
            )
        else:
            print(f"  {r['system']} ({r['setting']}): {r['vs_nemo_best']:.2f}x", flush=True)
    print(
        f"  zoo transcribe command: {cli['wall']:.1f} s in all, {cli['wall'] - cli['seconds']:.1f} s before the files"
    )
    return rows, report, {"audio_seconds": seconds, "files": len(paths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--utterances", type=int, default=24, help="synthetic sentences of 2-6 s")
    parser.add_argument("--nemo-batches", type=int, nargs="+", default=[4, 16], help="NeMo's default is 4")
    parser.add_argument("--zoo-batches", type=int, nargs="+", default=[8, 16], help="zoo transcribe's default is 8")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 autocast rows")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="quartznet-small only, 8 utterances, 3 rounds")
    parser.add_argument("--name", default="transcribe_vs_nemo", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    if args.quick:
        args.models, args.utterances, args.repeats = ["quartznet-small"], 8, 3
    if 4 not in args.nemo_batches:
        args.nemo_batches = [4, *args.nemo_batches]  # NeMo's default: the reference of every ratio
    try:
        import nemo
    except ImportError:
        print(
            "skipped: NeMo is not installed in this environment; run `make bench-peers` and use "
            ".venv-peers/bin/python bench/transcribe_vs_nemo.py"
        )
        return
    from jasper_vs_nemo import quiet_nemo

    quiet_nemo()
    torch.set_num_threads(args.threads)
    env = environment()
    env["nemo"] = nemo.__version__
    rows, checks, audio = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="transcribe_vs_nemo-") as tmp:
        work = Path(tmp)
        (work / "wavs").mkdir()
        paths = make_wavs(work / "wavs", args.utterances)
        for name in args.models:
            model_rows, checks[name], audio = compare(name, args, paths, work)
            rows += model_rows
    result = table(
        f"Transcription of {audio['files']} WAV files ({audio['audio_seconds']:.1f} s of synthetic speech, 2-6 s "
        f"each) vs NeMo {nemo.__version__} `transcribe`, same QuartzNet weights (fp32, greedy, {args.threads} "
        f"threads; interleaved medians of {args.repeats})",
        [
            ("model", "model"),
            ("params_m", "params (M)", ".2f"),
            ("system", "system"),
            ("setting", "setting"),
            ("seconds", "s / call", ".3f"),
            ("spread", "IQR / median", ".0%"),
            ("rtf", "real-time factor", ".4f"),
            ("cpu_rtf", "CPU-s / audio s", ".4f"),
            ("vs_nemo_default", "zoo speed / NeMo default", ".2f"),
            ("vs_nemo_best", "zoo speed / NeMo best", ".2f"),
            ("cpu_vs_nemo_best", "same, per CPU-s", ".2f"),
            ("command_s", "whole command s", ".1f"),
            ("startup_s", "of which before the files s", ".1f"),
        ],
        rows,
        notes="Same weights (a NeMo EncDecCTCModel saved as .nemo, converted by `zoo import-nemo`); before timing, "
        "the log-probabilities from the waveform and every greedy transcript were checked equal. A call reads the "
        "WAV files, computes features, runs the network and decodes; real-time factor = its wall time / audio "
        "seconds (lower is faster); speed ratios = NeMo's time / the zoo's.",
    )
    write_result(args.name, [result], env=env, title="zoo transcribe vs NeMo transcribe", checks=checks, audio=audio)


if __name__ == "__main__":
    main()
