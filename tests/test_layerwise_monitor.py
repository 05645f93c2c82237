"""LayerwiseMonitor: per-layer norms and scalar optimizer state, written through CSVLogger."""

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.callbacks.layerwise_monitor import LayerwiseMonitor


class ScalarStateSGD(torch.optim.Optimizer):
    """SGD with momentum that keeps a per-tensor scalar state (like NovoGrad's second moment and
    LARS's trust ratio) next to a vector state (the momentum buffer) that the monitor must skip."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})
        self.history: list[dict[int, tuple[float, float]]] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        record = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                g2 = float(sum(v * v for v in p.grad.flatten().tolist()))
                state["second_moment"] = torch.tensor(0.5 * float(state.get("second_moment", g2)) + 0.5 * g2)
                w = math.sqrt(float(sum(v * v for v in p.flatten().tolist())))
                state["trust_ratio"] = torch.tensor(w / (math.sqrt(g2) + 1e-8))
                state["momentum_buffer"] = p.grad.clone()
                state["step"] = torch.tensor(float(len(self.history) + 1))
                record[id(p)] = (float(state["second_moment"]), float(state["trust_ratio"]))
                p.add_(p.grad, alpha=-group["lr"])
        self.history.append(record)
        return loss


class Toy(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        self.reference: dict[int, dict[str, tuple[float, float]]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer):
        # independent reference: plain Python sums of squares
        self.reference[self.global_step] = {
            name: (
                math.sqrt(sum(v * v for v in p.flatten().tolist())),
                math.sqrt(sum(v * v for v in p.grad.flatten().tolist())),
            )
            for name, p in self.named_parameters()
        }

    def configure_optimizers(self):
        return ScalarStateSGD(self.parameters(), lr=0.05)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    return DataLoader(TensorDataset(x, x[:, :1] * 2 - x[:, 1:2]), batch_size=4)


def test_csv_logger_gets_per_layer_norms_and_optimizer_scalars(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=5,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[LayerwiseMonitor(every_n_steps=2)],
    )
    trainer.fit(model, data())
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    logged = {int(r["step"]): r for r in rows if r.get("layerwise/net.0.weight/weight_norm")}
    assert sorted(logged) == [0, 2, 4]
    optimizer = trainer.optimizers[0]
    names = {id(p): n for n, p in model.named_parameters()}
    for step, row in logged.items():
        for name, (w_norm, g_norm) in model.reference[step].items():
            assert float(row[f"layerwise/{name}/weight_norm"]) == pytest.approx(w_norm, rel=1e-5)
            assert float(row[f"layerwise/{name}/grad_norm"]) == pytest.approx(g_norm, rel=1e-5)
        if step == 0:  # no optimizer state before the first update
            assert not row.get("layerwise/net.0.weight/second_moment")
            continue
        for pid, (moment, trust) in optimizer.history[step - 1].items():
            assert float(row[f"layerwise/{names[pid]}/second_moment"]) == pytest.approx(moment, rel=1e-5)
            assert float(row[f"layerwise/{names[pid]}/trust_ratio"]) == pytest.approx(trust, rel=1e-5)
    columns = set(rows[0])
    assert not any(c.endswith("/momentum_buffer") or c.endswith("/step") for c in columns)


def test_off_means_nothing_is_computed(tmp_path, monkeypatch):
    monitor = LayerwiseMonitor(every_n_steps=0)
    monkeypatch.setattr(monitor, "collect", lambda *a: pytest.fail("collect called while off"))
    pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[monitor],
    ).fit(Toy(), data())
    with pytest.raises(ValueError, match="every_n_steps"):
        LayerwiseMonitor(every_n_steps=-1)


def test_novograd_second_moment_and_lars_trust_ratio():
    from zoo.lightning_modules.optimization import parameter_groups
    from zoo.optim import LARS, NovoGrad

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    monitor = LayerwiseMonitor(every_n_steps=1)

    novograd = NovoGrad(model.parameters(), lr=0.01)
    model(x).pow(2).mean().backward()
    first = {n: float(p.grad.pow(2).sum()) for n, p in model.named_parameters()}
    novograd.step()
    metrics = monitor.collect(model, novograd)
    for name, g2 in first.items():  # NovoGrad eq. 1 at step 1: v_1 = ||g_1||^2 per layer
        assert metrics[f"layerwise/{name}/exp_avg_sq"] == pytest.approx(g2, rel=1e-5)

    model.zero_grad()
    lars = LARS(parameter_groups(model, weight_decay=1e-3), lr=0.1, trust_coefficient=0.02)
    model(x).pow(2).mean().backward()
    metrics = monitor.collect(model, lars)
    for name, p in model.named_parameters():
        key = f"layerwise/{name}/trust_ratio"
        if p.ndim == 1:  # biases: excluded from layer adaptation
            assert key not in metrics
            continue
        w, g = math.sqrt(float(p.detach().pow(2).sum())), math.sqrt(float(p.grad.pow(2).sum()))
        assert metrics[key] == pytest.approx(0.02 * w / (g + 1e-3 * w + 1e-8), rel=1e-5)
