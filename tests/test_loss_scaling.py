"""LossScaling: real fp16 autocast (CPU everywhere, CUDA where a GPU is present), fp32 master weights,
skipped overflow steps, static scale."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoo.callbacks.loss_scaling import LossScaling, ZooGradScaler


class Regression(pl.LightningModule):
    """y = x @ w + noise; records what the tests check at every step."""

    def __init__(self, inject_inf_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.inject_inf_at = inject_inf_at
        self.forward_dtypes: list[torch.dtype] = []
        self.param_dtypes: set[torch.dtype] = set()
        self.weights_before: dict[int, torch.Tensor] = {}
        self.weights_after: dict[int, torch.Tensor] = {}
        self.unscaled_grads: dict[int, torch.Tensor] = {}

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.parameters()]).clone()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.forward_dtypes.append(out.dtype)
        self.param_dtypes |= {p.dtype for p in self.parameters()}
        return nn.functional.mse_loss(out.float(), y)

    def on_train_batch_start(self, batch, batch_idx):
        self.weights_before[self.global_step] = self.flat()

    def on_after_backward(self):
        if self.global_step == self.inject_inf_at:
            self.net[0].weight.grad[0, 0] = float("inf")

    def on_before_optimizer_step(self, optimizer):
        self.unscaled_grads[self.global_step] = torch.cat([p.grad.flatten() for p in self.parameters()]).clone()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights_after[self.global_step - 1] = self.flat()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


# every fp16 test runs on the CPU and, on a machine with a GPU, again on CUDA (real fp16 tensor cores)
ACCELERATORS = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
on_each_accelerator = pytest.mark.parametrize("accelerator", ACCELERATORS)


def loader(n=64, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x.sum(dim=1, keepdim=True) * 0.3
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fp16_trainer(callbacks, max_steps=8, accelerator="cpu", **kwargs):
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        log_every_n_steps=1,
        # plain precision="16-mixed" silently becomes bf16 on CPU: pass the fp16 plugin explicitly
        plugins=[MixedPrecision("16-mixed", accelerator, torch.amp.GradScaler(accelerator))],
        **kwargs,
    )


@on_each_accelerator
def test_dynamic_scale_skips_overflow_step_and_backs_off(accelerator):
    torch.manual_seed(0)
    model = Regression(inject_inf_at=3)
    callback = LossScaling(mode="dynamic", init_scale=1024.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=2)
    trainer = fp16_trainer([callback], accelerator=accelerator)
    trainer.fit(model, loader())
    scaler = trainer.precision_plugin.scaler
    assert scaler is callback.scaler and isinstance(scaler, ZooGradScaler)
    # real fp16 forward, fp32 master weights throughout
    assert set(model.forward_dtypes) == {torch.float16}
    assert model.param_dtypes == {torch.float32}
    # the overflow step left the weights untouched; every other step changed them
    for step in range(8):
        changed = not torch.equal(model.weights_before[step], model.weights_after[step])
        assert changed == (step != 3), step
    assert scaler.skipped_steps == 1
    # scale: 1024, grows x2 after steps 1 (2 clean steps), backs off x0.25 at step 3,
    # grows after steps 5 and 7 -> 1024 * 2 * 0.25 * 2 * 2
    assert scaler.get_scale() == 1024.0 * 2 * 0.25 * 2 * 2
    assert trainer.callback_metrics["loss_scale"] == scaler.get_scale()
    assert trainer.callback_metrics["loss_scale_skipped_steps"] == 1.0
    assert trainer.global_step == 8


@on_each_accelerator
def test_static_scale_stays_constant_and_gradients_are_unscaled(accelerator):
    torch.manual_seed(0)
    fp16 = Regression(inject_inf_at=2)
    reference = Regression()
    reference.load_state_dict(fp16.state_dict())
    callback = LossScaling(mode="static", init_scale=128.0)
    trainer = fp16_trainer([callback], max_steps=2, accelerator=accelerator)
    trainer.fit(fp16, loader())
    assert callback.scaler.get_scale() == 128.0 and not callback.scaler.dynamic
    # step 0: the unscaled fp16 gradient equals the fp32 gradient up to fp16 rounding (not 128x it)
    fp32 = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fp32.fit(reference, loader())
    g16, g32 = fp16.unscaled_grads[0].cpu(), reference.unscaled_grads[0]
    assert torch.allclose(g16, g32, rtol=2e-2, atol=2e-3), (g16 - g32).abs().max()

    # an overflow is skipped but leaves the static scale alone
    torch.manual_seed(0)
    model = Regression(inject_inf_at=2)
    callback = LossScaling(mode="static", init_scale=128.0)
    trainer = fp16_trainer([callback], max_steps=5, accelerator=accelerator)
    trainer.fit(model, loader())
    assert callback.scaler.skipped_steps == 1 and callback.scaler.get_scale() == 128.0
    assert torch.equal(model.weights_before[2], model.weights_after[2])
    assert not torch.equal(model.weights_before[4], model.weights_after[4])


def test_collapsing_scale_warns():
    class AlwaysInf(Regression):
        def on_after_backward(self):
            self.net[0].weight.grad[0, 0] = float("nan")

    callback = LossScaling(init_scale=8.0, backoff_factor=0.5, collapse_threshold=1.0)
    with pytest.warns(UserWarning, match="loss scale collapsed to 0.5"):
        fp16_trainer([callback], max_steps=4).fit(AlwaysInf(), loader())
    assert callback.scaler.skipped_steps == 4


def test_bf16_and_fp32_need_no_scaling_and_bad_arguments():
    with pytest.warns(UserWarning, match="'bf16-mixed' needs no loss scaling"):
        pl.Trainer(
            accelerator="cpu",
            precision="bf16-mixed",
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[LossScaling()],
        ).fit(Regression(), loader())
    with pytest.raises(ValueError, match="mode: static"):
        LossScaling(growth_factor=1.0)
    with pytest.raises(ValueError, match="needs precision='16-mixed'"):
        pl.Trainer(
            accelerator="cpu",
            precision="16-true",
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[LossScaling()],
        ).fit(Regression(), loader())


def test_scaler_state_round_trip():
    scaler = ZooGradScaler("cpu", init_scale=64.0, dynamic=False)
    scaler.skipped_steps = 3
    fresh = ZooGradScaler("cpu", init_scale=1.0, dynamic=False)
    fresh.load_state_dict(scaler.state_dict())
    assert fresh.get_scale() == 64.0 and fresh.skipped_steps == 3


@on_each_accelerator
def test_real_speech_model_in_fp16_backs_off_from_a_too_large_scale(accelerator):
    """jasper-tiny + CTCSpeechRecognizer in real fp16: a 2^20 start overflows the fp16 gradients, the
    overflowing steps are skipped and the scale halves until the updates go through (paper section 3.2)."""
    from test_ctc_recognizer import FakeSpeechData, make_items

    from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer

    torch.manual_seed(0)
    data = FakeSpeechData(make_items(16, 0), make_items(8, 1), batch_size=8)
    model = CTCSpeechRecognizer("jasper-tiny", optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    steps = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
            steps.append(
                (
                    callback.scaler.last_step_skipped,
                    not torch.equal(self.before, after),
                    {p.dtype for p in pl_module.parameters()},
                )
            )

    callback = LossScaling(init_scale=2.0**20, growth_interval=1000)
    fp16_trainer(
        [callback, Watch()], max_steps=8, accelerator=accelerator, num_sanity_val_steps=0, limit_val_batches=0
    ).fit(model, data)
    skipped = callback.scaler.skipped_steps
    assert 1 <= skipped < 8 and callback.scaler.get_scale() == 2.0**20 * 0.5**skipped
    assert all(changed != was_skipped for was_skipped, changed, _ in steps)  # skipped <=> weights unchanged
    assert not steps[-1][0] and all(dtypes == {torch.float32} for _, _, dtypes in steps)
