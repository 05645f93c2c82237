"""LARS / LARC (arXiv 1708.03888) against a naive loop of the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo import recipes
from zoo.lightning_modules.optimization import parameter_groups
from zoo.optim import LARS


def naive_lars(weights, grads_per_step, lrs, m, betas, eta, mode, excluded, eps=1e-8):
    """Plain Python floats: λ = η||w||/(||g|| + β||w||); v = m v + γ r (g + β w); w -= v
    (β per layer; r = 1 for layers excluded from adaptation)."""
    w = [[float(x) for x in t.flatten()] for t in weights]
    v = [[0.0] * len(t) for t in w]
    for grads, lr in zip(grads_per_step, lrs):
        for k, (wk, gk) in enumerate(zip(w, grads)):
            gk = [float(x) for x in gk.flatten()]
            b = betas[k]
            wn = math.sqrt(sum(x * x for x in wk))
            gn = math.sqrt(sum(x * x for x in gk))
            r = 1.0
            if not excluded[k] and wn > 0 and gn > 0:
                lam = eta * wn / (gn + b * wn + eps)
                r = lam if mode == "scale" else min(lam / lr, 1.0)
            for i in range(len(wk)):
                v[k][i] = m * v[k][i] + lr * r * (gk[i] + b * wk[i])
                wk[i] -= v[k][i]
    return w


@pytest.mark.parametrize("mode, eta", [("scale", 0.01), ("clip", 0.01), ("clip", 100.0)])
def test_matches_naive_equations(mode, eta) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.zeros(5)), nn.Parameter(torch.randn(2))]
    groups = [
        {"params": params[:2]},
        {"params": params[2:], "weight_decay": 0.0, "exclude_from_layer_adaptation": True},
    ]
    opt = LARS(groups, lr=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=eta, mode=mode)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / 10) ** 2)  # the paper's polynomial decay
    start = [p.detach().clone() for p in params]
    grads_per_step, lrs = [], []
    for step in range(4):
        grads = [torch.randn_like(p) for p in params]
        if step == 0:
            grads[0] = torch.zeros_like(grads[0])  # zero gradient norm: unscaled
        grads_per_step.append(grads)
        lrs.append(opt.param_groups[0]["lr"])
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
    expected = naive_lars(start, grads_per_step, lrs, 0.9, [0.01, 0.01, 0.0], eta, mode, [False, False, True])
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(e), rtol=1e-5, atol=1e-6)
    assert lrs[1] < lrs[0]


def test_clip_mode_never_exceeds_global_rate_and_scale_mode_can() -> None:
    w = nn.Parameter(torch.ones(4))
    for mode, expected_step in (("clip", 0.1), ("scale", 1.0 * 2 / 1e-3 * 0.1)):
        w.data.fill_(1.0)
        opt = LARS([w], lr=0.1, momentum=0.0, trust_coefficient=1.0, mode=mode)
        w.grad = torch.full((4,), 1e-3 / 2)  # ||g|| = 1e-3, ||w|| = 2: λ = 2000
        opt.step()
        torch.testing.assert_close(1.0 - w.detach(), torch.full((4,), expected_step * 1e-3 / 2))


def test_parameter_groups_exclude_bias_and_norm_from_adaptation() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    groups = parameter_groups(model, weight_decay=0.1)
    opt = LARS(groups, lr=1.0, momentum=0.0, trust_coefficient=1e-3)
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = model[1].weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model[1].weight.detach(), before - 1.0)  # plain SGD step, no decay, no λ
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("decay_biases", [False, True])
def test_decay_biases_decays_the_excluded_group(decay_biases) -> None:
    """issue 17: with decay_biases=True LARS silently kept biases undecayed. Biases / norm parameters
    stay out of the layer adaptation (r = 1) but take the group's weight decay: v = m v + γ (g + β w)."""
    from zoo.lightning_modules.optimization import configure_optimizers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # non-zero biases, so their decay shows
    opt = configure_optimizers(
        model,
        lambda params: LARS(params, lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01),
        decay_biases=decay_biases,
    )
    params = [p for group in opt.param_groups for p in group["params"]]
    excluded = [group["exclude_from_layer_adaptation"] for group in opt.param_groups for _ in group["params"]]
    assert excluded == [False, True, True, True]  # Linear weight | Linear bias, LayerNorm weight and bias
    start = [p.detach().clone() for p in params]
    grads_per_step = [[torch.randn_like(p) for p in params] for _ in range(3)]
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    betas = [0.1] + [0.1 if decay_biases else 0.0] * 3
    expected = naive_lars(start, grads_per_step, [0.5] * 3, 0.9, betas, 0.01, "scale", excluded)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(e), rtol=1e-5, atol=1e-6)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        LARS([nn.Parameter(torch.ones(1))], mode="bogus")
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS([nn.Parameter(torch.ones(1))], trust_coefficient=0.0)


def test_usable_from_yaml_for_a_zoo_model(tmp_path, monkeypatch) -> None:
    """LightningCLI builds LARS from the command line / YAML and a training step runs with it."""
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("abc abd abe\n" * 40)
    config = recipes.folder() / "lstm_demo.yaml"
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run",
        "2",
        "--model.init_args.network_overrides",
        '{"embedding_size": 8, "hidden_size": 8}',
        "--data.init_args.corpus",
        "files",
        "--data.init_args.data_dir",
        str(tmp_path),
        "--data.init_args.bptt",
        "8",
        "--data.init_args.batch_size",
        "2",
        "--model.init_args.optimizer",
        "zoo.optim.LARS",
        "--model.init_args.optimizer.init_args.lr",
        "0.5",
        "--model.init_args.optimizer.init_args.mode",
        "clip",
    ]
    assert main(args) == 0
    # the same arguments give the task module a LARS over the bias/norm-excluding parameter groups
    from zoo.cli import ZooCLI

    cli = ZooCLI(args=args[1:], run=False)
    cli.model.attach_vocabulary(cli.datamodule.vocabulary, "data")
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, LARS) and optimizer.defaults["mode"] == "clip" and optimizer.defaults["lr"] == 0.5
    assert [g["exclude_from_layer_adaptation"] for g in optimizer.param_groups] == [False, True]
