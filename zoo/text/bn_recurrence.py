"""The recurrent half of a BN-LSTM layer (arXiv 1603.09025 eqs. 6-8) as one autograd function.

Given the input term ``gx_t = BN(W_x x_t; γ_x, 0) + b`` of every step (computed for all steps at
once by the layer), :func:`bn_lstm_recurrence` runs, for ``t = 0 … T−1``::

    a_t = W_h h_{t−1}
    (f̃, ĩ, õ, g̃) = gx_t + BN_t(a_t; γ_h, 0)                              (6)
    c_t = σ(f̃) ⊙ c_{t−1} + σ(ĩ) ⊙ tanh(g̃)                                (7)
    h_t = σ(õ) ⊙ tanh(BN_t(c_t; γ_c, β_c))                                (8)

``BN_t`` uses the batch statistics of step ``t`` in training (padded rows excluded; the running
statistics of slot ``start + t`` move by ``momentum`` toward them, unbiased variance, as
``nn.BatchNorm1d``) and the running statistics of slot ``min(start + t, T_max − 1)`` in evaluation.
Padded rows (``mask == False``) keep the previous state.

Why a hand-written backward: the per-step work is one ``(B, H) × (H, 4H)`` product and ~25 small
element-wise ops. Recorded by autograd, each op costs a graph node, saved tensors and a backward
call; here the forward runs without a graph, stores eleven per-step tensors in preallocated
buffers, and the backward walks the steps in reverse with plain tensor ops (back-propagation
through time written out), deferring every weight gradient to one large product or reduction
over all steps (``∂L/∂W_h = Σ_t ∂L/∂a_tᵀ h_{t−1}`` as a single ``(4H, T·B) × (T·B, H)`` product).

Backward of ``y = γ (a − μ) / σ`` over the ``n`` rows with weight ``m_b ∈ {0, 1}``, ``x̂ = (a − μ) / σ``
(training; in evaluation μ and σ are constants and only the first term remains)::

    ∂L/∂a_b = (1/σ) [ g_b − (m_b / n) Σ_j m_j g_j − (m_b / n) x̂_b Σ_j m_j g_j x̂_j ],   g = γ ∂L/∂y
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _center(
    a: Tensor, m: Tensor | None, n: Tensor | float, eps: float, sums: Tensor, squares: Tensor, out: Tensor
) -> Tensor:
    """Centre ``a: (B, F)`` on its batch mean over the ``n`` rows with ``m: (B, 1)`` = 1 (all rows if None).

    Writes ``a − μ`` to ``out``, ``Σ m a`` to ``sums`` and ``Σ m (a − μ)²`` to ``squares`` (both ``(F,)``);
    returns ``1/σ`` (a step without rows: σ = 1). Sums over dim 0, not ``torch.var_mean``, which is
    ~100× slower on CPU for this layout.
    """
    if m is None:
        torch.sum(a, 0, out=sums)
        centered = torch.add(a, sums, alpha=-1.0 / n, out=out)
        torch.linalg.vecdot(centered, centered, dim=0, out=squares)
        return squares.div(n).add_(eps).rsqrt_()
    safe = n.clamp(min=1)
    torch.sum(a * m, 0, out=sums)
    centered = torch.sub(a, sums / safe, out=out)
    torch.linalg.vecdot(centered * m, centered, dim=0, out=squares)
    return torch.where(n > 0, squares / safe, 1.0).add_(eps).rsqrt_()


def _normalize_backward(
    grad: Tensor, centered: Tensor, inv: Tensor, gamma: Tensor, m: Tensor | None, n: Tensor | float,
    training: bool, out: Tensor | None = None,
) -> Tensor:
    """``∂L/∂a`` of ``y = γ (a − μ) / σ`` from ``grad = ∂L/∂y`` (module docstring), written to ``out``.

    ``centered = a − μ``, ``inv = 1/σ``; with ``x̂ = centered · inv`` the two batch sums of the
    docstring become ``Σ m g`` and ``inv · Σ m g (a − μ)``.
    """
    scale = gamma * inv
    if not training:
        return torch.mul(grad, scale, out=out)
    if m is None:
        k = torch.linalg.vecdot(grad, centered, dim=0).mul_(inv * inv / n)
        shifted = torch.add(grad, grad.sum(0), alpha=-1.0 / n)
        return torch.mul(shifted.addcmul_(centered, k, value=-1.0), scale, out=out)
    safe = n.clamp(min=1)
    masked = grad * m
    k = torch.linalg.vecdot(masked, centered, dim=0).mul_(inv * inv / safe)
    shift = torch.addcmul(masked.sum(0) / safe, centered, k)
    return torch.mul(torch.addcmul(grad, m, shift, value=-1.0), scale, out=out)


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
    ) -> tuple[Tensor, Tensor]:
        steps, batch, four_h = gx.shape
        hidden = four_h // 4
        mean_h_run, var_h_run, mean_c_run, var_c_run = stats
        new = gx.new_empty
        # per-step values kept for the backward, written in place
        out, cells = new(steps, batch, hidden), new(steps, batch, hidden)
        centered_h, centered_c = new(steps, batch, four_h), new(steps, batch, hidden)
        sig_all, g_all, tc_all = new(steps, batch, 3 * hidden), new(steps, batch, hidden), new(steps, batch, hidden)
        inv_h, inv_c = new(steps, four_h), new(steps, hidden)
        sums_h, squares_h, sums_c, squares_c = new(steps, four_h), new(steps, four_h), new(steps, hidden), new(steps, hidden)
        masks = None if mask is None else mask.to(gx.dtype).unsqueeze(-1)  # (T, B, 1)
        counts = None if masks is None else masks.sum(1)  # (T, 1)
        slots = [min(start + t, mean_h_run.shape[0] - 1) for t in range(steps)]
        if not training:
            inv_h.copy_((var_h_run[slots] + eps).rsqrt_())
            inv_c.copy_((var_c_run[slots] + eps).rsqrt_())
        weight_t = weight_h.t().contiguous()
        h, c = h0, c0
        for t in range(steps):
            m = None if masks is None else masks[t]
            n = float(batch) if counts is None else counts[t]
            a = torch.mm(h, weight_t)
            if training:
                inv_h[t] = _center(a, m, n, eps, sums_h[t], squares_h[t], centered_h[t])
            else:
                torch.sub(a, mean_h_run[slots[t]], out=centered_h[t])
            pre = torch.addcmul(gx[t], centered_h[t], gamma_h * inv_h[t])
            sig = torch.sigmoid(pre[:, : 3 * hidden], out=sig_all[t])
            g = torch.tanh(pre[:, 3 * hidden :], out=g_all[t])
            f, i, o = sig[:, :hidden], sig[:, hidden : 2 * hidden], sig[:, 2 * hidden :]
            c_new = torch.addcmul(f * c, i, g, out=cells[t] if m is None else None)
            if training:
                inv_c[t] = _center(c_new, m, n, eps, sums_c[t], squares_c[t], centered_c[t])
            else:
                torch.sub(c_new, mean_c_run[slots[t]], out=centered_c[t])
            tc = torch.addcmul(beta_c, centered_c[t], gamma_c * inv_c[t], out=tc_all[t]).tanh_()
            if m is None:
                torch.mul(o, tc, out=out[t])
            else:  # padded rows keep the previous state
                keep = m.bool()
                torch.where(keep, o * tc, h, out=out[t])
                torch.where(keep, c_new, c, out=cells[t])
            h, c = out[t], cells[t]
        if training:
            count = torch.full((steps, 1), float(batch), dtype=gx.dtype, device=gx.device) if counts is None else counts
            index = torch.arange(start, start + steps, device=gx.device)
            _update_running(mean_h_run, var_h_run, index, sums_h, squares_h, count, momentum)
            _update_running(mean_c_run, var_c_run, index, sums_c, squares_c, count, momentum)
        ctx.training = training
        ctx.save_for_backward(h0, c0, weight_h, gamma_h, gamma_c, out, cells, centered_h, centered_c,
                              sig_all, g_all, tc_all, inv_h, inv_c, masks, counts)
        return out, cells[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_c_last: Tensor | None) -> tuple[Tensor | None, ...]:
        (h0, c0, weight_h, gamma_h, gamma_c, out, cells, centered_h, centered_c,
         sig_all, g_all, tc_all, inv_h, inv_c, masks, counts) = ctx.saved_tensors
        training = ctx.training
        steps, batch, hidden = out.shape
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_gx = out.new_empty(steps, batch, 4 * hidden)  # ∂L/∂(f̃, ĩ, õ, g̃)
        grad_a = out.new_empty(steps, batch, 4 * hidden)  # ∂L/∂(W_h h_{t−1})
        grad_yc = out.new_empty(steps, batch, hidden)  # ∂L/∂BN(c_t)
        dh = grad_out[-1].clone()
        dc = torch.zeros_like(c0) if grad_c_last is None else grad_c_last.clone()
        for t in range(steps - 1, -1, -1):
            m = None if masks is None else masks[t]
            n = float(batch) if counts is None else counts[t]
            if m is not None:  # padded rows: the gradient passes straight to the previous state
                dh_pass, dc_pass = dh * (1 - m), dc * (1 - m)
                dh, dc = dh * m, dc * m
            sig, g, tc = sig_all[t], g_all[t], tc_all[t]
            f, i, o = sig[:, :hidden], sig[:, hidden : 2 * hidden], sig[:, 2 * hidden :]
            dgate = grad_gx[t]
            # h_t = o ⊙ tanh(y_c)
            torch.mul(dh, tc, out=dgate[:, 2 * hidden : 3 * hidden])
            dyc = torch.ops.aten.tanh_backward.grad_input(dh * o, tc, grad_input=grad_yc[t])
            dc += _normalize_backward(dyc, centered_c[t], inv_c[t], gamma_c, m, n, training)
            # c_t = f ⊙ c_{t−1} + i ⊙ g, through σ and tanh
            torch.mul(dc, c0 if t == 0 else cells[t - 1], out=dgate[:, :hidden])
            torch.mul(dc, g, out=dgate[:, hidden : 2 * hidden])
            sig_grad = dgate[:, : 3 * hidden]
            torch.ops.aten.sigmoid_backward.grad_input(sig_grad, sig, grad_input=sig_grad)
            torch.ops.aten.tanh_backward.grad_input(dc * i, g, grad_input=dgate[:, 3 * hidden :])
            dc = dc * f
            da = _normalize_backward(dgate, centered_h[t], inv_h[t], gamma_h, m, n, training, out=grad_a[t])
            dh = torch.mm(da, weight_h) if t == 0 else torch.addmm(grad_out[t - 1], da, weight_h)
            if m is not None:
                dh += dh_pass
                dc += dc_pass
        h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])
        flat = steps * batch
        grad_weight = torch.mm(grad_a.view(flat, 4 * hidden).t(), h_prev.view(flat, hidden))
        # ∂L/∂γ = Σ_t Σ_b ∂L/∂y · x̂ with x̂ = (a − μ) / σ
        grad_gamma_h = (torch.linalg.vecdot(grad_gx, centered_h, dim=1) * inv_h).sum(0)
        grad_gamma_c = (torch.linalg.vecdot(grad_yc, centered_c, dim=1) * inv_c).sum(0)
        grad_beta_c = grad_yc.sum((0, 1))
        return (grad_gx, dh, dc, grad_weight, grad_gamma_h, grad_gamma_c, grad_beta_c,
                None, None, None, None, None, None)


@torch.no_grad()
def _update_running(
    mean_run: Tensor, var_run: Tensor, index: Tensor, sums: Tensor, squares: Tensor, count: Tensor, momentum: float
) -> None:
    """Running averages of the minibatch mean ``Σ a / n`` and unbiased variance ``Σ (a − μ)² / (n − 1)``
    of every step (``(T, F)`` sums, ``count: (T, 1)``); steps without rows are skipped."""
    m = momentum * (count > 0).to(sums.dtype)
    mean = sums / count.clamp(min=1)
    unbiased = squares / (count - 1).clamp(min=1)
    mean_run[index] = (1 - m) * mean_run[index] + m * mean
    var_run[index] = (1 - m) * var_run[index] + m * unbiased


def bn_lstm_recurrence(
    gx: Tensor,
    h0: Tensor,
    c0: Tensor,
    weight_h: Tensor,
    bn_h: Any,
    bn_c: Any,
    mask: Tensor | None = None,
    start: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run eqs. 6-8 over ``gx: (T, B, 4H)`` from ``h0, c0: (B, H)``.

    ``bn_h``, ``bn_c``: the layer's :class:`zoo.text.bn_lstm.StepwiseBatchNorm` of the recurrent
    term and of the cell (their γ, β, running statistics, ``training``, momentum and ε are used; the
    running statistics are updated in place in training). ``mask: (T, B)`` bool or None.

    Returns every step's ``h_t: (T, B, H)`` and the last ``c: (B, H)``.
    """
    stats = (bn_h.running_mean, bn_h.running_var, bn_c.running_mean, bn_c.running_var)
    return BNLSTMRecurrence.apply(
        gx, h0, c0, weight_h, bn_h.weight, bn_c.weight, bn_c.bias, mask, stats, start,
        bn_h.training, bn_h.momentum, bn_h.eps,
    )
