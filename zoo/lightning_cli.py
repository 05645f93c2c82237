"""The Lightning half of the ``zoo`` command line: :class:`ZooCLI` (``zoo fit|validate|test|predict``).

Kept apart from :mod:`zoo.cli` so that ``zoo --help`` and the zoo's own commands start without
importing Lightning (or torch); :mod:`zoo.cli` imports this module only for a Lightning subcommand.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from typing import Any

from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import Checkpoint, ModelSummary, ProgressBar, RichModelSummary
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from zoo.callbacks.resume import ResumableRNG
from zoo.callbacks.saved_name import RecordSavedName
from zoo.lightning_modules.ctc_speech_recognizer import encoder_time_reduction

#: Trainer flags that switch a feature off, and the callbacks of that feature a recipe may list.
DISABLING_FLAGS: dict[str, type] = {
    "enable_checkpointing": Checkpoint,
    "enable_progress_bar": ProgressBar,
    "enable_model_summary": ModelSummary,
}


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's defaults: any LightningModule / LightningDataModule from YAML,
    rich progress bar and model summary, resumable checkpoints (:class:`~zoo.callbacks.ResumableRNG`;
    do not list it again in a recipe), the resolved config saved next to the logs."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("trainer_defaults", {})
        # ResumableRNG: RNG states in checkpoints + atomic writes, so `--ckpt_path last` resumes exactly.
        # RecordSavedName: the module's stable name in checkpoints (zoo.saved_names), so moving a class breaks none.
        # (The rich progress bar is Lightning's own default when rich is installed.)
        kwargs["trainer_defaults"].setdefault("callbacks", [ResumableRNG(), RecordSavedName()])
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        with warnings.catch_warnings():
            # programmatic callers (zoo demo, bench, tests) pass `args` while sys.argv holds their own command line
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().__init__(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                run=run,
                auto_configure_optimizers=True,
                **kwargs,
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The speech model <-> data contract, stated once. The DataModule's featurizer and tokenizer *are*
        the model's, and the DataModule's CTC length rule uses the encoder's own time reduction, so a recipe
        cannot make them disagree (a value given for a linked target is replaced by its source's). Links whose
        keys a recipe's classes lack (recommender, language models) do not apply."""
        parser.link_arguments(
            ("model.init_args.encoder", "model.init_args.encoder_overrides"),
            "data.init_args.time_reduction",
            compute_fn=encoder_time_reduction,
        )
        parser.link_arguments("data.init_args.featurizer", "model.init_args.featurizer")
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Every Trainer flag works with every recipe: ``--trainer.enable_checkpointing|enable_progress_bar|
        enable_model_summary false`` drops the recipe's callbacks of that kind (Lightning would refuse the
        combination); otherwise a two-level rich model summary is added unless the recipe has one."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        for flag, kind in DISABLING_FLAGS.items():
            if config.get(flag) is False:
                dropped = [c for c in callbacks if isinstance(c, kind)]
                if dropped:
                    rank_zero_info(f"--trainer.{flag}=false: not using {', '.join(type(c).__name__ for c in dropped)}")
                    callbacks = [c for c in callbacks if not isinstance(c, kind)]
        if config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(RichModelSummary(max_depth=2))
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path`` itself (for its hyperparameters) before the Trainer does:
        name a truncated or corrupt file clearly instead of torch's zip-reader error."""
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            from zoo.checkpoints import checkpoint_error

            raise checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), error) from error
