"""FastestPrecision: training steps alternate between precisions from mid-epoch 0; the fastest per element trains on."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch

from zoo.callbacks import FastestPrecision
from zoo.callbacks.fastest_precision import batch_elements

SECONDS_PER_ELEMENT = 2e-4


class CostsPerElement(pl.LightningModule):
    """A step sleeps ``SECONDS_PER_ELEMENT * factor`` per batch element, ``factor`` by whether bf16 autocast is on;
    it records whether autocast was on."""

    def __init__(self, bf16_factor: float, fp32_factor: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.factors = {True: bf16_factor, False: fp32_factor}
        self.autocast: list[bool] = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        on = torch.is_autocast_enabled("cpu")
        self.autocast.append(on)
        time.sleep(SECONDS_PER_ELEMENT * self.factors[on] * x.numel())
        return (self.weight * x).sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: CostsPerElement, callback: FastestPrecision, sizes: list[int], precision: str = "32-true"):
    data = torch.utils.data.TensorDataset(torch.ones(max(sizes), 1))
    loader = torch.utils.data.DataLoader(data, batch_sampler=[list(range(n)) for n in sizes])
    trainer = pl.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return trainer


@pytest.mark.parametrize(("bf16_factor", "fp32_factor", "fastest"), [(3.0, 1.0, "32-true"), (1.0, 3.0, "bf16-mixed")])
def test_the_steps_alternate_then_the_fastest_precision_trains_on(bf16_factor, fp32_factor, fastest):
    module = CostsPerElement(bf16_factor, fp32_factor)
    callback = FastestPrecision(["bf16-mixed", "32-true"], steps=2, start=0.0)
    trainer = fit(module, callback, [40] * 10, precision="bf16-mixed")
    assert module.autocast[:6] == [True, False] * 3  # a warm-up and two timed steps each, in turn
    assert module.autocast[6:] == [fastest == "bf16-mixed"] * 4
    assert callback.chosen == fastest and trainer.precision == fastest
    slow, fast = sorted(callback.seconds_per_element.values(), reverse=True)
    assert fast >= SECONDS_PER_ELEMENT and slow / fast == pytest.approx(3.0, rel=0.3)


def test_the_time_is_compared_per_batch_element_so_longer_batches_do_not_count_against_a_precision():
    """32-true always gets the batch twice as long as bf16's before it: per step it is 1.5x as slow, per element
    0.75x: it must win."""
    module = CostsPerElement(bf16_factor=4.0, fp32_factor=3.0)
    callback = FastestPrecision(["bf16-mixed", "32-true"], steps=3, start=0.0)
    trainer = fit(module, callback, [2**i for i in range(2, 12)], precision="bf16-mixed")
    assert callback.chosen == "32-true" and trainer.precision == "32-true"
    assert callback.seconds_per_element["bf16-mixed"] / callback.seconds_per_element["32-true"] == pytest.approx(
        4 / 3, rel=0.2
    )


def test_the_measurement_starts_in_the_middle_of_the_first_epoch_where_sortagrad_puts_the_median_batch():
    module = CostsPerElement(bf16_factor=3.0, fp32_factor=1.0)
    callback = FastestPrecision(["bf16-mixed", "32-true"], steps=1)
    fit(module, callback, [20] * 12, precision="bf16-mixed")
    assert module.autocast == [True] * 6 + [True, False, True, False] + [False] * 2
    assert callback.chosen == "32-true"


def test_a_run_shorter_than_the_measurement_ends_in_the_trainers_own_precision():
    module = CostsPerElement(1.0, 1.0)
    callback = FastestPrecision(["32-true", "bf16-mixed"], steps=3, start=0.0)
    trainer = fit(module, callback, [4] * 2)
    assert module.autocast == [False, True]
    assert callback.chosen is None and trainer.precision == "32-true"


def test_a_precision_other_than_the_recipes_is_kept_without_measuring(caplog):
    """The recipe says bf16-mixed and lists the callback; ``--trainer.precision 32-true`` is a deliberate choice."""
    module = CostsPerElement(bf16_factor=1.0, fp32_factor=3.0)
    callback = FastestPrecision(["bf16-mixed", "32-true"], steps=1)
    with caplog.at_level("INFO"):
        trainer = fit(module, callback, [8] * 6)
    assert module.autocast == [False] * 6
    assert callback.chosen == "32-true" == trainer.precision and callback.seconds_per_element == {}
    assert "training in 32-true, as set" in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"candidates": ["16-mixed", "32-true"]}, "'16-mixed' cannot be swapped"),
        ({"candidates": ["32-true"]}, "two or more"),
        ({"candidates": ["32-true", "32-true"]}, "two or more"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"start": 1.0}, "start must be in"),
        ({"start": -0.1}, "start must be in"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        FastestPrecision(**settings)


def test_batch_elements_counts_every_tensor_of_a_nested_batch():
    batch = {"features": torch.zeros(2, 3, 5), "lengths": torch.zeros(2), "ids": ["a", "b"], "pair": (torch.zeros(4),)}
    assert batch_elements(batch) == 30 + 2 + 4
    assert batch_elements("text") == 0
