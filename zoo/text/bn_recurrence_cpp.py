"""The BN-LSTM recurrence (arXiv 1603.09025 eqs. 6-8) as a C++ extension for the CPU.

The same equations and hand-written back-propagation through time as
:class:`zoo.text.bn_recurrence.BNLSTMRecurrence`, but the loop over time runs in C++
(``csrc/bn_lstm_recurrence.cpp``), and it takes ``W_x x`` itself: per step one ``W_h h`` product
and one fused pass over the ``(B, 4H)`` gates computes both batch norms of eq. 6, the gates, the
cell and eq. 8's batch norm, instead of a few dozen Python-level tensor operations plus
whole-sequence passes for the input term. ``∂L/∂W_h`` is one ``(4H, T·B) × (T·B, H)`` product
over all steps. Under autocast, ``W_x x``, ``W_h h_{t−1}`` (and ``h_{t−1}`` as its operand) and
their gradients stay in the autocast dtype; the loop reads and writes them without separate casts.

The extension is compiled on first use with the machine's C++ compiler through
``torch.utils.cpp_extension`` (ninja, a Python dependency) and cached by torch in
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); later processes load it in
milliseconds. Where it cannot be built, :func:`load_extension` returns None and the layer runs the
Python recurrence (``ZOO_BN_LSTM_KERNEL=cpp`` makes that an error instead).

In training the C++ loop returns every step's batch mean and variance, and each
:class:`zoo.text.bn_lstm.StepwiseBatchNorm` moves its running statistics toward them for all steps
at once (:meth:`~zoo.text.bn_lstm.StepwiseBatchNorm.update_running`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from zoo.cpp_extension import build

SOURCE = Path(__file__).parent / "csrc" / "bn_lstm_recurrence.cpp"


@functools.cache
def load_extension() -> ModuleType | None:
    """The compiled BN-LSTM recurrence (:func:`zoo.cpp_extension.build`), or None where it cannot be built."""
    return build("bn_lstm_recurrence", SOURCE, "BN-LSTM: the C++ recurrence", "using the Python one")


def supported(state: Tensor, mm_dtype: torch.dtype) -> bool:
    """Whether the C++ recurrence runs a ``state`` of this dtype and device with products in ``mm_dtype``:
    on the CPU, float64 throughout, or float32 with products in float32, bfloat16 or float16."""
    if state.device.type != "cpu":
        return False
    if state.dtype == torch.float64:
        return mm_dtype == torch.float64
    return state.dtype == torch.float32 and mm_dtype in (torch.float32, torch.bfloat16, torch.float16)


class BNLSTMRecurrenceCpp(torch.autograd.Function):
    """Eqs. 6-8 over all steps in C++, both normalisations of eq. 6 included (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        wx: Tensor,
        h0: Tensor,
        c0: Tensor,
        weight_h: Tensor,
        bias: Tensor,
        gamma_x: Tensor,
        gamma_h: Tensor,
        gamma_c: Tensor,
        beta_c: Tensor,
        mask: Tensor | None,
        norms: tuple[Any, Any, Any],
        start: int,
        training: bool,
        _momentum: float,  # each norm's own applies, in update_running
        eps: float,
        mm_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        steps, batch, four_h = wx.shape
        hidden = four_h // 4
        max_length = norms[0].max_length
        if training and start + steps > max_length:
            raise ValueError(f"training steps {start}..{start + steps - 1} exceed the {max_length} kept statistics")
        dtype = gamma_x.dtype  # of the state, statistics, gates and cell; the products' is mm_dtype
        wx, c0 = wx.to(mm_dtype).contiguous(), c0.to(dtype).contiguous()
        new = c0.new_empty
        states = new(steps + 1, batch, hidden)  # states[t] = h_{t−1}; the outputs are states[1:]
        states[0] = h0
        states_mm = new(steps + 1, batch, hidden, dtype=mm_dtype) if mm_dtype != dtype else states
        states_mm[0] = h0
        c_pre = new(steps, batch, hidden)
        cells = c_pre if mask is None else new(steps, batch, hidden)
        buffers = [
            states,
            states_mm,
            cells,
            c_pre,
            new(steps, batch, four_h, dtype=mm_dtype),
            new(steps, batch, 3 * hidden),
            new(steps, batch, hidden),
            new(steps, batch, hidden),
        ]
        moments = [new(steps, size) for size in (four_h,) * 6 + (hidden,) * 3]  # mean, var, 1/σ of x, h, c
        empty = new(0)
        masks = empty if mask is None else mask.to(dtype).contiguous()
        counts = c0.new_full((steps,), batch) if mask is None else masks.sum(1)  # real rows per step
        slots = torch.arange(start, start + steps, device=wx.device).clamp_(max=max_length - 1)
        running = (
            [empty] * 6 if training else [s[slots].to(dtype) for n in norms for s in (n.running_mean, n.running_var)]
        )
        params = [p.contiguous() for p in (gamma_x, gamma_h, gamma_c, beta_c, bias)]
        load_extension().forward(
            wx,
            weight_h.t().to(mm_dtype).contiguous(),
            params,
            masks,
            counts,
            running,
            training,
            eps,
            c0,
            buffers,
            moments,
        )
        if training:
            for i, norm in enumerate(norms):
                norm.update_running(slots, moments[3 * i], moments[3 * i + 1], counts.unsqueeze(1))
        ctx.training, ctx.num_buffers = training, len(buffers)
        kept = [m for i, m in enumerate(moments) if i % 3 != 1]  # mean and 1/σ of x, h, c: what the backward reads
        ctx.save_for_backward(wx, c0, weight_h, *params, masks, counts, *buffers, *kept)
        return states[1:], cells[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_c_last: Tensor | None) -> tuple[Tensor | None, ...]:
        wx, c0, weight_h, *rest = ctx.saved_tensors
        params, (masks, counts), rest = rest[:5], rest[5:7], rest[7:]
        buffers, moments = rest[: ctx.num_buffers], rest[ctx.num_buffers :]
        states_mm, c_pre = buffers[1], buffers[3]
        steps, batch, hidden = c_pre.shape
        grad_out = torch.zeros_like(c_pre) if grad_out is None else grad_out.contiguous()
        dh = grad_out[-1].clone()
        dc = torch.zeros_like(c0) if grad_c_last is None else grad_c_last.contiguous().clone()
        new = c_pre.new_empty
        grad_wx = new(steps, batch, 4 * hidden, dtype=states_mm.dtype)
        grad_a = new(steps, batch, 4 * hidden, dtype=states_mm.dtype)  # ∂L/∂(W_h h_{t−1}), all steps
        grads = [new(steps, size) for size in (4 * hidden,) * 3 + (hidden,) * 2]  # γ_x, γ_h, b, γ_c, β_c
        load_extension().backward(
            grad_out,
            weight_h.to(states_mm.dtype).contiguous(),
            params,
            masks,
            counts,
            ctx.training,
            c0,
            wx,
            buffers,
            list(moments),
            grad_wx,
            grad_a,
            grads,
            dh,
            dc,
        )
        flat = steps * batch
        grad_weight = torch.mm(grad_a.view(flat, 4 * hidden).t(), states_mm[:-1].reshape(flat, hidden))
        grad_gamma_x, grad_gamma_h, grad_bias, grad_gamma_c, grad_beta_c = (g.sum(0) for g in grads)
        return (
            grad_wx,
            dh,
            dc,
            grad_weight.to(weight_h.dtype),
            grad_bias,
            grad_gamma_x,
            grad_gamma_h,
            grad_gamma_c,
            grad_beta_c,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
