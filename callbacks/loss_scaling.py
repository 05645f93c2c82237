"""Loss scaling for fp16 mixed-precision training (Micikevicius et al. 2018, arXiv 1710.03740).

fp16 gradients below 2^-24 flush to zero. The paper (section 3.2) multiplies the loss by a
factor S before back-propagation, so the gradients are S times larger and representable, and
divides the weight gradients by S before the update, which is applied to an fp32 *master copy*
of the weights (section 3.1). Lightning's ``precision="16-mixed"`` already keeps the weights in
fp32 and runs the forward pass under ``torch.autocast``; its :class:`MixedPrecision` plugin owns
a ``torch.amp.GradScaler``. :class:`LossScaling` replaces that scaler by a configured
:class:`ZooGradScaler`:

- ``mode: dynamic`` (the paper's "choose S dynamically", section 3.2): start at ``init_scale``;
  an inf/NaN gradient skips the step and multiplies S by ``backoff_factor``;
  ``growth_interval`` overflow-free steps in a row multiply S by ``growth_factor``.
- ``mode: static``: a constant S (the paper's experiments used 8 for Multibox SSD and 128 to
  512 for the language models). Overflowing steps are still skipped, but S never changes
  (``torch.amp.GradScaler`` cannot express this: it rejects factors of 1).

The current scale (``loss_scale``) and the number of skipped steps (``loss_scale_skipped_steps``)
are logged; a scale that falls below ``collapse_threshold`` triggers a warning, because it
means the gradients overflow at almost every step (a diverging loss, or fp16 overflow in the
forward pass). ``bf16-mixed`` has fp32's exponent range and needs no scaling; the callback says
so and does nothing, as it does under fp32.

YAML::

    trainer:
      precision: 16-mixed
      callbacks:
        - class_path: zoo.callbacks.LossScaling
          init_args: {mode: dynamic, init_scale: 65536, growth_interval: 2000}
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.utilities import rank_zero_warn
from torch.amp.grad_scaler import _refresh_per_optimizer_state


class ZooGradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` that also counts skipped steps and supports a static scale.

    Args:
        device: device type of the gradients (``"cuda"``, ``"cpu"``).
        init_scale: the initial (or, with ``dynamic=False``, the constant) loss scale S.
        growth_factor, backoff_factor, growth_interval: dynamic-scaling schedule (ignored when static).
        dynamic: ``False`` keeps S fixed; overflowing steps are skipped all the same.
    """

    def __init__(
        self,
        device: str = "cuda",
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        dynamic: bool = True,
    ) -> None:
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        if not dynamic:
            # The parent checks the factors even though a static scaler never uses them.
            growth_factor, backoff_factor = 2.0, 0.5
        super().__init__(device, init_scale, growth_factor, backoff_factor, growth_interval)
        self.dynamic = dynamic
        self.skipped_steps = 0
        self.last_step_skipped = False

    def _found_inf(self) -> bool:
        flags = [f for state in self._per_optimizer_states.values() for f in state["found_inf_per_device"].values()]
        if not flags:
            raise RuntimeError("ZooGradScaler.update() called before any scaler.step(optimizer)")
        return bool(sum(f.item() for f in flags))

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        if not self._enabled:
            return
        if new_scale is None:
            self.last_step_skipped = self._found_inf()
            self.skipped_steps += int(self.last_step_skipped)
        if self.dynamic or new_scale is not None:
            super().update(new_scale)
        else:
            # Static scale: only clear this iteration's inf checks.
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state:
            state.update(dynamic=self.dynamic, skipped_steps=self.skipped_steps)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        super().load_state_dict(state_dict)


class LossScaling(Callback):
    """Configure, log and watch the fp16 loss scale of Lightning's mixed precision.

    Args:
        mode: ``"dynamic"`` or ``"static"`` (see the module docstring).
        init_scale: initial loss scale S (the constant S when static).
        growth_factor: dynamic: multiply S by this after ``growth_interval`` overflow-free steps.
        backoff_factor: dynamic: multiply S by this after a step with inf/NaN gradients.
        growth_interval: dynamic: overflow-free optimizer steps before S grows.
        collapse_threshold: warn when S falls below this value.
        log_scale: log ``loss_scale`` and ``loss_scale_skipped_steps`` (written every ``log_every_n_steps``).
    """

    def __init__(
        self,
        mode: Literal["dynamic", "static"] = "dynamic",
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        collapse_threshold: float = 1.0,
        log_scale: bool = True,
    ) -> None:
        if mode not in ("dynamic", "static"):
            raise ValueError(f"LossScaling mode must be 'dynamic' or 'static', got {mode!r}")
        if mode == "dynamic" and (growth_factor <= 1.0 or not 0.0 < backoff_factor < 1.0):
            raise ValueError(
                f"dynamic loss scaling needs growth_factor > 1 and 0 < backoff_factor < 1, "
                f"got {growth_factor} and {backoff_factor}; use mode: static for a constant scale"
            )
        self.mode = mode
        self.init_scale = init_scale
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.collapse_threshold = collapse_threshold
        self.log_scale = log_scale
        self.scaler: ZooGradScaler | None = None
        self._collapsed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        plugin = trainer.precision_plugin
        precision = str(getattr(plugin, "precision", trainer.precision))
        if isinstance(plugin, MixedPrecision) and precision == "16-mixed":
            # Installed before Lightning restores a checkpoint, so a resumed run continues with the saved scale.
            self.scaler = ZooGradScaler(
                plugin.device,
                init_scale=self.init_scale,
                growth_factor=self.growth_factor,
                backoff_factor=self.backoff_factor,
                growth_interval=self.growth_interval,
                dynamic=self.mode == "dynamic",
            )
            plugin.scaler = self.scaler
        elif precision.startswith("16"):
            raise ValueError(
                f"LossScaling needs precision='16-mixed' (fp16 autocast with fp32 master weights); "
                f"got {precision!r} with {type(plugin).__name__}, which keeps no fp32 master copy or has its own scaler"
            )
        else:
            rank_zero_warn(
                f"LossScaling: precision {precision!r} needs no loss scaling (only fp16 does); "
                "the callback does nothing"
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.scaler is None or self.scaler._scale is None:
            return
        # One host sync per step, as GradScaler.step already makes to decide whether to skip.
        scale = self.scaler.get_scale()
        if self.log_scale:
            pl_module.log("loss_scale", scale, on_step=True, on_epoch=False, rank_zero_only=True)
            pl_module.log(
                "loss_scale_skipped_steps",
                float(self.scaler.skipped_steps),
                on_step=True,
                on_epoch=False,
                rank_zero_only=True,
            )
        if scale < self.collapse_threshold and not self._collapsed:
            rank_zero_warn(
                f"loss scale collapsed to {scale:g} (< {self.collapse_threshold:g}) at step {trainer.global_step} "
                f"after "
                f"{self.scaler.skipped_steps} skipped steps: the gradients overflow at almost every step. Check for a "
                "diverging loss (learning rate), fp16 overflow in the forward pass, or train in bf16-mixed."
            )
        self._collapsed = scale < self.collapse_threshold
