"""The ``zoo`` command line.

``zoo fit|validate|test|predict --config configs/X.yaml`` is Lightning's own CLI
(:class:`ZooCLI`), so every hyperparameter of the model, the data and the trainer can be
overridden on the command line (``--model.lr 0.01``, ``--trainer.max_epochs 3``).
The zoo's own commands (``zoo list``, ``zoo demo``, ...) are small functions listed in
:data:`COMMANDS`, each imported only when it runs.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence

from pytorch_lightning.callbacks import RichModelSummary, RichProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning import LightningDataModule, LightningModule

from zoo.callbacks.resume import ResumableRNG

#: ``zoo NAME ...`` -> ``"module:function"``; the function takes the remaining argv and returns an exit code.
COMMANDS: dict[str, str] = {
    "list": "zoo.commands.list_models:main",
    "demo": "zoo.commands.demo:main",
    "recommend": "zoo.commands.recommend:main",
    "publish": "zoo.commands.publish:main",
    "download": "zoo.commands.download:main",
    "transcribe": "zoo.commands.transcribe:main",
    "prepare-librispeech": "zoo.datamodules.librispeech:main",
    "import-nemo": "zoo.commands.import_nemo:main",
    "import-deepspeech": "zoo.commands.import_deepspeech:main",
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def quiet_known_warnings() -> None:
    """Silence one known, harmless deprecation inside pytorch-lightning 2.6.6 under torch >= 2.13."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's defaults: any LightningModule / LightningDataModule from YAML,
    rich progress bar and model summary, resumable checkpoints (:class:`~zoo.callbacks.ResumableRNG`;
    do not list it again in a recipe), the resolved config saved next to the logs."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs) -> None:
        kwargs.setdefault("trainer_defaults", {})
        # ResumableRNG: RNG states in checkpoints + atomic writes, so `--ckpt_path last` resumes exactly.
        kwargs["trainer_defaults"].setdefault(
            "callbacks", [RichProgressBar(), RichModelSummary(max_depth=2), ResumableRNG()]
        )
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
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

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path`` itself (for its hyperparameters) before the Trainer does:
        name a truncated or corrupt file clearly instead of torch's zip-reader error."""
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            from zoo.hub import checkpoint_error

            raise checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), error) from error


def _load_command(spec: str) -> Callable[[list[str]], int]:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return int(_load_command(COMMANDS[args[0]])(args[1:]) or 0)
    if args and not args[0].startswith("-") and args[0] not in LIGHTNING_SUBCOMMANDS:
        names = ", ".join([*LIGHTNING_SUBCOMMANDS, *COMMANDS])
        print(f"zoo: unknown command {args[0]!r}; commands: {names}", file=sys.stderr)
        return 2
    ZooCLI(args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
