"""bench/transcribe_vs_nemo.py without NeMo: the real-time-factor arithmetic, the rows and ratios built from
the harness's statistics, the parser of ``zoo transcribe``'s own summary line (read from the real
command's output), and the one-line skip when NeMo is not importable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports bench/harness.py as `harness`
    try:
        spec = importlib.util.spec_from_file_location("bench_transcribe_vs_nemo", BENCH / "transcribe_vs_nemo.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_real_time_factor(bench) -> None:
    assert bench.real_time_factor(0.5, 20.0) == pytest.approx(0.025)
    assert bench.real_time_factor(30.0, 10.0) == pytest.approx(3.0)  # slower than real time
    with pytest.raises(ValueError, match="no audio"):
        bench.real_time_factor(1.0, 0.0)


def test_timing_rows_ratios_and_best(bench) -> None:
    from harness import summarize

    stats = {
        "nemo/b4": summarize([2.0, 2.2, 2.4], cpu=[4.0, 4.4, 4.8]),
        "nemo/b16": summarize([1.6, 1.6, 1.7], cpu=[3.2, 3.2, 3.4]),
        "zoo/unfused": summarize([1.8, 1.9, 2.0], cpu=[3.6, 3.8, 4.0]),
        "zoo/fused": summarize([0.8, 0.8, 0.9], cpu=[1.6, 1.6, 1.8]),
    }
    settings = {
        "nemo/b4": {"system": "NeMo", "setting": "batch 4", "default": True},
        "nemo/b16": {"system": "NeMo", "setting": "batch 16", "default": False},
        "zoo/unfused": {"system": "zoo", "setting": "as loaded", "default": True},
        "zoo/fused": {"system": "zoo", "setting": "folded", "default": False},
    }
    rows = bench.timing_rows("m", settings, stats, audio_seconds=40.0)
    by = {r["setting"]: r for r in rows}
    assert set(by) == {
        "batch 4 (default)",
        "batch 16 (best)",
        "as loaded (default)",
        "folded (best)",
        "folded vs batch 16",
    }
    assert by["batch 4 (default)"]["rtf"] == pytest.approx(2.2 / 40)
    assert by["batch 4 (default)"]["cpu_rtf"] == pytest.approx(4.4 / 40)
    assert by["batch 4 (default)"]["vs_nemo_default"] is None  # ratios are the zoo's rows only
    assert by["as loaded (default)"]["vs_nemo_default"] == pytest.approx(2.2 / 1.9)
    assert by["as loaded (default)"]["vs_nemo_best"] == pytest.approx(1.6 / 1.9)
    assert by["as loaded (default)"]["cpu_vs_nemo_best"] == pytest.approx(3.2 / 3.8)
    best = by["folded vs batch 16"]
    assert best["system"] == "zoo best / NeMo best"
    assert best["vs_nemo_best"] == pytest.approx(1.6 / 0.8)
    assert best["cpu_vs_nemo_best"] == pytest.approx(3.2 / 1.6)


def test_parse_cli_summary_of_the_real_command(bench, tmp_path, capsys) -> None:
    import soundfile

    from zoo.cli import main
    from zoo.registry import network_dict
    from zoo.speech.jasper import Jasper, JasperConfig
    from zoo.speech.recognizer import SpeechRecognizer

    torch.manual_seed(0)
    config = JasperConfig(
        prologue_filters=8, prologue_dropout=0.0, blocks=((8, 5, 1, 0.0),), epilogue=((8, 1, 1, 0.0),), residual="plain"
    )
    SpeechRecognizer(encoder=network_dict(Jasper, config)).save_pretrained(tmp_path / "rec")
    wave = (torch.randn(24000, generator=torch.Generator().manual_seed(1)) * 0.1).numpy()
    for name in ("a", "b"):
        soundfile.write(tmp_path / f"{name}.wav", wave, 16000)
    capsys.readouterr()
    assert main(["transcribe", "--model", str(tmp_path / "rec"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]) == 0
    summary = bench.parse_cli_summary(capsys.readouterr().out)
    assert summary["files"] == 2 and summary["audio"] == pytest.approx(3.0)
    assert summary["rtf"] == pytest.approx(
        summary["seconds"] / summary["audio"], abs=2e-3
    )  # the line rounds seconds to 0.01
    with pytest.raises(ValueError, match="real-time factor"):
        bench.parse_cli_summary("zoo transcribe: a.wav: not an audio file\n")


def test_skips_in_one_line_without_nemo() -> None:
    pytest.importorskip("zoo")
    if importlib.util.find_spec("nemo") is not None:
        pytest.skip("NeMo is installed in this environment")
    result = subprocess.run(
        [sys.executable, str(BENCH / "transcribe_vs_nemo.py"), "--quick", "--name", "never_written"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "skipped: NeMo is not installed in this environment; run `make bench-peers` and use "
        ".venv-peers/bin/python bench/transcribe_vs_nemo.py"
    ]
    assert not (BENCH / "results" / "never_written.json").exists()
