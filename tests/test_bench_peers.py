"""The peer benchmarks' own translation code, offline: the zoo configs written as NeMo block lists
(bench/jasper_vs_nemo.py) read back by the zoo's importer, and the DeepRecommender data files."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import bench/harness.py as `harness`
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.parametrize("name", ["jasper-demo", "quartznet-small", "quartznet-15x5", "jasper-10x5dr", "jasper-5x3"])
def test_nemo_block_list_reads_back_as_the_zoo_config(name: str) -> None:
    from zoo.speech.nemo_import import jasper_config

    bench = _load("jasper_vs_nemo")
    config = bench.zoo_config(name)
    blocks = bench.nemo_blocks(config)
    assert blocks[0]["stride"] == [config.prologue_stride] and not blocks[0]["residual"]
    assert sum(b["residual"] for b in blocks) == len(config.blocks) * (config.residual != "none")
    assert all(b["residual_dense"] == (config.residual == "dense" and b["residual"]) for b in blocks)
    imported, parsed = jasper_config({"feat_in": config.in_features, "activation": "relu", "jasper": blocks}, 29)
    assert asdict(imported) == asdict(replace(config, num_classes=29))
    assert len(parsed) == len(blocks)


def test_peer_rating_file_round_trip(tmp_path: Path) -> None:
    from zoo.datamodules.ratings import RatingMatrix

    bench = _load("recsys_vs_deeprecommender")
    rows, cols = np.array([0, 0, 2, 3]), np.array([5, 1, 0, 5])
    matrix = RatingMatrix.from_coo(rows, cols, np.array([4.0, 3.5, 1.0, 5.0]), num_users=4, num_items=6)
    bench.write_peer_file(matrix, tmp_path / "train")
    lines = (tmp_path / "train" / "ratings.txt").read_text().splitlines()
    assert lines == ["0\t1\t3.5", "0\t5\t4", "2\t0\t1", "3\t5\t5"]  # user <TAB> item <TAB> rating, user 1 has none


def _epochs(name: str, epochs: int, fail: bool = False, turns=None) -> dict:
    """A stand-in run for the interleaving tests (module level: the spawned processes import it): ``epochs``
    epochs of 20 ms, each started with ``turns.next_epoch``; ``(start, end)`` monotonic times of each."""
    import time

    spans = []
    for epoch in range(epochs):
        turns.next_epoch(name)
        if fail:
            raise RuntimeError(f"{name} failed in epoch {epoch}")
        start = time.monotonic()
        time.sleep(0.02)
        spans.append((start, time.monotonic()))
    return {"spans": spans}


def test_recsys_bench_interleaves_the_two_runs_epoch_by_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer's and the zoo's runs, each in its own process, take turns: their epochs alternate and never
    overlap, and a side with more epochs runs on alone once the other has ended; an error in one side is
    raised with its traceback after the other has finished."""
    monkeypatch.syspath_prepend(str(BENCH))  # imported by name, so that the spawned processes find its functions
    import recsys_vs_deeprecommender as bench

    peer, zoo = bench.run_interleaved((_epochs, dict(name="peer", epochs=3)), (_epochs, dict(name="zoo", epochs=5)))
    spans = sorted([(*span, "peer") for span in peer["spans"]] + [(*span, "zoo") for span in zoo["spans"]])
    assert [side for _, _, side in spans] == ["peer", "zoo"] * 3 + ["zoo"] * 2
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(spans, spans[1:]))
    with pytest.raises(RuntimeError, match="peer failed in epoch 0"):
        bench.run_interleaved((_epochs, dict(name="peer", epochs=2, fail=True)), (_epochs, dict(name="zoo", epochs=3)))


def test_recsys_bench_leaves_out_loaded_epochs() -> None:
    """Epochs during which other processes used more than
    0.1 core are left out of the medians, unless fewer than 3 epochs are clean (then all are kept)."""
    bench = _load("recsys_vs_deeprecommender")
    run = {"epoch_times": [0.35, 9.0, 0.36, 0.34, 0.9], "epoch_foreign_cores": [0.0, 1.8, 0.05, 0.1, 0.6]}
    assert bench.clean_epochs(run) == [0, 2, 3]
    run["epoch_foreign_cores"] = [0.0, 1.8, None, 0.5, 0.6]  # None: the load could not be read
    assert bench.clean_epochs(run) == [0, 1, 2, 3, 4]


def test_recsys_bench_epoch_clock_records_each_epoch() -> None:
    """run.py's "Doing epoch" / "Total epoch" lines delimit the timed epochs, each with its foreign load."""
    bench = _load("recsys_vs_deeprecommender")
    clock = bench._EpochClock()
    for epoch in range(2):
        clock.write(f"Doing epoch {epoch} of 2\n")
        sum(range(200_000))
        clock.write(f"Total epoch {epoch} finished in 0.1 seconds\n")
    assert len(clock.wall) == len(clock.cpu) == len(clock.foreign) == 2
    assert all(w > 0 for w in clock.wall)
