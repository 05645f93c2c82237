"""bench/harness.py statistics and timing, and bench/make_docs.py on a tiny fake result."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("harness")
make_docs = _load("make_docs")


def test_summarize_matches_numpy_style_quartiles() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0]
    s = harness.summarize(samples)
    assert s.median == statistics.median(samples) == 3.5
    # inclusive quartiles (linear interpolation on the sorted sample, like numpy.percentile's default)
    ordered = sorted(samples)

    def percentile(p: float) -> float:
        k = (len(ordered) - 1) * p
        lo = int(k)
        return ordered[lo] + (ordered[min(lo + 1, len(ordered) - 1)] - ordered[lo]) * (k - lo)

    assert s.q25 == pytest.approx(percentile(0.25)) and s.q75 == pytest.approx(percentile(0.75))
    assert (s.min, s.max, s.n) == (1.0, 100.0, 6)
    assert s.spread == pytest.approx((s.q75 - s.q25) / 3.5)
    one = harness.summarize([2.0])
    assert (one.median, one.q25, one.q75, one.spread) == (2.0, 2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        harness.summarize([])


def test_interleave_orders_calls_and_times_each() -> None:
    calls: list[str] = []

    def fast() -> None:
        calls.append("a")

    def slow() -> None:
        calls.append("b")
        time.sleep(0.02)

    stats = harness.interleave({"a": fast, "b": slow}, repeats=4, warmup=2, max_foreign_cores=None)
    assert calls == ["a", "b"] * 6  # two warm-up rounds, then four timed rounds, interleaved
    assert stats["a"].n == stats["b"].n == 4
    assert stats["b"].median >= 0.02 > stats["a"].median


def test_interleave_drops_loaded_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = iter([0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # round 2's first call ran beside a busy process

    class FakeLoad:
        def __enter__(self):
            self.cores = None
            return self

        def __exit__(self, *exc):
            self.cores = next(loads)

    monkeypatch.setattr(harness, "ForeignLoad", FakeLoad)
    values = iter([1.0, 1.0, 9.0, 9.0, 1.0, 1.0, 1.0, 1.0])  # the loaded round is slow
    clock = [0.0]

    def tick() -> float:
        return clock[0]

    def work() -> None:
        clock[0] += next(values)

    monkeypatch.setattr(harness.time, "perf_counter", tick)
    stats = harness.interleave({"a": work, "b": work}, repeats=4, warmup=0, min_clean=3)
    assert stats["a"].dropped == 1 and stats["a"].n == 3 and stats["a"].max == 1.0
    # with too few clean rounds everything is kept
    loads = iter([5.0] * 8)
    values = iter([1.0] * 8)
    stats = harness.interleave({"a": work, "b": work}, repeats=4, warmup=0, min_clean=3)
    assert stats["a"].dropped == 0 and stats["a"].n == 4


def test_count_flops_of_a_training_step() -> None:
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(16, 8)

    def step() -> None:
        layer(x).sum().backward()

    # forward x W^T and the weight gradient g^T x (x needs no gradient): 2 matmuls of 16*8*4 multiply-adds
    assert harness.count_flops(step) == 2 * 2 * 16 * 8 * 4


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_count_flops_of_grouped_conv_backward(groups: int) -> None:
    conv = torch.nn.Conv1d(16, 16, 5, padding=2, groups=groups, bias=False)
    x = torch.randn(2, 16, 30, requires_grad=True)

    def step() -> None:
        conv(x).sum().backward()

    # a naive count: every output element of y, of ∂x and of ∂w is a sum of per-group products
    macs_forward = 2 * 16 * 30 * (16 // groups) * 5  # y: (B, C_out, T), C_in/groups x K each
    macs_grad_input = 2 * 16 * 30 * (16 // groups) * 5  # ∂x: (B, C_in, T), C_out/groups x K each
    macs_grad_weight = 16 * (16 // groups) * 5 * 2 * 30  # ∂w: (C_out, C_in/groups, K), B x T each
    assert harness.count_flops(step) == 2 * (macs_forward + macs_grad_input + macs_grad_weight)


def test_matmul_rate_and_fraction() -> None:
    rate = harness.matmul_rate("cpu", torch.float32, 128)
    assert rate > 1e6
    assert harness.flops_fraction(rate, 2.0, "cpu", torch.float32, 128) == pytest.approx(0.5)  # cached rate reused


def test_cpu_time_uses_the_process_clock() -> None:
    seconds = harness.cpu_time(lambda: time.sleep(0.01), number=2, blocks=2)
    assert seconds < 0.005  # sleeping costs no CPU time


def fake_result(tmp_path: Path, value: float) -> Path:
    folder = tmp_path / "results"
    env = {
        "date": "2026-12-06 01:00 UTC",
        "command": "python bench/fake.py --steps 2",
        "git_commit": "abc1234",
        "torch": "2.14.1",
        "threads": 2,
        "cpu_count": 2,
        "device": "CPU: Test CPU",
        "load_average": [0.5, 0, 0],
    }
    tables = [
        harness.table(
            "Fake speed",
            [("model", "model"), ("ratio", "zoo / peer", ".2f"), ("missing", "n/a")],
            [{"model": "a|b", "ratio": value}],
            notes="a note",
        )
    ]
    return harness.write_result("fake", tables, env=env, folder=folder)


def test_write_result_and_make_docs_roundtrip(tmp_path: Path) -> None:
    path = fake_result(tmp_path, 1.23456)
    data = json.loads(path.read_text())
    assert data["environment"]["command"] == "python bench/fake.py --steps 2"
    assert len(data["environment"]["load_average_after"]) == 3
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nProse before.\n\n<!-- results: fake -->\nstale\n<!-- /results: fake -->\n\nProse after.\n"
    )
    assert make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs), "--check"]) == 1
    assert make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert "stale" not in text and "Prose before." in text and "Prose after." in text
    assert "| model | zoo / peer | n/a |" in text
    assert "| a\\|b | 1.23 | – |" in text
    assert "`python bench/fake.py --steps 2`" in text and "CPU: Test CPU" in text and "2026-12-06 01:00 UTC" in text
    assert "a note" in text
    assert make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs), "--check"]) == 0
    fake_result(tmp_path, 2.5)  # new numbers replace the block in place
    make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs)])
    text = docs.read_text()
    assert "| a\\|b | 2.50 | – |" in text and "1.23" not in text and text.count("<!-- results: fake -->") == 1


def test_make_docs_appends_unmarked_and_rejects_bad_json(tmp_path: Path) -> None:
    fake_result(tmp_path, 1.0)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs)])
    assert "## fake\n\n<!-- results: fake -->" in docs.read_text()
    (tmp_path / "results" / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="broken.json"):
        make_docs.main(["--results", str(tmp_path / "results"), "--docs", str(docs)])


def test_goals_are_kept_for_the_next_run_and_rendered_side_by_side(tmp_path: Path) -> None:
    """A run's goals are stored with the previous run's (taken from the file it replaces); a run that rewrites
    its own file (after each config) keeps the previous run's, not its own earlier values; the page says
    whether each goal held in both runs."""
    folder = tmp_path / "results"

    def run(values: dict[str, float | None], rewrites: int = 1) -> dict:
        env = harness.environment()
        env["date"] = f"run {time.monotonic_ns()}"
        for _ in range(rewrites):
            goals = [harness.goal(name, value, 1.0) for name, value in values.items()]
            goals.append(harness.goal("rmse ratio", 0.99, 1.0, higher_is_better=False))
            harness.write_result(
                "cmp", [harness.table("t", [("a", "a")], [{"a": 1}])], env=env, folder=folder, goals=goals
            )
        return json.loads((folder / "cmp.json").read_text())

    first = run({"fp32": 1.2, "best": 0.9})
    assert first["previous"] is None
    assert [g["held"] for g in first["goals"]] == [True, False, True]
    second = run({"fp32": 1.1, "best": 1.6}, rewrites=3)
    assert second["previous"]["date"] == first["environment"]["date"]
    assert [g["value"] for g in second["previous"]["goals"]] == [1.2, 0.9, 0.99]
    text = make_docs.render_block(second)
    assert "| fp32 | ≥ 1.00 | 1.20 | 1.10 | yes |" in text
    assert "| best | ≥ 1.00 | 0.90 | 1.60 | no |" in text
    assert "| rmse ratio | ≤ 1.00 | 0.99 | 0.99 | yes |" in text
    third = run({"fp32": None, "best": 1.7})  # a peer missing: not measured
    assert "| fp32 | ≥ 1.00 | 1.10 | – | – |" in make_docs.render_block(third)
    assert harness.goal("x", 1.0, 1.0)["held"] and not harness.goal("x", 1.01, 1.0, higher_is_better=False)["held"]
