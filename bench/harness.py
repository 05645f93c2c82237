"""The one timing harness every script in ``bench/`` uses.

* :func:`environment` — what a number was measured on: torch version, threads, device, CPU model,
  load average, date, command, git commit.
* :func:`interleave` — times several callables (A/B/C...) in interleaved rounds after warm-up, one
  :func:`synchronize` after each call, and returns :class:`Stats` (median, quartiles, min, max) per
  callable. Each round also records how busy the *other* processes kept the machine (from
  ``/proc/stat`` minus this process's CPU time); rounds in which they used more than
  ``max_foreign_cores`` are dropped from the statistics when enough clean rounds remain.
* :func:`cpu_time` — ``torch.utils.benchmark.Timer`` with a CPU-time clock for small single-thread
  callables (best of blocks).
* :func:`count_flops` — FLOPs of one call (``torch.utils.flop_counter.FlopCounterMode``: matmuls and
  convolutions, forward and backward), and :func:`matmul_rate` — the machine's measured dense matmul
  rate, so ``flops / seconds / rate`` says how close a step is to the limit.
* :func:`write_result` — ``bench/results/<name>.json`` with the environment, the command, the raw
  rows and the tables ``bench/make_docs.py`` renders into ``docs/benchmarks.md``; with the benchmark's
  :func:`goal` values, and those of the run before it (kept from the file it replaces), so the page
  shows whether each goal held in two consecutive runs.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued accelerator work (no-op on the CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on (stored with every result)."""
    device = torch.device(device)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "device": device_name(device),
        "hostname": platform.node(),
        "load_average": list(os.getloadavg()),
        "run_started": time.time(),  # tells this run's later rewrites of its file from an earlier run's file
    }


def command_line() -> str:
    """The command that ran this benchmark, relative to the repository root where possible."""
    argv = list(sys.argv)
    if argv:
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
        except ValueError:
            pass
    return "python " + shlex.join(argv)


def _busy_ticks() -> int | None:
    """Busy CPU ticks of the whole machine since boot (``/proc/stat``: everything but idle and iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ForeignLoad:
    """CPU cores used by *other* processes while a block of code ran (machine busy minus our own CPU time).

    ``/proc/stat`` counts in ticks (10 ms), so blocks shorter than ~50 ms give no usable figure (``None``).
    """

    def __enter__(self) -> ForeignLoad:
        self.cores: float | None = None
        self._busy, self._own, self._wall = _busy_ticks(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, wall = _busy_ticks(), time.process_time(), time.perf_counter()
        elapsed = wall - self._wall
        if busy is None or self._busy is None or elapsed < 0.05:
            return
        self.cores = max(0.0, ((busy - self._busy) / _TICK - (own - self._own)) / elapsed)


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings (seconds)."""

    median: float
    q25: float
    q75: float
    min: float
    max: float
    n: int
    dropped: int = 0  # rounds left out because other processes were busy
    cpu_median: float | None = None  # median CPU seconds of this process (all its threads) per call

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q75 - self.q25) / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "spread": self.spread}


def summarize(samples: Sequence[float], dropped: int = 0, cpu: Sequence[float] | None = None) -> Stats:
    """Median, quartiles (inclusive method: the sample's own range), min and max; ``cpu``: CPU seconds
    of the same calls (their median is kept)."""
    if not samples:
        raise ValueError("summarize: no samples")
    values = sorted(float(x) for x in samples)
    if len(values) == 1:
        q25 = q75 = values[0]
    else:
        q25, _, q75 = statistics.quantiles(values, n=4, method="inclusive")
    cpu_median = statistics.median(cpu) if cpu else None
    return Stats(statistics.median(values), q25, q75, values[0], values[-1], len(values), dropped, cpu_median)


def interleave(
    callables: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    max_foreign_cores: float | None = 0.1,
    min_clean: int = 3,
) -> dict[str, Stats]:
    """Time each callable ``repeats`` times in interleaved rounds (A B C A B C ...) after ``warmup`` rounds.

    Every call is followed by one :func:`synchronize`. A round counts as *loaded* when, during any of
    its calls, other processes used more than ``max_foreign_cores`` cores; loaded rounds are dropped
    if at least ``min_clean`` clean rounds remain (``Stats.dropped`` says how many), else all rounds
    are kept. ``max_foreign_cores=None`` keeps everything.
    """
    names = list(callables)
    for _ in range(warmup):
        for name in names:
            callables[name]()
            synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    loaded: list[bool] = []
    for _ in range(repeats):
        busy = False
        for name in names:
            with ForeignLoad() as load:
                start, start_cpu = time.perf_counter(), time.process_time()
                callables[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            busy |= max_foreign_cores is not None and load.cores is not None and load.cores > max_foreign_cores
        loaded.append(busy)
    clean = [i for i, busy in enumerate(loaded) if not busy]
    keep = clean if len(clean) >= min(min_clean, repeats) else list(range(repeats))
    return {
        name: summarize([times[name][i] for i in keep], repeats - len(keep), [cpu[name][i] for i in keep])
        for name in names
    }


def once(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Wall seconds of one call (e.g. a first step that compiles), synchronized."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def cpu_time(fn: Callable[[], Any], number: int, blocks: int = 5, label: str = "") -> float:
    """CPU seconds per call of ``fn``, best of ``blocks`` blocks of ``number`` calls (after one warm-up call).

    ``torch.utils.benchmark.Timer`` with ``time.process_time`` as its clock and this process's thread
    count: CPU time and the best block because a shared machine's other load inflates wall time.
    """
    from torch.utils.benchmark import Timer

    fn()
    timer = Timer(
        stmt="fn()", globals={"fn": fn}, timer=time.process_time, num_threads=torch.get_num_threads(), label=label
    )
    return min(timer.timeit(number).median for _ in range(blocks))


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape,
    **kwargs,
) -> int:
    """``torch.utils.flop_counter``'s convolution-backward count with the weight gradient divided by
    ``groups`` (torch 2.14 counts it as if the conv were dense: 86x too much for a depthwise conv of 256
    channels, which would hide how far QuartzNet's step is from the matmul limit)."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape: list[int]) -> list[int]:
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # ∂x: a transposed conv of the output gradient with the (per-group) weight
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # ∂w: a conv of the input with the output gradient, within each group
        x, g = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        flops += conv_flop_count(t(x), t(g), t(out_shape[1])) // groups
    return flops


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward; 2 per multiply-add;
    grouped-conv weight gradients counted per group, see :func:`_conv_backward_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def default_matmul_size(device: str = "cpu") -> int:
    return 8192 if torch.device(device).type == "cuda" else 2048


@functools.lru_cache(maxsize=None)
def matmul_stats(
    device: str = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None, repeats: int = 5
) -> Stats:
    """Timings of a square ``size``³ matmul on ``device`` with this process's threads (cached per arguments)."""
    dev = torch.device(device)
    size = size or default_matmul_size(device)
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    return interleave({"mm": lambda: torch.mm(a, b)}, repeats=repeats, warmup=1, device=dev, max_foreign_cores=None)[
        "mm"
    ]


def matmul_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None) -> float:
    """Measured FLOP/s (wall clock, median) of a square ``size``³ matmul: the machine's dense-compute limit."""
    size = size or default_matmul_size(device)
    return 2 * size**3 / matmul_stats(device, dtype, size).median


def flops_fraction(
    flops: float, seconds: float, device: str = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None
) -> float:
    """Achieved FLOP/s of ``flops`` in ``seconds`` as a fraction of :func:`matmul_rate` (same arguments)."""
    return flops / seconds / matmul_rate(device, dtype, size)


@dataclass
class Column:
    """One column of a results table: the row key, its header and a ``format`` spec (e.g. ``.2f``)."""

    key: str
    header: str
    fmt: str = ""


def table(
    title: str,
    columns: Sequence[Column | tuple[str, str] | tuple[str, str, str]],
    rows: Sequence[Mapping[str, Any]],
    notes: str = "",
) -> dict[str, Any]:
    """A table for ``docs/benchmarks.md``: raw row values, formatted by ``bench/make_docs.py``."""
    cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
    return {"title": title, "columns": [asdict(c) for c in cols], "rows": [dict(r) for r in rows], "notes": notes}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Stats):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def goal(name: str, value: float | None, target: float, higher_is_better: bool = True) -> dict[str, Any]:
    """A goal a benchmark measures, e.g. ``goal("5x1024 fp32 vs peer fp32", 1.07, 1.0)``; ``held`` is None when
    the value could not be measured (a peer missing)."""
    held = None if value is None else bool(value >= target if higher_is_better else value <= target)
    return {"goal": name, "value": value, "target": target, "higher_is_better": higher_is_better, "held": held}


def _previous_run(path: Path, env: Mapping[str, Any]) -> dict[str, Any] | None:
    """The goals of the run before this one: from the file about to be replaced, unless that file is this
    run's own earlier write (then what it kept as the previous run)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    old_env = old.get("environment", {})
    if old_env.get("run_started") is not None and old_env.get("run_started") == env.get("run_started"):
        return old.get("previous")
    if not old.get("goals"):
        return None
    return {"date": old_env.get("date"), "git_commit": old_env.get("git_commit"), "goals": old["goals"]}


def write_result(
    name: str,
    tables: Sequence[Mapping[str, Any]],
    env: Mapping[str, Any] | None = None,
    folder: Path | None = None,
    goals: Sequence[Mapping[str, Any]] = (),
    **extra: Any,
) -> Path:
    """Write ``<folder>/<name>.json`` (default ``bench/results``) and return its path.

    ``env`` is :func:`environment` taken at the start of the run; the load average at the end is
    added as ``load_average_after``. ``goals`` (:func:`goal`) are stored with those of the previous run
    (``previous``: its date, commit and goals), taken from the file this one replaces.
    """
    env = dict(env or environment())
    env["load_average_after"] = list(os.getloadavg())
    folder = folder or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"name": name, "environment": env, "tables": list(tables), **extra}
    if goals:
        payload["goals"] = list(goals)
        payload["previous"] = _previous_run(path, env)
    path.write_text(json.dumps(_jsonable(payload), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path
