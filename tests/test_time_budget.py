"""DecayOverTimeBudget: the warm-up + decay schedule fitted to trainer.max_time."""

from __future__ import annotations

import math
import time

import pytest
import pytorch_lightning as pl
import torch

from zoo.callbacks import DecayOverTimeBudget
from zoo.optim import WarmupCosineLR


def cosine(base: float, min_lr: float, progress: float) -> float:
    """The paper-style cosine decay written out (Loshchilov & Hutter, SGDR eq. 5)."""
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * progress))


def test_the_decay_progress_is_the_share_of_the_budget_spent_after_warm_up():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=10, total_steps=1000, min_lr=0.01)
    callback = DecayOverTimeBudget()
    callback.fit(scheduler, step=4, elapsed=2.0, budget=105.0)  # warming up: the recipe's guess stands
    assert scheduler.total_steps == 1000 and callback.warmup_end_seconds is None
    callback.fit(scheduler, step=10, elapsed=5.0, budget=105.0)  # warm-up ends at 5 s: the decay starts at the top
    assert callback.warmup_end_seconds == 5.0 and scheduler._lr_at(1.0, 11) == 1.0
    for step, elapsed, progress in ((60, 55.0, 0.5), (30, 30.0, 0.25), (200, 95.0, 0.9), (250, 105.0, 1.0)):
        callback.fit(scheduler, step=step, elapsed=elapsed, budget=105.0)
        assert scheduler._lr_at(1.0, step) == pytest.approx(cosine(1.0, 0.01, progress), abs=1e-12)
    callback.fit(scheduler, step=300, elapsed=130.0, budget=105.0)  # past the budget: stays at the minimum
    assert scheduler._lr_at(1.0, 300) == pytest.approx(0.01)
    restored = DecayOverTimeBudget()
    restored.load_state_dict(callback.state_dict())
    assert restored.warmup_end_seconds == 5.0


class SlowSteps(pl.LightningModule):
    """A one-parameter model whose steps take ~``seconds`` each, with a cosine schedule guessed ``total_steps``."""

    def __init__(self, total_steps: int, seconds: float = 0.01) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.total_steps, self.seconds = total_steps, seconds
        self.rates: list[tuple[float, float]] = []  # (training seconds, learning rate) per step

    def training_step(self, batch, batch_idx):
        time.sleep(self.seconds)
        self.rates.append((time.perf_counter(), self.optimizers().param_groups[0]["lr"]))
        return (self.weight * batch[0]).sum() * 0.0

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        scheduler = WarmupCosineLR(optimizer, warmup_steps=5, total_steps=self.total_steps, min_lr=0.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def train(model: pl.LightningModule, callbacks: list, seconds: float = 2.0) -> None:
    trainer = pl.Trainer(
        max_time={"seconds": seconds},
        max_epochs=10_000,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)


@pytest.mark.parametrize("guess", [100_000, 20])
def test_a_timed_run_decays_to_the_minimum_as_its_budget_runs_out(guess):
    fitted = SlowSteps(total_steps=guess)
    train(fitted, [DecayOverTimeBudget()])
    steps = len(fitted.rates)
    assert steps > 40  # ~2 s of 10 ms steps
    rates = [rate for _, rate in fitted.rates[6:]]
    assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:]))  # never rises again after warm-up
    start, end = fitted.rates[5][0], fitted.rates[-1][0]
    for moment, rate in fitted.rates[6:]:  # the rate follows the cosine of the time spent (10 % slack: timing)
        assert rate == pytest.approx(cosine(1.0, 0.0, (moment - start) / (end - start)), abs=0.1)
    assert rates[-1] < 0.05
    alone = SlowSteps(total_steps=guess)
    train(alone, [])
    # without the callback the guess decides: far from the minimum (too many steps) or at it half-way (too few)
    middle = alone.rates[len(alone.rates) // 2][1]
    assert alone.rates[-1][1] > 0.9 if guess > steps else middle == pytest.approx(0.0)


def test_a_step_budget_that_ends_first_ends_the_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=10, total_steps=1000, min_lr=0.0)
    callback = DecayOverTimeBudget()
    callback.fit(scheduler, step=10, elapsed=0.0, budget=100.0, max_steps=110)
    callback.fit(scheduler, step=60, elapsed=10.0, budget=100.0, max_steps=110)  # steps: half-way; time: a tenth
    assert scheduler._lr_at(1.0, 60) == pytest.approx(cosine(1.0, 0.0, 0.5))
    callback.fit(scheduler, step=70, elapsed=90.0, budget=100.0, max_steps=110)  # time nearer its end
    assert scheduler._lr_at(1.0, 70) == pytest.approx(cosine(1.0, 0.0, 0.9))


def test_without_a_time_budget_the_recipe_total_steps_stands_with_a_warning():
    trainer = pl.Trainer(
        max_steps=12,
        callbacks=[DecayOverTimeBudget()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = SlowSteps(total_steps=12, seconds=0.0)
    with pytest.warns(UserWarning, match=r"no trainer.max_time, so the schedule's total_steps \(12\) stands"):
        trainer.fit(model)
    expected = [1.0 * (s + 1) / 5 if s < 5 else cosine(1.0, 0.0, (s - 5) / 7) for s in range(12)]
    assert [rate for _, rate in model.rates] == pytest.approx(expected)


def test_without_a_warmup_decay_scheduler_it_says_what_is_needed():
    class Plain(SlowSteps):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    trainer = pl.Trainer(max_steps=2, callbacks=[DecayOverTimeBudget()], logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="needs a learning-rate scheduler with warmup_steps and total_steps"):
        trainer.fit(Plain(total_steps=2, seconds=0.0))
