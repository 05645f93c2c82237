"""The zoo's autoencoder recommender vs NVIDIA/DeepRecommender's own ``run.py`` training loop.

Both train on the same MovieLens-100k split (the zoo's embedded real ml-100k, per-user time split,
seed 0: each user's first 70 % of ratings train, the rest split 50/50 into validation and test;
the training and test ratings are written as the peer's tab-separated files) with the network and
batch of DeepRecommender's README command, its item count scaled to ml-100k (n = 1,682):
n,512,512,1024,dp 0.8,1024,512,512,n, SELU everywhere (the last layer too), batch 128, SGD momentum
0.9, lr 0.005, no weight decay, one dense re-feeding step per batch (``--aug_step 1``), the peer's
learning-rate schedule (halved at epochs 24, 36, 48, 66, 72), ``--epochs`` epochs each.

* peer: ``run.py``'s ``main()`` imported from ``$ZOO_PEER_DEEPRECOMMENDER`` and run in this process
  with that command line (its ``logger.py`` only feeds TensorBoard, so a stand-in records the
  ``Epoch_time`` and ``EVALUATION_RMSE`` it logs; its closing ONNX export is skipped). Its data
  provider drops the last partial batch of each epoch (896 of 943 users trained per epoch).
* zoo: ``AutoEncoderRecommender`` (``refeed_steps=1``) + ``RatingsDataModule`` in a Lightning
  ``Trainer`` (all 943 users per epoch), the same optimizer (in its fused form, the zoo's default
  ``paper_sgd`` setting) and schedule.

users/s = users trained per epoch / training time of the epoch (median over epochs; re-feeding
steps included on both sides), also per CPU-second of its process. The two runs of a seed are **interleaved
epoch by epoch** (:class:`Turns`): each runs in the main thread of its own process (started with ``spawn``)
and, at the start of every epoch, hands the turn to the other and waits for it, so one side's epoch always
runs next to the other's and a machine whose speed drifts over minutes (measured here: both sides' epochs
moving between 0.34 and 0.64 s within a run) slows both alike, as the harness's interleaved steps do. (Not two
threads of one process: ATen's element-wise kernels ran up to 2x slower in a second thread here, an epoch
20-30 % slower.) Epochs during which other processes
used more than ``MAX_FOREIGN_CORES`` of a core are left out of the medians (all epochs are kept when fewer
than ``MIN_CLEAN_EPOCHS`` are clean, and the JSON records how many were dropped). Test RMSE after the last
epoch (peer: its ``do_eval`` on the test file with the training vectors as inputs, as the zoo evaluates;
zoo: unclamped, and clamped to [1, 5] as ``zoo test`` reports it). ``--repeats`` seeds (0, 1, ...).

    python bench/recsys_vs_deeprecommender.py [--epochs 30] [--repeats 2]

The peer's checkout comes from ``$ZOO_PEER_DEEPRECOMMENDER``, else ``../shared/peers/DeepRecommender`` beside this
checkout when present.

Results: ``bench/results/recsys_vs_deeprecommender.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import multiprocessing
import os
import queue as queue_module
import random
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from harness import ROOT, ForeignLoad, environment, goal, table, write_result

from zoo.datamodules.ratings import RatingMatrix, RatingsDataModule
from zoo.lightning_modules.autoencoder_recommender import AutoEncoderRecommender

ENV_VAR = "ZOO_PEER_DEEPRECOMMENDER"
HIDDEN = (512, 512, 1024)
BATCH, LR, DROPOUT = 128, 0.005, 0.8
MILESTONES = (24, 36, 48, 66, 72)  # run.py's MultiStepLR (epochs), gamma 0.5
MAX_FOREIGN_CORES = 0.1  # an epoch during which other processes used more is left out of the medians
MIN_CLEAN_EPOCHS = 3


def peer_folder() -> Path | None:
    folder = os.environ.get(ENV_VAR)
    shared = ROOT.parent / "shared" / "peers" / "DeepRecommender"  # the unmodified copy beside this checkout
    if not folder:
        return shared if (shared / "run.py").is_file() else None
    path = Path(folder)
    if not (path / "run.py").is_file() or not (path / "reco_encoder").is_dir():
        raise SystemExit(f"{ENV_VAR}={folder}: not a DeepRecommender checkout (no run.py / reco_encoder)")
    return path


def write_peer_file(matrix: RatingMatrix, folder: Path) -> None:
    """``user<TAB>item<TAB>rating`` lines (the zoo's user / item indices), the peer's input format."""
    folder.mkdir(parents=True, exist_ok=True)
    users = np.repeat(np.arange(matrix.num_users), matrix.row_counts())
    lines = [f"{u}\t{i}\t{r:g}" for u, i, r in zip(users.tolist(), matrix.indices.tolist(), matrix.values.tolist())]
    (folder / "ratings.txt").write_text("\n".join(lines) + "\n")


class Turns:
    """Two runs, one process each, taking turns: a run waits for its turn before it starts (:meth:`begin`),
    hands the turn over and waits for it again at the start of every epoch (:meth:`next_epoch`), and hands it
    over for good when it ends (:meth:`end`). Only one side computes at a time; its setup and evaluation
    between epochs run in its own turn, outside the timed epochs. Made of ``context``'s (multiprocessing)
    primitives, so it travels to the processes that run the sides."""

    def __init__(self, first: str, second: str, context: multiprocessing.context.BaseContext) -> None:
        self._sides = (first, second)
        self._turn = context.Value("i", 0, lock=False)  # index of the side whose turn it is
        self._ended = context.Array("b", 2, lock=False)
        self._condition = context.Condition()

    def _index(self, side: str) -> int:
        return self._sides.index(side)

    def begin(self, side: str) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._turn.value == self._index(side))

    def next_epoch(self, side: str) -> None:
        me = self._index(side)
        with self._condition:
            if not self._ended[1 - me]:
                self._turn.value = 1 - me
                self._condition.notify_all()
            self._condition.wait_for(lambda: self._turn.value == me)

    def end(self, side: str) -> None:
        me = self._index(side)
        with self._condition:
            self._ended[me] = 1
            self._turn.value = 1 - me
            self._condition.notify_all()


class _EpochClock(io.StringIO):
    """run.py's stdout, timestamped: it prints ``Doing epoch`` before and ``Total epoch`` after the
    training batches of every epoch, so the wall and CPU time between the two is the epoch's training.
    With ``turns`` the peer hands the turn to the zoo at every ``Doing epoch`` before its clock starts."""

    def __init__(self, turns: Turns | None = None) -> None:
        super().__init__()
        self.turns = turns
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.foreign: list[float | None] = []

    def write(self, text: str) -> int:
        if text.startswith(("Doing epoch", "Total epoch")):
            self._mark(text.startswith("Doing"))
        return super().write(text)

    def _mark(self, start: bool) -> None:
        if start and self.turns is not None:
            self.turns.next_epoch("peer")
        wall, cpu = time.perf_counter(), time.process_time()
        if start:
            self._load = ForeignLoad().__enter__()
            self._start = (wall, cpu)
        else:
            self.wall.append(wall - self._start[0])
            self.cpu.append(cpu - self._start[1])
            self._load.__exit__(None, None, None)
            self.foreign.append(self._load.cores)


class _Recorder:
    """Stand-in for DeepRecommender's TensorBoard ``logger.Logger``: keeps the scalars it is given."""

    scalars: dict[str, list[tuple[int, float]]] = {}

    def __init__(self, logdir: str) -> None:
        type(self).scalars = {}

    def scalar_summary(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, float(value)))

    def histo_summary(self, tag: str, values, step: int, bins: int = 1000) -> None:
        pass


def run_peer(
    folder: Path, train_dir: Path, test_dir: Path, epochs: int, seed: int, logdir: Path, turns: Turns | None = None
) -> dict:
    """DeepRecommender's ``run.main()`` with the README command's settings, in this process (taking ``turns``
    with the zoo's run epoch by epoch when given)."""
    argv = [
        "run.py",
        "--path_to_train_data",
        str(train_dir),
        "--path_to_eval_data",
        str(test_dir),
        "--hidden_layers",
        ",".join(map(str, HIDDEN)),
        "--non_linearity_type",
        "selu",
        "--batch_size",
        str(BATCH),
        "--logdir",
        str(logdir),
        "--drop_prob",
        str(DROPOUT),
        "--optimizer",
        "momentum",
        "--lr",
        str(LR),
        "--weight_decay",
        "0",
        "--aug_step",
        "1",
        "--noise_prob",
        "0",
        "--num_epochs",
        str(epochs),
        "--summary_frequency",
        "1000",
        "--save_every",
        str(epochs),
    ]
    saved_argv, saved_path, saved_logger = sys.argv, list(sys.path), sys.modules.get("logger")
    sys.argv = argv
    sys.path.insert(0, str(folder))
    sys.modules["logger"] = types.SimpleNamespace(Logger=_Recorder)
    export = torch.onnx.export
    torch.onnx.export = lambda *a, **k: None  # run.py ends with an ONNX export; training is done by then
    random.seed(seed)
    torch.manual_seed(seed)
    out = _EpochClock(turns)
    try:
        spec = importlib.util.spec_from_file_location("deeprecommender_run", folder / "run.py")
        run = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(run)  # parses sys.argv at import
            with ForeignLoad() as load:
                run.main()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        torch.onnx.export = export
        if saved_logger is None:
            sys.modules.pop("logger", None)
        else:
            sys.modules["logger"] = saved_logger
    if len(out.wall) != epochs:
        raise RuntimeError(f"DeepRecommender ran {len(out.wall)} epochs, expected {epochs}:\n{out.getvalue()[-2000:]}")
    return {
        "epoch_times": out.wall,
        "epoch_cpu": out.cpu,
        "epoch_foreign_cores": out.foreign,
        "epoch_times_logged": [v for _, v in _Recorder.scalars["Epoch_time"]],
        "test_rmse": _Recorder.scalars["EVALUATION_RMSE"][-1][1],
        "foreign_cores": load.cores,
    }


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (batches, re-feeding and optimizer steps; no validation). With
    ``turns`` the zoo hands the turn to the peer at the start of every epoch before its clock starts."""

    def __init__(self, turns: Turns | None = None) -> None:
        self.turns = turns
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.foreign: list[float | None] = []
        self.users = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.turns is not None:
            self.turns.next_epoch("zoo")
        self.users = 0
        self._load = ForeignLoad().__enter__()
        self._start, self._start_cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.users += len(batch["inputs"])

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.cpu.append(time.process_time() - self._start_cpu)
        self._load.__exit__(None, None, None)
        self.foreign.append(self._load.cores)


def run_zoo(
    data: RatingsDataModule, epochs: int, seed: int, batches_per_epoch: int, turns: Turns | None = None
) -> dict:
    """The zoo's training of the same network (AutoEncoderRecommender in a Lightning Trainer), taking
    ``turns`` with the peer's run epoch by epoch when given."""
    pl.seed_everything(seed, verbose=False)
    steps_per_epoch = 2 * batches_per_epoch  # each batch: one sparse step + one re-feeding step
    model = AutoEncoderRecommender(
        network="autorec-netflix-full",
        network_overrides={"encoder_sizes": HIDDEN, "dropout": DROPOUT},
        refeed_steps=1,
        rating_range=(1.0, 5.0),
        optimizer=partial(torch.optim.SGD, lr=LR, momentum=0.9, weight_decay=0.0, fused=True),
        # run.py steps MultiStepLR once at the start of every epoch (milestone m: lr halves from epoch m - 1);
        # the zoo steps its scheduler after every optimizer step
        lr_scheduler=partial(
            torch.optim.lr_scheduler.MultiStepLR, milestones=[(m - 1) * steps_per_epoch for m in MILESTONES], gamma=0.5
        ),
    )
    timer = EpochTimer(turns)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    with ForeignLoad() as load:
        trainer.fit(model, datamodule=data)
    tester = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    clamped = tester.test(model, datamodule=data, verbose=False)[0]["test/rmse"]
    model.hparams.rating_range = None
    unclamped = tester.test(model, datamodule=data, verbose=False)[0]["test/rmse"]
    return {
        "epoch_times": timer.times,
        "epoch_cpu": timer.cpu,
        "epoch_foreign_cores": timer.foreign,
        "users_per_epoch": timer.users,
        "test_rmse": unclamped,
        "test_rmse_clamped": clamped,
        "foreign_cores": load.cores,
    }


def _run_side(side: str, turns: Turns, run: Callable[..., dict], kwargs: dict, threads: int, results) -> None:
    """A spawned process: ``run(**kwargs, turns=turns)`` in its main thread, its result (or the error's
    traceback) put on ``results``."""
    torch.set_num_threads(threads)
    turns.begin(side)
    try:
        results.put((side, run(**kwargs, turns=turns), None))
    except BaseException:  # reported by the parent
        results.put((side, None, traceback.format_exc()))
    finally:
        turns.end(side)


def run_interleaved(
    peer: tuple[Callable[..., dict], dict], zoo: tuple[Callable[..., dict], dict], threads: int = 2
) -> tuple[dict, dict]:
    """``peer = (run, kwargs)`` and ``zoo`` likewise, each ``run(**kwargs, turns=turns)`` in its own spawned
    process, taking turns epoch by epoch (:class:`Turns`); an error in either ends its turns (the other runs
    on alone) and is raised here with its traceback. ``run`` must be importable (module level)."""
    context = multiprocessing.get_context("spawn")
    turns, queue = Turns("peer", "zoo", context), context.Queue()
    processes = [
        context.Process(target=_run_side, args=(name, turns, run, kwargs, threads, queue))
        for name, (run, kwargs) in (("peer", peer), ("zoo", zoo))
    ]
    for process in processes:
        process.start()
    results, errors = {}, []
    while len(results) < len(processes):
        try:
            side, result, error = queue.get(timeout=1.0)
        except queue_module.Empty:  # a process that failed before reporting (e.g. it could not unpickle its run);
            for name, process in zip(("peer", "zoo"), processes):  # one that exits with 0 has put its result
                if name not in results and process.exitcode not in (None, 0):
                    results[name] = None
                    errors.append(f"{name}: its process exited with code {process.exitcode} before reporting")
                    turns.end(name)
            continue
        results[side] = result
        if error:
            errors.append(f"{side}: {error}")
    for process in processes:
        process.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return results["peer"], results["zoo"]


def run_zoo_on_ml100k(epochs: int, seed: int, turns: Turns | None = None) -> dict:
    """:func:`run_zoo` on the bench's MovieLens-100k split (built again in a spawned process)."""
    data = RatingsDataModule(None, split="user", seed=0, batch_size=BATCH, eval_batch_size=1024)
    users = int((data.load().train.row_counts() > 0).sum())
    return run_zoo(data, epochs, seed, -(-users // BATCH), turns)


def clean_epochs(run: dict) -> list[int]:
    """Indices of the epochs during which other processes used at most ``MAX_FOREIGN_CORES`` of a core
    (all epochs when fewer than ``MIN_CLEAN_EPOCHS`` are clean, or the load could not be read)."""
    clean = [i for i, c in enumerate(run["epoch_foreign_cores"]) if c is not None and c <= MAX_FOREIGN_CORES]
    return clean if len(clean) >= MIN_CLEAN_EPOCHS else list(range(len(run["epoch_times"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="peer / zoo run pairs (seeds 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="recsys_vs_deeprecommender")
    args = parser.parse_args()
    folder = peer_folder()
    if folder is None:
        print(
            f"skipped: set {ENV_VAR} to a checkout of https://github.com/NVIDIA/DeepRecommender (commit a32a8a5) "
            "to compare against its run.py"
        )
        return
    torch.set_num_threads(args.threads)
    env = environment()
    data = RatingsDataModule(None, split="user", seed=0, batch_size=BATCH, eval_batch_size=1024)
    s = data.load()
    users = int((s.train.row_counts() > 0).sum())
    peer_users = (users - 1) // BATCH * BATCH  # iterate_one_epoch: batches while end < len(users)
    print(f"MovieLens-100k, per-user time split: {s.stats}; {users} training users, batch {BATCH}")
    runs: dict[str, list[dict]] = {"peer": [], "zoo": []}
    with tempfile.TemporaryDirectory(prefix="zoo-deeprec-") as tmp:
        write_peer_file(s.train, Path(tmp) / "train")
        write_peer_file(s.test, Path(tmp) / "test")
        for seed in range(args.repeats):
            train, test, log = Path(tmp) / "train", Path(tmp) / "test", Path(tmp) / f"log{seed}"
            peer, zoo = run_interleaved(
                (
                    run_peer,
                    dict(folder=folder, train_dir=train, test_dir=test, epochs=args.epochs, seed=seed, logdir=log),
                ),
                (run_zoo_on_ml100k, dict(epochs=args.epochs, seed=seed)),
                threads=args.threads,
            )
            peer["users_per_epoch"] = peer_users
            for name, r in (("peer", peer), ("zoo", zoo)):
                kept = clean_epochs(r)
                r["epochs_dropped"] = len(r["epoch_times"]) - len(kept)
                r["users_per_s"] = r["users_per_epoch"] / statistics.median(r["epoch_times"][i] for i in kept)
                r["users_per_cpu_s"] = r["users_per_epoch"] / statistics.median(r["epoch_cpu"][i] for i in kept)
                r["epoch_s"] = statistics.median(r["epoch_times"][i] for i in kept)
                runs[name].append(r)
                print(
                    f"seed {seed} {name}: {r['users_per_s']:.0f} users/s, {r['users_per_cpu_s']:.0f} per CPU-s "
                    "(median epoch "
                    f"{r['epoch_s']:.3f} s, {r['epochs_dropped']} loaded epochs dropped), "
                    f"test RMSE {r['test_rmse']:.4f}",
                    flush=True,
                )
    rows = []
    for name, label in (("peer", "DeepRecommender run.py"), ("zoo", "zoo AutoEncoderRecommender + Trainer")):
        rs = runs[name]
        rows.append(
            {
                "system": label,
                "users_per_s": statistics.median(r["users_per_s"] for r in rs),
                "users_per_cpu_s": statistics.median(r["users_per_cpu_s"] for r in rs),
                "epoch_s": statistics.median(r["epoch_s"] for r in rs),
                "epochs_dropped": sum(r["epochs_dropped"] for r in rs),
                "users_per_epoch": rs[0]["users_per_epoch"],
                "test_rmse": statistics.fmean(r["test_rmse"] for r in rs),
                "test_rmse_clamped": statistics.fmean(r["test_rmse_clamped"] for r in rs) if name == "zoo" else None,
                "rmse_each": ", ".join(f"{r['test_rmse']:.4f}" for r in rs),
            }
        )
    speed = rows[1]["users_per_s"] / rows[0]["users_per_s"]
    rows[1]["vs_peer"], rows[0]["vs_peer"] = speed, 1.0
    rows[1]["cpu_vs_peer"], rows[0]["cpu_vs_peer"] = rows[1]["users_per_cpu_s"] / rows[0]["users_per_cpu_s"], 1.0
    print(
        f"zoo / peer users/s: {speed:.2f}x; test RMSE zoo {rows[1]['test_rmse']:.4f} vs peer {rows[0]['test_rmse']:.4f}"
    )
    result = table(
        f"Autoencoder recommender vs DeepRecommender on MovieLens-100k (n,512,512,1024,dp 0.8; batch {BATCH}, "
        f"SGD momentum lr {LR}, 1 re-feeding step; {args.epochs} epochs, {args.repeats} seed(s), {args.threads} "
        "threads)",
        [
            ("system", "system"),
            ("users_per_s", "users/s (median)", ",.0f"),
            ("vs_peer", "vs peer", ".2f"),
            ("users_per_cpu_s", "users per CPU-s", ",.0f"),
            ("cpu_vs_peer", "per CPU-s vs peer", ".2f"),
            ("epoch_s", "s / epoch", ".3f"),
            ("epochs_dropped", "loaded epochs dropped"),
            ("users_per_epoch", "users / epoch"),
            ("test_rmse", "test RMSE (mean)", ".4f"),
            ("test_rmse_clamped", "test RMSE, clamped to [1, 5]", ".4f"),
            ("rmse_each", "test RMSE per seed"),
        ],
        rows,
        notes=f"Same split: {s.stats}. Goal: users/s ≥ the peer's and test RMSE lower.",
    )
    goals = [
        goal("users/s vs the peer's", speed, 1.0),
        goal("test RMSE, zoo / peer (same function)", rows[1]["test_rmse"] / rows[0]["test_rmse"], 1.0, False),
    ]
    write_result(args.name, [result], env=env, goals=goals, title="Recommender vs NVIDIA/DeepRecommender", runs=runs)


if __name__ == "__main__":
    main()
