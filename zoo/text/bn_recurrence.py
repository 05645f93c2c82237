"""The recurrent half of a BN-LSTM layer (arXiv 1603.09025 eqs. 6-8) as one autograd function.

:func:`bn_lstm_recurrence` is what the layer calls with ``W_x x`` of every step; it runs one of two
implementations of the same equations: the loop in C++ (:mod:`zoo.text.bn_recurrence_cpp`, the
default on the CPU) or the loop in Python here (:class:`BNLSTMRecurrence`: on other devices, where
the C++ extension cannot be built, and as the reference the tests hold the C++ one to).

The Python recurrence normalises the input term ``gx_t = BN(W_x x_t; γ_x, 0) + b`` for all steps
at once (:class:`zoo.text.bn_lstm.StepwiseBatchNorm`), then runs, for ``t = 0 … T−1``::

    a_t = W_h h_{t−1}
    (f̃, ĩ, õ, g̃) = gx_t + BN_t(a_t; γ_h, 0)                              (6)
    c_t = σ(f̃) ⊙ c_{t−1} + σ(ĩ) ⊙ tanh(g̃)                                (7)
    h_t = σ(õ) ⊙ tanh(BN_t(c_t; γ_c, β_c))                                (8)

``BN_t`` uses the batch statistics of step ``t`` in training (padded rows excluded; the running
statistics of slot ``start + t`` move by ``momentum`` toward them, unbiased variance, as
``nn.BatchNorm1d``) and the running statistics of slot ``min(start + t, T_max − 1)`` in evaluation.
Padded rows (``mask == False``) keep the previous state.

Why a hand-written backward: the per-step work is one ``(B, H) × (H, 4H)`` product and a dozen
small element-wise ops. Recorded by autograd, each op costs a graph node, saved tensors and a
backward call; here the forward runs without a graph, writes the per-step values the backward needs
into preallocated buffers, and the backward walks the steps in reverse with plain tensor ops
(back-propagation through time written out), deferring every weight gradient to one large product
or reduction over all steps (``∂L/∂W_h = Σ_t ∂L/∂a_tᵀ h_{t−1}`` as a single ``(4H, T·B) × (T·B, H)``
product). Each batch norm is one fused ``native_batch_norm`` call forward (statistics, normalisation,
γ, β and the running-statistics update) and one ``native_batch_norm_backward`` call backward,
except in training with padding, where the statistics over the real rows are computed here::

    ∂L/∂a_b = γ/σ [ g_b − (m_b / n) Σ_j m_j g_j − (m_b / n) x̂_b Σ_j m_j g_j x̂_j ],   g = ∂L/∂y,

with ``x̂ = (a − μ) / σ`` and ``m_b ∈ {0, 1}`` marking the ``n`` real rows.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from zoo.text import bn_recurrence_cpp

KERNELS = ("auto", "cpp", "python")

native_batch_norm_backward = torch.ops.aten.native_batch_norm_backward
tanh_backward = torch.ops.aten.tanh_backward
sigmoid_backward = torch.ops.aten.sigmoid_backward


def _norm_forward(
    a: Tensor,
    m: Tensor | None,
    n: Tensor | None,
    gamma: Tensor,
    beta: Tensor | None,
    run_mean: Tensor,
    run_var: Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``BN(a; γ, β)`` of one step ``a: (B, F)``, ``m: (B, 1)`` real rows (``n`` of them) or None.

    Returns ``y`` and, in training, the batch mean and ``1/σ`` (the running statistics, views of
    the step's slot, move toward the batch ones in place); in evaluation those two are empty.
    """
    if m is None or not training:
        return torch.native_batch_norm(a, gamma, beta, run_mean, run_var, training, momentum, eps)
    safe = n.clamp(min=1)
    mean = (a * m).sum(0).div_(safe)
    centered = a - mean
    squares = (centered * m).square_().sum(0)
    invstd = torch.where(n > 0, squares / safe, 1.0).add_(eps).rsqrt_()
    weight = momentum * (n > 0).to(a.dtype)  # a step without real rows leaves the running statistics
    run_mean.mul_(1 - weight).add_(weight * mean)
    run_var.mul_(1 - weight).add_(weight * squares / (n - 1).clamp(min=1))  # unbiased, as nn.BatchNorm1d
    y = centered.mul_(invstd * gamma)
    return (y if beta is None else y.add_(beta)), mean, invstd


def _norm_backward(
    grad: Tensor,
    a: Tensor,
    m: Tensor | None,
    n: Tensor | None,
    gamma: Tensor,
    mean: Tensor,
    invstd: Tensor,
    run_mean: Tensor,
    run_var: Tensor,
    training: bool,
    eps: float,
    bias: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``∂L/∂a``, ``∂L/∂γ`` and (``bias``) ``∂L/∂β`` of :func:`_norm_forward` from ``grad = ∂L/∂y``."""
    if m is None or not training:
        return native_batch_norm_backward(
            grad, a, gamma, run_mean, run_var, mean, invstd, training, eps, [True, True, bias]
        )
    safe = n.clamp(min=1)
    xhat = (a - mean).mul_(invstd)
    masked = grad * m
    grad_gamma = (masked * xhat).sum(0)
    grad_beta = masked.sum(0)
    shift = torch.addcmul(grad_beta / safe, xhat, grad_gamma / safe)
    grad_a = torch.addcmul(grad, m, shift, value=-1.0).mul_(gamma * invstd)
    return grad_a, grad_gamma, (grad_beta if bias else None)


class BNLSTMRecurrence(torch.autograd.Function):
    """Eqs. 6-8 over all steps, forward and hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gx: Tensor,
        h0: Tensor,
        c0: Tensor,
        weight_h: Tensor,
        gamma_h: Tensor,
        gamma_c: Tensor,
        beta_c: Tensor,
        mask: Tensor | None,
        stats: tuple[Tensor, Tensor, Tensor, Tensor],
        start: int,
        training: bool,
        momentum: float,
        eps: float,
        mm_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        steps, batch, four_h = gx.shape
        hidden = four_h // 4
        slots = [min(start + t, stats[0].shape[0] - 1) for t in range(steps)]
        rows = [s.unbind(0) for s in stats]  # running statistics of each slot (views, updated in place)
        run_h = [(rows[0][s], rows[1][s]) for s in slots]
        run_c = [(rows[2][s], rows[3][s]) for s in slots]
        new = gx.new_empty
        # per-step values kept for the backward, written in place (unbind: views without per-step indexing);
        # states[t] = h_{t−1}: the outputs are states[1:], and ∂L/∂W_h needs states[:-1] (no concatenation)
        states, pre_h, c_pre = new(steps + 1, batch, hidden), new(steps, batch, four_h), new(steps, batch, hidden)
        states[0] = h0
        out = states[1:]
        # the recurrent product's operand in the autocast precision (bf16: AMX / tensor cores); statistics,
        # gates and cell stay in the input precision, as autocast keeps batch norm and point-wise ops
        low = mm_dtype != gx.dtype
        states_mm = new(steps + 1, batch, hidden, dtype=mm_dtype) if low else states
        if low:
            states_mm[0] = h0
        cells = c_pre if mask is None else new(steps, batch, hidden)  # the state (padded rows keep theirs)
        sig_all, g_all, tc_all = new(steps, batch, 3 * hidden), new(steps, batch, hidden), new(steps, batch, hidden)
        out_t, pre_t, c_pre_t, cells_t = out.unbind(0), pre_h.unbind(0), c_pre.unbind(0), cells.unbind(0)
        sig_t, g_t, tc_t, gx_t = sig_all.unbind(0), g_all.unbind(0), tc_all.unbind(0), gx.unbind(0)
        h_mm = states_mm.unbind(0)
        masks = None if mask is None else mask.to(gx.dtype).unsqueeze(-1)  # (T, B, 1)
        counts = None if masks is None else masks.sum(1)  # (T, 1)
        moments_h, moments_c = [], []
        weight_t = weight_h.t().to(mm_dtype).contiguous()
        h, c = h0, c0
        for t in range(steps):
            m = None if masks is None else masks[t]
            n = None if counts is None else counts[t]
            a = pre_t[t].copy_(torch.mm(h_mm[t], weight_t)) if low else torch.mm(h_mm[t], weight_t, out=pre_t[t])
            y, mean, invstd = _norm_forward(a, m, n, gamma_h, None, *run_h[t], training, momentum, eps)
            moments_h.append((mean, invstd))
            gates = y.add_(gx_t[t])
            sig = torch.sigmoid(gates[:, : 3 * hidden], out=sig_t[t])
            g = torch.tanh(gates[:, 3 * hidden :], out=g_t[t])
            f, i, o = sig.split(hidden, 1)
            c_new = torch.addcmul(f * c, i, g, out=c_pre_t[t])
            y, mean, invstd = _norm_forward(c_new, m, n, gamma_c, beta_c, *run_c[t], training, momentum, eps)
            moments_c.append((mean, invstd))
            tc = torch.tanh(y, out=tc_t[t])
            if m is None:
                h, c = torch.mul(o, tc, out=out_t[t]), c_new
            else:  # padded rows keep the previous state
                keep = m.bool()
                h, c = torch.where(keep, o * tc, h, out=out_t[t]), torch.where(keep, c_new, c, out=cells_t[t])
            if low:
                h_mm[t + 1].copy_(h)
        ctx.training, ctx.eps, ctx.run_h, ctx.run_c = training, eps, run_h, run_c
        ctx.moments_h, ctx.moments_c = moments_h, moments_c
        ctx.save_for_backward(
            c0,
            weight_h,
            gamma_h,
            gamma_c,
            states,
            states_mm,
            cells,
            pre_h,
            c_pre,
            sig_all,
            g_all,
            tc_all,
            masks,
            counts,
        )
        return out, cells[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_c_last: Tensor | None) -> tuple[Tensor | None, ...]:
        (
            c0,
            weight_h,
            gamma_h,
            gamma_c,
            states,
            states_mm,
            cells,
            pre_h,
            c_pre,
            sig_all,
            g_all,
            tc_all,
            masks,
            counts,
        ) = ctx.saved_tensors
        training, eps = ctx.training, ctx.eps
        steps, batch, hidden = c_pre.shape
        if grad_out is None:
            grad_out = torch.zeros_like(c_pre)
        low = states_mm.dtype != states.dtype
        weight = weight_h.to(states_mm.dtype)
        grad_gx = c_pre.new_empty(steps, batch, 4 * hidden)  # ∂L/∂(f̃, ĩ, õ, g̃)
        grad_a = c_pre.new_empty(steps, batch, 4 * hidden, dtype=states_mm.dtype)  # ∂L/∂(W_h h_{t−1}), all steps
        grad_gamma_h, grad_gamma_c, grad_beta_c = [], [], []
        grad_gx_t, pre_t, c_pre_t, grad_a_t = grad_gx.unbind(0), pre_h.unbind(0), c_pre.unbind(0), grad_a.unbind(0)
        sig_t, g_t, tc_t, grad_out_t = sig_all.unbind(0), g_all.unbind(0), tc_all.unbind(0), grad_out.unbind(0)
        dh = grad_out_t[-1].clone()
        dc = torch.zeros_like(c0) if grad_c_last is None else grad_c_last.clone()
        for t in range(steps - 1, -1, -1):
            m = None if masks is None else masks[t]
            n = None if counts is None else counts[t]
            if m is not None:  # padded rows: the gradient passes straight to the previous state
                dh_pass, dc_pass = dh * (1 - m), dc * (1 - m)
                dh, dc = dh * m, dc * m
            sig, g, tc = sig_t[t], g_t[t], tc_t[t]
            f, i, o = sig.split(hidden, 1)
            dgate = grad_gx_t[t]
            d_f, d_i, d_o, d_g = dgate.split(hidden, 1)
            # h_t = o ⊙ tanh(y_c), y_c = BN(c_t; γ_c, β_c)
            torch.mul(dh, tc, out=d_o)
            grad_y = tanh_backward(dh * o, tc)
            grad_c, d_gamma, d_beta = _norm_backward(
                grad_y, c_pre_t[t], m, n, gamma_c, *ctx.moments_c[t], *ctx.run_c[t], training, eps, True
            )
            dc = grad_c.add_(dc)
            grad_gamma_c.append(d_gamma)
            grad_beta_c.append(d_beta)
            # c_t = f ⊙ c_{t−1} + i ⊙ g, through σ and tanh
            torch.mul(dc, c0 if t == 0 else cells[t - 1], out=d_f)
            torch.mul(dc, g, out=d_i)
            sig_grad = dgate[:, : 3 * hidden]
            sigmoid_backward.grad_input(sig_grad, sig, grad_input=sig_grad)
            tanh_backward.grad_input(dc * i, g, grad_input=d_g)
            dc = dc * f
            # gates = gx_t + BN(a_t; γ_h, 0), a_t = W_h h_{t−1}
            d_a, d_gamma, _ = _norm_backward(
                dgate, pre_t[t], m, n, gamma_h, *ctx.moments_h[t], *ctx.run_h[t], training, eps, False
            )
            grad_a_t[t].copy_(d_a)
            grad_gamma_h.append(d_gamma)
            if t == 0:
                dh = torch.mm(grad_a_t[t], weight).to(states.dtype)
            elif low:  # the product in the autocast dtype, the sum in the state's
                dh = torch.add(grad_out_t[t - 1], torch.mm(grad_a_t[t], weight))
            else:
                dh = torch.addmm(grad_out_t[t - 1], grad_a_t[t], weight)
            if m is not None:
                dh += dh_pass
                dc += dc_pass
        flat = steps * batch
        previous = states_mm[:-1].reshape(flat, hidden)
        grad_weight = torch.mm(grad_a.view(flat, 4 * hidden).t(), previous).to(weight_h.dtype)
        return (
            grad_gx,
            dh,
            dc,
            grad_weight,
            torch.stack(grad_gamma_h).sum(0),
            torch.stack(grad_gamma_c).sum(0),
            torch.stack(grad_beta_c).sum(0),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def bn_lstm_recurrence(
    wx: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_h: Tensor,
    bias: Tensor,
    bn_x: Any,
    bn_h: Any,
    bn_c: Any,
    mask: Tensor | None = None,
    start: int = 0,
    kernel: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Run eqs. 6-8 over ``wx = W_x x: (T, B, 4H)`` from ``h0, c0: (B, H)``.

    ``bn_x``, ``bn_h``, ``bn_c``: the layer's :class:`zoo.text.bn_lstm.StepwiseBatchNorm` of the
    input term, the recurrent term and the cell (their γ, β, running statistics, ``training``,
    momentum and ε are used; the running statistics are updated in place in training); ``bias``: b.
    ``mask: (T, B)`` bool or None.

    ``kernel``: ``"cpp"`` (the loop in C++ with both normalisations of eq. 6 fused into it,
    :mod:`zoo.text.bn_recurrence_cpp`; float32 / float64 on the CPU), ``"python"`` (the input
    term normalised for all steps at once by ``bn_x``, then :class:`BNLSTMRecurrence`) or
    ``"auto"`` (C++ where it applies and builds); None reads ``$ZOO_BN_LSTM_KERNEL`` (default
    ``auto``). Under autocast the ``W_h h`` products run in the autocast dtype (bf16: AMX on recent
    CPUs), everything else in the parameters' dtype.

    Returns every step's ``h_t: (T, B, H)`` and the last ``c: (B, H)``.
    """
    kernel = kernel or os.environ.get("ZOO_BN_LSTM_KERNEL", "auto")
    if kernel not in KERNELS:
        raise ValueError(f"BN-LSTM kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    device = wx.device.type
    mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else bias.dtype
    applicable = bn_recurrence_cpp.supported(bias, mm_dtype)
    if kernel == "cpp" and not applicable:
        raise ValueError(
            f"BN-LSTM kernel 'cpp' runs float32 / float64 on the CPU (products in float32, bfloat16 or "
            f"float16), not {bias.dtype} with products in {mm_dtype} on {wx.device}"
        )
    if kernel == "cpp" and bn_recurrence_cpp.load_extension() is None:
        raise RuntimeError("BN-LSTM kernel 'cpp': the C++ extension could not be built (see the warning above)")
    use_cpp = kernel == "cpp" or (kernel == "auto" and applicable and bn_recurrence_cpp.load_extension() is not None)
    args = (bn_h.training, bn_h.momentum, bn_h.eps, mm_dtype)
    with torch.autocast(device, enabled=False):
        if use_cpp:
            return bn_recurrence_cpp.BNLSTMRecurrenceCpp.apply(
                wx,
                h0,
                c0,
                weight_h,
                bias,
                bn_x.weight,
                bn_h.weight,
                bn_c.weight,
                bn_c.bias,
                mask,
                (bn_x, bn_h, bn_c),
                start,
                *args,
            )
        gx = bn_x(wx.to(bias.dtype), mask, start) + bias  # under autocast W_x x came in bf16
        stats = (bn_h.running_mean, bn_h.running_var, bn_c.running_mean, bn_c.running_var)
        return BNLSTMRecurrence.apply(
            gx, h0, c0, weight_h, bn_h.weight, bn_c.weight, bn_c.bias, mask, stats, start, *args
        )
