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

Every figure comes from this run: at each size all implementations are timed in ``--iters``
interleaved rounds after one warm-up round (``bench/harness.py``; medians, rounds during which other
processes were busy dropped when enough clean ones remain). Ratios are of per-token time. The zoo
rows also give the FLOPs of forward + backward (FlopCounterMode) and their fraction of this machine's
measured matmul rate. Results: ``bench/results/lm[_bf16].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from harness import count_flops, environment, interleave, matmul_rate, table, write_result
from torch import Tensor, nn

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


def training_call(
    model: nn.Module,
    x: Tensor,
    run: Callable[[nn.Module, Tensor], Tensor],
    dtype: torch.dtype = torch.float32,
    kernel: str | None = None,
) -> Callable[[], None]:
    """One forward + backward of ``sum(output)``, the forward under autocast to ``dtype`` unless that is
    float32 (and with the zoo BN-LSTM recurrence ``kernel`` when given)."""
    model.to(x.device).train()

    def call() -> None:
        with bn_lstm_kernel(kernel) if kernel else contextlib.nullcontext():
            model.zero_grad(set_to_none=True)
            with autocast(x, dtype):
                out = run(model, x)
            out.float().sum().backward()

    return call


def matmuls_call(
    hidden: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Callable[[], None]:
    """The BN-LSTM's matrix products alone, in ``dtype``: ``W_x x`` (all steps at once),
    ``W_h h_{t−1}`` per step, and in the backward ``∂h_{t−1}`` per step and the two weight gradients
    (``x`` is a leaf)."""

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    x = randn(steps * batch, hidden)
    w_x, w_h = randn(4 * hidden, hidden), randn(4 * hidden, hidden)
    h, grad = randn(batch, hidden), randn(batch, 4 * hidden)
    grads = randn(steps * batch, 4 * hidden)

    def call() -> None:
        torch.mm(x, w_x.t())
        for _ in range(steps):
            torch.mm(h, w_h.t())
            torch.mm(grad, w_h)
        torch.mm(grads.t(), x)
        torch.mm(grads.t(), x)

    return call


def bn_lstm_rows(
    hidden: int, batch: int, steps: int, iters: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> list[dict]:
    """Tokens/s of every implementation at one size, timed interleaved."""
    torch.manual_seed(0)
    x = torch.randn(steps, batch, hidden, device=device)
    ours = BNLSTM(BNLSTMConfig(input_size=hidden, hidden_size=hidden, max_length=steps))
    fused = nn.LSTM(hidden, hidden)
    naive = NaiveBNLSTM(hidden, hidden, steps)
    tokens = batch * steps
    calls = {}
    kernels = ["cpp", "python"] if device.type == "cpu" else ["python"]
    for kernel in kernels:
        calls[f"BN-LSTM (zoo, {kernel})"] = training_call(ours, x, lambda m, v: m(v)[0], dtype, kernel)
    calls["nn.LSTM (fused)"] = training_call(fused, x, lambda m, v: m(v)[0], dtype)
    calls["BN-LSTM (naive loop)"] = training_call(naive, x, lambda m, v: m(v), dtype)
    calls["matrix products alone"] = matmuls_call(hidden, batch, steps, device, dtype)
    with bn_lstm_kernel("python"):
        flops = count_flops(calls["BN-LSTM (zoo, python)"])
    stats = interleave(calls, repeats=iters, warmup=1, device=device)
    rate = matmul_rate(str(device), dtype)
    return [
        {
            "implementation": name,
            "tokens_per_s": tokens / s.median,
            "ms": s.median * 1000,
            "spread": s.spread,
            "gflop": flops / 1e9 if name.startswith("BN-LSTM (zoo") else None,
            "matmul_fraction": flops / s.median / rate if name.startswith("BN-LSTM (zoo") else None,
            "stats": s,
        }
        for name, s in stats.items()
    ]


def factorized_rows(iters: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    torch.manual_seed(0)
    n, p, batch, steps = 2048, 256, 32, 20
    x = torch.randn(steps, batch, p, device=device)
    calls, params = {}, {}
    for name, extra in (
        ("LSTMP", {}),
        ("F-LSTM F128 (r = n/16)", {"factor_size": 128}),
        ("F-LSTM F512 (r = n/4)", {"factor_size": 512}),
        ("G-LSTM G4", {"groups": 4}),
    ):
        model = FactorizedLSTM(
            FactorizedLSTMConfig(input_size=p, hidden_size=n, projection_size=p, num_layers=2, **extra)
        )
        params[name] = sum(q.numel() for q in model.parameters())
        calls[name] = training_call(model, x, lambda m, v: m(v)[0], dtype)
    stats = interleave(calls, repeats=iters, warmup=1, device=device)
    base = stats["LSTMP"].median
    return [
        {
            "model": name,
            "params_m": params[name] / 1e6,
            "tokens_per_s": batch * steps / s.median,
            "vs_lstmp": base / s.median,
            "stats": s,
        }
        for name, s in stats.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--paper-iters", type=int, default=1)
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadier on a shared CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISION),
        default="fp32",
        help="bf16: every implementation under torch.autocast(bfloat16)",
    )
    parser.add_argument("--name", default=None, help="result file bench/results/<name>.json (default lm, lm_bf16)")
    args = parser.parse_args()
    dtype = PRECISION[args.precision]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(
        f"torch {env['torch']}, {env['threads']} threads, {env['device']}, {args.precision}; "
        f"medians of {args.iters} interleaved rounds"
    )
    sizes = [("demo", 256, 32, 100, args.iters)]
    if not args.skip_paper:
        sizes.append(("paper (PTB)", 1000, 64, 100, args.paper_iters))
    sizes.append(("small", 128, 32, 100, args.iters))
    rows = []
    for label, hidden, batch, steps, iters in sizes:
        size_rows = bn_lstm_rows(hidden, batch, steps, iters, device, dtype)
        rate = {r["implementation"]: r["tokens_per_s"] for r in size_rows}
        fused, naive = rate["nn.LSTM (fused)"], rate["BN-LSTM (naive loop)"]
        print(f"\n{label}: {hidden} units, batch {batch}, {steps} steps (forward + backward)")
        for r in size_rows:
            name = r["implementation"]
            r.update(
                size=f"{label}: {hidden} units, batch {batch}, {steps} steps",
                vs_fused=fused / r["tokens_per_s"],
                vs_naive=r["tokens_per_s"] / naive,
            )
            print(f"  {name:26s} {r['tokens_per_s']:10.0f} tokens/s")
        for name in (name for name in rate if name.startswith("BN-LSTM (zoo")):
            print(
                f"  {name}: {fused / rate[name]:5.2f}x the nn.LSTM time (goal at demo size <= 2.5x), "
                f"{rate[name] / naive:5.2f}x faster than the naive loop (goal at demo size >= 3x)"
            )
        floor = rate["matrix products alone"]
        print(
            f"  naive loop time / matrix products alone: {floor / naive:5.2f}x  (the most any implementation can gain)"
        )
        rows += size_rows
    print("\nF-LSTM / G-LSTM vs LSTMP: n = 2048, p = 256, 2 layers, batch 32, 20 steps (forward + backward)")
    factorized = factorized_rows(args.iters, device, dtype)
    for r in factorized:
        print(
            f"  {r['model']:24s} {r['params_m']:6.2f}M params {r['tokens_per_s']:9.0f} tokens/s  "
            f"{r['vs_lstmp']:4.2f}x LSTMP"
        )
    bn = table(
        f"BN-LSTM training throughput ({args.precision}, forward + backward, interleaved medians)",
        [
            ("size", "size"),
            ("implementation", "implementation"),
            ("tokens_per_s", "tokens/s", ",.0f"),
            ("spread", "IQR / median", ".0%"),
            ("vs_fused", "time / nn.LSTM", ".2f"),
            ("vs_naive", "speed / naive loop", ".2f"),
            ("gflop", "GFLOP", ".2f"),
            ("matmul_fraction", "of matmul rate", ".0%"),
        ],
        rows,
        notes="Goals at the demo size: zoo ≤ 2.5× nn.LSTM's time and ≥ 3× the naive loop's speed; "
        "'matrix products alone' is the floor every implementation of the equations shares.",
    )
    fact = table(
        f"F-LSTM / G-LSTM vs LSTMP ({args.precision}; n = 2048, p = 256, 2 layers, batch 32, 20 steps)",
        [
            ("model", "model"),
            ("params_m", "parameters (M)", ".2f"),
            ("tokens_per_s", "tokens/s", ",.0f"),
            ("vs_lstmp", "vs LSTMP", ".2f"),
        ],
        factorized,
    )
    name = args.name or ("lm" if args.precision == "fp32" else f"lm_{args.precision}")
    write_result(name, [bn, fact], env=env, title=f"Language-model recurrent layers ({args.precision})")


if __name__ == "__main__":
    main()
