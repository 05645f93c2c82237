"""Benchmark: the deep autoencoder recommender at Netflix size (arXiv 1708.01715).

1. Generates a Netflix-sized rating matrix directly into CSR arrays (``--scale 1``: 480,189 users x
   17,768 items, 100M distinct (user, item) ratings; user activity log-normal, item popularity
   Zipf-like, Netflix's rating histogram), chunk by chunk, and reports the RAM it takes (goal <= 4 GB).
2. Times training of the full-size model (``autorec-netflix-full``: n,512,512,1024,dp .8,512,512,n)
   with batches densified per step from the CSR matrix, SGD momentum 0.9 (fused), batch 128: users/s and
   achieved GFLOP/s, next to the GFLOP/s of a plain large matmul measured in the same run
   (goal >= 50 %: once a batch is dense the work is dense matmuls).

    python bench/recsys.py [--scale 0.25] [--steps 10] [--threads N]

Timings on a shared machine are noisy; both numbers come from the same run so their ratio is the
meaningful figure.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

import zoo
from zoo.datamodules.ratings import RatingMatrix
from zoo.recsys.losses import masked_mse

NETFLIX_USERS, NETFLIX_ITEMS, NETFLIX_RATINGS = 480_189, 17_768, 100_480_507
RATING_HISTOGRAM = np.array([0.046, 0.101, 0.287, 0.336, 0.230])  # Netflix Prize training set, stars 1..5


def max_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def generate(num_users: int, num_items: int, num_ratings: int, seed: int = 0, chunk: int = 20_000) -> RatingMatrix:
    """Random CSR ratings: distinct sorted items per user, generated ``chunk`` users at a time."""
    rng = np.random.default_rng(seed)
    counts = rng.lognormal(mean=0.0, sigma=1.2, size=num_users)
    counts = np.clip(np.round(counts * num_ratings / counts.sum()), 1, num_items // 2).astype(np.int64)
    popularity = np.cumsum(1.0 / np.arange(1, num_items + 1) ** 0.8)
    popularity /= popularity[-1]
    rating_cdf = np.cumsum(RATING_HISTOGRAM)
    indices, values, kept = [], [], np.zeros(num_users, dtype=np.int64)
    permutation = rng.permutation(num_items)  # popular items spread over the columns
    for lo in range(0, num_users, chunk):
        hi = min(lo + chunk, num_users)
        keys = np.zeros(0, dtype=np.int64)
        for _ in range(8):  # draw, drop repeated (user, item) pairs, top up the rows that fell short
            have = np.bincount(keys // num_items, minlength=hi - lo)
            need = counts[lo:hi] - have
            if need.sum() <= counts[lo:hi].sum() // 1000:  # within 0.1 % of the target
                break
            rows = np.repeat(np.arange(hi - lo, dtype=np.int64), need)
            items = permutation[np.searchsorted(popularity, rng.random(len(rows)))]
            keys = np.unique(np.concatenate([keys, rows * num_items + items]))  # sorted, distinct
        row_of = keys // num_items
        kept[lo:hi] = np.bincount(row_of, minlength=hi - lo)
        indices.append((keys % num_items).astype(np.int32))
        values.append((np.searchsorted(rating_cdf, rng.random(len(keys))) + 1).astype(np.float32))
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(kept, out=indptr[1:])
    return RatingMatrix(indptr, np.concatenate(indices), np.concatenate(values), num_items)


def train_flops_per_user(sizes: tuple[int, ...]) -> int:
    """Matmul FLOPs of one training step per user: forward, weight gradients, and input gradients
    for every layer but the first (the data needs no gradient). 2 FLOPs per multiply-add."""
    macs = [i * o for i, o in zip(sizes, sizes[1:])]
    layer_macs = macs + macs[::-1]  # encoder then mirrored decoder
    return 2 * (sum(layer_macs) + sum(layer_macs) + sum(layer_macs[1:]))


def matmul_gflops(size: int = 2048, repeats: int = 7) -> tuple[float, float]:
    """(wall-clock, per-CPU-second) GFLOP/s of a plain ``size``^3 float32 matmul (median of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 2 * size**3 / np.median(wall) / 1e9, 2 * size**3 / np.median(cpu) / 1e9


def train_throughput(matrix: RatingMatrix, steps: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    net = zoo.create("autorec-netflix-full", num_items=matrix.num_items)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.005, momentum=0.9, fused=True)  # same math, one kernel
    rng = np.random.default_rng(seed)
    buffer = torch.zeros(batch_size, matrix.num_items)
    densify_s, wall, cpu = 0.0, [], []
    for step in range(steps + 2):  # two warm-up steps
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = rng.integers(0, matrix.num_users, batch_size)
        x = matrix.dense(batch, out=buffer)
        dense_done = time.perf_counter()
        loss = masked_mse(net(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        end, end_cpu = time.perf_counter(), time.process_time()
        if step >= 2:
            densify_s += dense_done - start
            wall.append(end - start)
            cpu.append(end_cpu - start_cpu)
    flops = train_flops_per_user((matrix.num_items, *net.config.encoder_sizes)) * batch_size
    step_s, step_cpu = float(np.median(wall)), float(np.median(cpu))  # medians: robust to load spikes
    return {"users_per_s": batch_size / step_s, "gflops": flops / step_s / 1e9, "densify_share": densify_s / sum(wall),
            "step_s": step_s, "cpu_gflops": flops / step_cpu / 1e9, "cpu_users_per_s": batch_size / step_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Netflix's users (and ratings)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    users, ratings = int(NETFLIX_USERS * args.scale), int(NETFLIX_RATINGS * args.scale)
    rss_before = max_rss_gb()
    start, start_cpu = time.perf_counter(), time.process_time()
    matrix = generate(users, NETFLIX_ITEMS, ratings)
    gen_s, gen_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    dense_gb = matrix.num_users * matrix.num_items * 4 / 1e9
    print(f"data: {matrix.num_users:,} users x {matrix.num_items:,} items, {matrix.nnz:,} ratings "
          f"(scale {args.scale}), generated in {gen_s:.1f} s ({gen_cpu:.1f} CPU s)")
    print(f"  CSR arrays: {matrix.nbytes / 1e9:.2f} GB (goal <= 4 GB; dense float32 would be {dense_gb:.1f} GB); "
          f"peak RSS growth while generating: {max_rss_gb() - rss_before:.2f} GB")
    peak, peak_cpu = matmul_gflops()
    result = train_throughput(matrix, args.steps, args.batch_size)
    print(f"threads: {torch.get_num_threads()}; plain 2048^3 matmul: {peak:.1f} GFLOP/s wall, "
          f"{peak_cpu:.1f} GFLOP per CPU-second")
    print(f"train autorec-netflix-full, batch {args.batch_size}: {result['users_per_s']:.0f} users/s, "
          f"{result['step_s'] * 1000:.0f} ms/step median ({result['densify_share']:.1%} densifying), "
          f"{result['gflops']:.1f} GFLOP/s = {result['gflops'] / peak:.0%} of the matmul (goal >= 50 %)")
    print(f"  per CPU-second (robust to other load on a shared machine): {result['cpu_users_per_s']:.0f} users, "
          f"{result['cpu_gflops']:.1f} GFLOP = {result['cpu_gflops'] / peak_cpu:.0%} of the matmul's")
    epoch_h = matrix.num_users / result["users_per_s"] / 3600
    print(f"  one epoch over these {matrix.num_users:,} users: {epoch_h:.2f} h at this rate")


if __name__ == "__main__":
    main()
