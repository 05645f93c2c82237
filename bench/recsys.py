"""Benchmark: the deep autoencoder recommender at Netflix size (arXiv 1708.01715).

1. Generates a Netflix-sized rating matrix directly into CSR arrays (``--scale 1``: 480,189 users x
   17,768 items, 100M distinct (user, item) ratings; user activity log-normal, item popularity
   Zipf-like, Netflix's rating histogram), chunk by chunk, and reports the RAM it takes (goal <= 4 GB).
2. Times training of the full-size model (``autorec-netflix-full``: n,512,512,1024,dp .8,512,512,n)
   with batches densified per step from the CSR matrix, SGD momentum 0.9 (fused): users/s and
   achieved GFLOP/s for each ``--batch-sizes`` (the paper's is 128), with the share of a step spent
   densifying, in the loss (forward + backward) and in the optimizer step, next to two references
   measured in the same run: a plain square 2048^3 matmul, and the very matmuls of one training step
   (same shapes: forward, weight and input gradients of every layer) timed on their own
   (goal >= 50 %: once a batch is dense the work is dense matmuls).

    python bench/recsys.py [--scale 0.25] [--steps 10] [--batch-sizes 128 512 1024] [--threads N]
    python bench/recsys.py --device cuda     # batches densified on the CPU, copied to the GPU (pinned)

Timings on a shared machine are noisy; both numbers come from the same run so their ratio is the
meaningful figure (medians; ``bench/harness.py``). Results: ``bench/results/recsys.json``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from harness import environment, interleave, matmul_stats, summarize, synchronize, table, write_result

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


def matmul_gflops(
    size: int = 2048, repeats: int = 7, device: torch.device = torch.device("cpu")
) -> tuple[float, float]:
    """(wall-clock, per-CPU-second) GFLOP/s of a plain ``size``^3 float32 matmul (median of ``repeats``)."""
    stats = matmul_stats(str(device), torch.float32, size, repeats)
    return 2 * size**3 / stats.median / 1e9, 2 * size**3 / stats.cpu_median / 1e9


def step_matmuls(
    sizes: tuple[int, ...], batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Operand pairs of the matmuls of one training step, as :func:`train_flops_per_user` counts them:
    per layer (encoder then mirrored decoder) the forward ``x W^T``, the weight gradient ``g^T x`` and,
    except for the first layer, the input gradient ``g W``; weights stored (out, in) as in the model."""
    layers = [(i, o) for i, o in zip(sizes, sizes[1:])]
    layers += [(o, i) for i, o in layers[::-1]]
    pairs = []
    for k, (i, o) in enumerate(layers):
        x, w, g = (
            torch.randn(batch_size, i, device=device),
            torch.randn(o, i, device=device),
            torch.randn(batch_size, o, device=device),
        )
        pairs += [(x, w.t()), (g.t(), x)] + ([(g, w)] if k else [])
    return pairs


def same_shape_matmul_gflops(
    sizes: tuple[int, ...], batch_size: int, repeats: int = 5, device: torch.device = torch.device("cpu")
) -> tuple[float, float]:
    """(wall-clock, per-CPU-second) GFLOP/s of the step's matmuls alone (median of ``repeats``)."""
    pairs = step_matmuls(sizes, batch_size, device)
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)

    def call() -> None:
        for a, b in pairs:
            torch.mm(a, b)

    stats = interleave({"matmuls": call}, repeats=repeats, warmup=1, device=device)["matmuls"]
    return flops / stats.median / 1e9, flops / stats.cpu_median / 1e9


def train_throughput(
    matrix: RatingMatrix, steps: int, batch_size: int, seed: int = 0, device: torch.device = torch.device("cpu")
) -> dict[str, float]:
    torch.manual_seed(seed)
    net = zoo.create("autorec-netflix-full", num_items=matrix.num_items).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.005, momentum=0.9, fused=True)  # same math, one kernel
    rng = np.random.default_rng(seed)
    buffer = torch.zeros(batch_size, matrix.num_items, pin_memory=device.type == "cuda")
    parts = {"densify": 0.0, "loss": 0.0, "optimizer": 0.0}
    wall, cpu = [], []

    def now() -> float:  # wall clock after the device has finished what was queued
        synchronize(device)
        return time.perf_counter()

    for step in range(steps + 2):  # two warm-up steps
        start, start_cpu = now(), time.process_time()
        batch = rng.integers(0, matrix.num_users, batch_size)
        x = matrix.dense(batch, out=buffer).to(device, non_blocking=True)
        t_dense = now()
        outputs = net(x)
        t_forward = now()
        loss = masked_mse(outputs, x)
        t_loss = now()
        optimizer.zero_grad(set_to_none=True)
        # the loss's own backward, timed apart from the network's (retain_graph: the network's part is next)
        (d_outputs,) = torch.autograd.grad(loss, outputs, retain_graph=True)
        t_loss_backward = now()
        outputs.backward(d_outputs)
        t_backward = now()
        optimizer.step()
        end, end_cpu = now(), time.process_time()
        if step >= 2:
            parts["densify"] += t_dense - start
            parts["loss"] += (t_loss - t_forward) + (t_loss_backward - t_loss)
            parts["optimizer"] += end - t_backward
            wall.append(end - start)
            cpu.append(end_cpu - start_cpu)
    flops = train_flops_per_user((matrix.num_items, *net.config.encoder_sizes)) * batch_size
    stats = summarize(wall, cpu=cpu)  # medians: robust to load spikes
    step_s, step_cpu = stats.median, stats.cpu_median
    shares = {f"{name}_share": seconds / sum(wall) for name, seconds in parts.items()}
    return {
        "users_per_s": batch_size / step_s,
        "gflops": flops / step_s / 1e9,
        "step_s": step_s,
        "cpu_gflops": flops / step_cpu / 1e9,
        "cpu_users_per_s": batch_size / step_cpu,
        "stats": stats,
        **shares,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Netflix's users (and ratings)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[128, 512, 1024], help="the paper trains with 128"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fp32 on both; TF32 off)")
    parser.add_argument("--name", default="recsys", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(device)
    users, ratings = int(NETFLIX_USERS * args.scale), int(NETFLIX_RATINGS * args.scale)
    rss_before = max_rss_gb()
    start, start_cpu = time.perf_counter(), time.process_time()
    matrix = generate(users, NETFLIX_ITEMS, ratings)
    gen_s, gen_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    dense_gb = matrix.num_users * matrix.num_items * 4 / 1e9
    print(
        f"data: {matrix.num_users:,} users x {matrix.num_items:,} items, {matrix.nnz:,} ratings "
        f"(scale {args.scale}), generated in {gen_s:.1f} s ({gen_cpu:.1f} CPU s)"
    )
    print(
        f"  CSR arrays: {matrix.nbytes / 1e9:.2f} GB (goal <= 4 GB; dense float32 would be {dense_gb:.1f} GB); "
        f"peak RSS growth while generating: {max_rss_gb() - rss_before:.2f} GB"
    )
    square = 8192 if device.type == "cuda" else 2048
    peak, peak_cpu = matmul_gflops(square, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"threads: {torch.get_num_threads()}"
    print(
        f"{where}; plain {square}^3 float32 matmul: {peak:.1f} GFLOP/s wall, "
        f"{peak_cpu:.1f} GFLOP per CPU-second (host CPU time on a GPU: ignore the per-CPU-s columns there)"
    )
    sizes = (matrix.num_items, *zoo.create("autorec-netflix-full", num_items=8).config.encoder_sizes)
    print(
        "| batch | users/s | ms/step | densify / loss / optimizer share | train GFLOP/s (wall; per CPU-s) "
        "| same-shape matmuls GFLOP/s (wall; per CPU-s) | train / square matmul | train / same-shape |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for batch_size in args.batch_sizes:
        r = train_throughput(matrix, args.steps, batch_size, device=device)
        same, same_cpu = same_shape_matmul_gflops(sizes, batch_size, device=device)
        rows.append(
            {
                "batch": batch_size,
                **r,
                "same_gflops": same,
                "same_cpu_gflops": same_cpu,
                "vs_square": r["gflops"] / peak,
                "vs_square_cpu": r["cpu_gflops"] / peak_cpu,
                "vs_same": r["gflops"] / same,
                "vs_same_cpu": r["cpu_gflops"] / same_cpu,
            }
        )
        print(
            f"| {batch_size} | {r['users_per_s']:.0f} | {r['step_s'] * 1000:.0f} | {r['densify_share']:.1%} / "
            f"{r['loss_share']:.1%} / {r['optimizer_share']:.1%} | {r['gflops']:.1f}; {r['cpu_gflops']:.1f} | "
            f"{same:.1f}; {same_cpu:.1f} | {r['gflops'] / peak:.0%}; {r['cpu_gflops'] / peak_cpu:.0%} | "
            f"{r['gflops'] / same:.0%}; {r['cpu_gflops'] / same_cpu:.0%} |",
            flush=True,
        )
        epoch_h = matrix.num_users / r["users_per_s"] / 3600
        print(
            f"  (batch {batch_size}: one epoch over these {matrix.num_users:,} users takes {epoch_h:.2f} h at this "
            "rate)"
        )
    train = table(
        f"Autoencoder recommender training, autorec-netflix-full on {matrix.num_users:,} users x "
        f"{matrix.num_items:,} items ({matrix.nnz:,} ratings, scale {args.scale:g})",
        [
            ("batch", "batch"),
            ("users_per_s", "users/s", ",.0f"),
            ("step_s", "s / step", ".3f"),
            ("densify_share", "densify", ".1%"),
            ("loss_share", "loss", ".1%"),
            ("optimizer_share", "optimizer", ".1%"),
            ("gflops", "train GFLOP/s", ".1f"),
            ("same_gflops", "same-shape matmuls GFLOP/s", ".1f"),
            ("vs_square", "of square matmul", ".0%"),
            ("vs_same", "of same-shape matmuls", ".0%"),
            ("vs_same_cpu", "per CPU-s, of same-shape", ".0%"),
        ],
        rows,
        notes=f"Square {square}³ fp32 matmul: {peak:.1f} GFLOP/s wall, {peak_cpu:.1f} per CPU-second. "
        f"CSR arrays {matrix.nbytes / 1e9:.2f} GB (goal ≤ 4 GB), generated in {gen_s:.1f} s.",
    )
    write_result(
        args.name,
        [train],
        env=env,
        title="Recommender at Netflix scale",
        data={
            "users": matrix.num_users,
            "items": matrix.num_items,
            "ratings": matrix.nnz,
            "csr_gb": matrix.nbytes / 1e9,
            "generate_s": gen_s,
        },
    )


if __name__ == "__main__":
    main()
