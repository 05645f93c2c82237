"""Language-model recurrent layers: training throughput (tokens/s of forward + backward).

    python bench/lm.py [--iters 3] [--paper-iters 1] [--skip-paper] [--threads 1] [--device cuda]
                       [--precision fp32|bf16]

1. BN-LSTM (``zoo.text.bn_lstm.BNLSTM``; its recurrence as the C++ loop and as the Python loop,
   ``ZOO_BN_LSTM_KERNEL=cpp|python``) against
   * the fused ``nn.LSTM`` (oneDNN / cuDNN kernel; goal at the demo size: BN-LSTM ≤ 2.5× its time), and
   * a naive BN-LSTM written here: one Python step per time step doing everything per step
     (``W_x x_t`` inside the loop, ``torch.cat([x, h])``-free but one ``nn.BatchNorm1d`` module per
     time step and term, gates split by indexing) — the textbook implementation
     (goal at the demo size: the zoo's ≥ 3× faster),
   at the demo size (256 units, batch 32, 100 steps), the paper's PTB size (1000 units,
   batch 64, 100 steps; 1603.09025 §5.2) and a small size (128 units, batch 32, 100 steps) where
   per-op overhead rather than arithmetic dominates. Also the time of the matrix products alone
   (``W_x x`` for all steps, ``W_h h`` per step, their backward): a floor that every
   implementation of the equations shares, naive or not.
2. F-LSTM (r) and G-LSTM (k = 4) against LSTMP (``zoo.text.factorized_lstm``, the same loop code)
   at BIGLSTM's proportions scaled down by 4 (n = 2048, p = 256, F128 = n/16 like F512 for n = 8192;
   1703.10722 §4), 2 layers, batch 32, 20 steps; also the parameter counts.

``--precision bf16`` runs every implementation, the naive loop and the matrix products included,
under ``torch.autocast`` with bfloat16 (on CPUs with AMX or AVX512-BF16 the products then run 2-3×
faster; batch norm, gates and cell stay in float32 as autocast keeps them).

Every figure comes from this run; times are the best of ``--iters`` timed iterations after one
warm-up (best-of, because the CPU is shared and noisy). Ratios are of per-token time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.text.bn_lstm import BNLSTM, BNLSTMConfig
from zoo.text.factorized_lstm import FactorizedLSTM, FactorizedLSTMConfig


class NaiveBNLSTM(nn.Module):
    """Eqs. 6-8 one time step at a time, with one nn.BatchNorm1d per step and per normalised term."""

    def __init__(self, input_size: int, hidden_size: int, steps: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.wx = nn.Linear(input_size, 4 * hidden_size, bias=False)
        self.wh = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.bn_x = nn.ModuleList(nn.BatchNorm1d(4 * hidden_size) for _ in range(steps))
        self.bn_h = nn.ModuleList(nn.BatchNorm1d(4 * hidden_size) for _ in range(steps))
        self.bn_c = nn.ModuleList(nn.BatchNorm1d(hidden_size) for _ in range(steps))

    def forward(self, x: Tensor) -> Tensor:
        n = self.hidden_size
        h = x.new_zeros(x.shape[1], n)
        c = x.new_zeros(x.shape[1], n)
        outputs = []
        for t in range(x.shape[0]):
            pre = self.bn_h[t](self.wh(h)) + self.bn_x[t](self.wx(x[t])) + self.bias
            f, i, o, g = pre[:, :n], pre[:, n : 2 * n], pre[:, 2 * n : 3 * n], pre[:, 3 * n :]
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.bn_c[t](c))
            outputs.append(h)
        return torch.stack(outputs)


def synchronize(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast(x: Tensor, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32)


@contextlib.contextmanager
def bn_lstm_kernel(kernel: str) -> Iterator[None]:
    """The zoo's BN-LSTM recurrence to time: ``cpp`` or ``python`` (``zoo.text.bn_recurrence``)."""
    before = os.environ.get("ZOO_BN_LSTM_KERNEL")
    os.environ["ZOO_BN_LSTM_KERNEL"] = kernel
    try:
        yield
    finally:
        if before is None:
            del os.environ["ZOO_BN_LSTM_KERNEL"]
        else:
            os.environ["ZOO_BN_LSTM_KERNEL"] = before


def time_training(model: nn.Module, x: Tensor, run: Callable[[nn.Module, Tensor], Tensor], iters: int,
                  dtype: torch.dtype = torch.float32) -> float:
    """Best wall time of forward + backward of ``sum(output)`` over ``iters`` iterations (after a warm-up),
    the forward under autocast to ``dtype`` unless that is float32."""
    model.to(x.device).train()
    best = float("inf")
    for i in range(iters + 1):
        model.zero_grad(set_to_none=True)
        synchronize(x)
        start = time.perf_counter()
        with autocast(x, dtype):
            out = run(model, x)
        out.float().sum().backward()
        synchronize(x)
        elapsed = time.perf_counter() - start
        if i > 0:
            best = min(best, elapsed)
    return best


def time_matmuls(hidden: int, batch: int, steps: int, iters: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> float:
    """Best time of the BN-LSTM's matrix products alone, in ``dtype``: ``W_x x`` (all steps at once),
    ``W_h h_{t−1}`` per step, and in the backward ``∂h_{t−1}`` per step and the two weight gradients
    (``x`` is a leaf)."""
    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    x = randn(steps * batch, hidden)
    w_x, w_h = randn(4 * hidden, hidden), randn(4 * hidden, hidden)
    h, grad = randn(batch, hidden), randn(batch, 4 * hidden)
    grads = randn(steps * batch, 4 * hidden)
    best = float("inf")
    for i in range(iters + 1):
        synchronize(x)
        start = time.perf_counter()
        torch.mm(x, w_x.t())
        for _ in range(steps):
            torch.mm(h, w_h.t())
            torch.mm(grad, w_h)
        torch.mm(grads.t(), x)
        torch.mm(grads.t(), x)
        synchronize(x)
        elapsed = time.perf_counter() - start
        if i > 0:
            best = min(best, elapsed)
    return best


def bn_lstm_rows(hidden: int, batch: int, steps: int, iters: int, naive_iters: int,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(steps, batch, hidden, device=device)
    ours = BNLSTM(BNLSTMConfig(input_size=hidden, hidden_size=hidden, max_length=steps))
    fused = nn.LSTM(hidden, hidden)
    naive = NaiveBNLSTM(hidden, hidden, steps)
    tokens = batch * steps
    times = {}
    kernels = ["cpp", "python"] if device.type == "cpu" else ["python"]
    for kernel in kernels:
        with bn_lstm_kernel(kernel):
            times[f"BN-LSTM (zoo, {kernel})"] = time_training(ours, x, lambda m, v: m(v)[0], iters, dtype)
    times["nn.LSTM (fused)"] = time_training(fused, x, lambda m, v: m(v)[0], iters, dtype)
    times["BN-LSTM (naive loop)"] = time_training(naive, x, lambda m, v: m(v), naive_iters, dtype)
    times["matrix products alone"] = time_matmuls(hidden, batch, steps, iters, device, dtype)
    return [(name, tokens / t) for name, t in times.items()]


def factorized_rows(iters: int, device: torch.device, dtype: torch.dtype) -> list[tuple[str, int, float]]:
    torch.manual_seed(0)
    n, p, batch, steps = 2048, 256, 32, 20
    x = torch.randn(steps, batch, p, device=device)
    rows = []
    for name, extra in (("LSTMP", {}), ("F-LSTM F128 (r = n/16)", {"factor_size": 128}),
                        ("F-LSTM F512 (r = n/4)", {"factor_size": 512}), ("G-LSTM G4", {"groups": 4})):
        model = FactorizedLSTM(FactorizedLSTMConfig(input_size=p, hidden_size=n, projection_size=p, num_layers=2, **extra))
        params = sum(q.numel() for q in model.parameters())
        rows.append((name, params, batch * steps / time_training(model, x, lambda m, v: m(v)[0], iters, dtype)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--paper-iters", type=int, default=1)
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadier on a shared CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=sorted(PRECISION), default="fp32",
                        help="bf16: every implementation under torch.autocast(bfloat16)")
    args = parser.parse_args()
    dtype = PRECISION[args.precision]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, {args.precision}; "
          f"best of {args.iters} iterations")
    sizes = [("demo", 256, 32, 100, args.iters)]
    if not args.skip_paper:
        sizes.append(("paper (PTB)", 1000, 64, 100, args.paper_iters))
    sizes.append(("small", 128, 32, 100, args.iters))
    for label, hidden, batch, steps, iters in sizes:
        rows = dict(bn_lstm_rows(hidden, batch, steps, iters, iters, device, dtype))
        print(f"\n{label}: {hidden} units, batch {batch}, {steps} steps (forward + backward)")
        for name, rate in rows.items():
            print(f"  {name:26s} {rate:10.0f} tokens/s")
        fused, naive = rows["nn.LSTM (fused)"], rows["BN-LSTM (naive loop)"]
        for name in (name for name in rows if name.startswith("BN-LSTM (zoo")):
            print(f"  {name}: {fused / rows[name]:5.2f}x the nn.LSTM time (goal at demo size <= 2.5x), "
                  f"{rows[name] / naive:5.2f}x faster than the naive loop (goal at demo size >= 3x)")
        floor = rows["matrix products alone"]
        print(f"  naive loop time / matrix products alone: {floor / naive:5.2f}x  (the most any implementation can gain)")
    print("\nF-LSTM / G-LSTM vs LSTMP: n = 2048, p = 256, 2 layers, batch 32, 20 steps (forward + backward)")
    rows = factorized_rows(args.iters, device, dtype)
    base = rows[0][2]
    for name, params, rate in rows:
        print(f"  {name:24s} {params / 1e6:6.2f}M params {rate:9.0f} tokens/s  {rate / base:4.2f}x LSTMP")


if __name__ == "__main__":
    main()
