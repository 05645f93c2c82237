"""NovoGrad against a naive per-tensor loop of the paper's equations; warm-up schedules vs formulas."""

import copy
import math

import pytest
import torch
from torch import nn

from zoo.optim import NovoGrad, WarmupCosineLR, WarmupPolynomialLR


def naive_novograd(params, grads_per_step, lr, beta1, beta2, eps, wd, grad_averaging=False, amsgrad=False):
    """arXiv 1905.11286 Alg. 1, one tensor at a time, in float64 Python arithmetic for the norms."""
    w = [p.detach().clone().double() for p in params]
    m = [torch.zeros_like(x) for x in w]
    v = [None] * len(w)
    vmax = [None] * len(w)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = g.double()
            g2 = float((g * g).sum())
            v[i] = g2 if v[i] is None else beta2 * v[i] + (1 - beta2) * g2
            vmax[i] = v[i] if vmax[i] is None else max(vmax[i], v[i])
            denom = math.sqrt(vmax[i] if amsgrad else v[i]) + eps
            normalized = g / denom * ((1 - beta1) if grad_averaging else 1.0)
            m[i] = beta1 * m[i] + (normalized + wd * w[i])
            w[i] = w[i] - lr * m[i]
    return w


@pytest.mark.parametrize(
    "grad_averaging,amsgrad,wd", [(False, False, 0.0), (False, False, 0.01), (True, False, 0.001), (False, True, 0.001)]
)
def test_matches_paper_equations(grad_averaging, amsgrad, wd):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    start = [p.detach().clone() for p in params]
    opt = NovoGrad(
        params, lr=0.05, betas=(0.9, 0.5), eps=1e-8, weight_decay=wd, grad_averaging=grad_averaging, amsgrad=amsgrad
    )
    # decreasing-then-growing gradient scales exercise amsgrad's running max
    steps = [[torch.randn_like(p) * s for p in params] for s in (3.0, 0.5, 0.1, 2.0, 0.2)]
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    expected = naive_novograd(start, steps, 0.05, 0.9, 0.5, 1e-8, wd, grad_averaging, amsgrad)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, atol=1e-6, rtol=1e-6)


def test_does_not_modify_grad_in_place_and_skips_params_without_grad():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = NovoGrad([a, b], lr=0.1, weight_decay=0.5)
    a.grad = torch.tensor([1.0, 2.0, 2.0])
    kept = a.grad.clone()
    opt.step()
    assert torch.equal(a.grad, kept)
    assert torch.equal(b.detach(), torch.ones(2))
    # first step: v = ||g||² = 9, m = g/3 + 0.5·w
    torch.testing.assert_close(a.detach(), torch.ones(3) - 0.1 * (kept / 3 + 0.5))


def test_param_groups_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = [
        {"params": [model[0].weight, model[1].weight]},
        {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0, "lr": 0.02},
    ]
    opt = NovoGrad(groups, lr=0.01, weight_decay=0.1)
    x = torch.randn(8, 3)

    def step(o, m):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()

    step(opt, model)
    twin = copy.deepcopy(model)
    opt2 = NovoGrad(
        [
            {"params": [twin[0].weight, twin[1].weight]},
            {"params": [twin[0].bias, twin[1].bias], "weight_decay": 0.0, "lr": 0.02},
        ],
        lr=0.01,
    )
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as after torch.save / torch.load
    assert opt2.param_groups[0]["weight_decay"] == 0.1 and opt2.param_groups[1]["lr"] == 0.02
    step(opt, model)
    step(opt2, twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="betas"):
        NovoGrad([nn.Parameter(torch.ones(1))], betas=(1.0, 0.5))


def _lrs(scheduler_cls, steps, **kwargs):
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.2)
    sched = scheduler_cls(opt, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_formula():
    lrs = _lrs(WarmupCosineLR, 14, warmup_steps=4, total_steps=12, min_lr=0.01)
    for s, lr in enumerate(lrs):
        if s < 4:
            expected = 0.2 * (s + 1) / 4
        else:
            p = min(1.0, (s - 4) / 8)
            expected = 0.01 + (0.2 - 0.01) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr == pytest.approx(expected, abs=1e-12), s
    assert lrs[3] == pytest.approx(0.2) and lrs[4] == pytest.approx(0.2) and lrs[13] == pytest.approx(0.01)


def test_warmup_polynomial_formula():
    lrs = _lrs(WarmupPolynomialLR, 12, warmup_steps=2, total_steps=10, power=2.0)
    for s, lr in enumerate(lrs):
        expected = 0.2 * (s + 1) / 2 if s < 2 else 0.2 * (1 - min(1.0, (s - 2) / 8)) ** 2
        assert lr == pytest.approx(expected, abs=1e-12), s
