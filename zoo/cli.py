"""The ``zoo`` command line.

``zoo fit|validate|test|predict --config configs/X.yaml`` is Lightning's own CLI
(:class:`ZooCLI`), so every hyperparameter of the model, the data and the trainer can be
overridden on the command line (``--model.lr 0.01``, ``--trainer.max_epochs 3``).
The zoo's own commands (``zoo list``, ``zoo demo``, ...) are small functions listed in
:data:`COMMANDS`, each imported only when it runs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import Checkpoint, ModelSummary, ProgressBar, RichModelSummary
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from zoo.callbacks.resume import ResumableRNG
from zoo.callbacks.saved_name import RecordSavedName
from zoo.lightning_modules.ctc_speech_recognizer import encoder_time_reduction

#: ``zoo NAME ...`` -> ``"module:function"``; the function takes the remaining argv and returns an exit code.
COMMANDS: dict[str, str] = {
    "list": "zoo.commands.list_models:main",
    "demo": "zoo.commands.demo:main",
    "recommend": "zoo.commands.recommend:main",
    "publish": "zoo.commands.publish:main",
    "download": "zoo.commands.download:main",
    "transcribe": "zoo.commands.transcribe:main",
    "prepare-librispeech": "zoo.datamodules.librispeech:main",
    "prepare-real-speech": "zoo.commands.prepare_real_speech:main",
    "import-nemo": "zoo.commands.import_nemo:main",
    "import-deepspeech": "zoo.commands.import_deepspeech:main",
}

#: Lightning's subcommands with their one-line descriptions (``zoo fit --help`` lists every option).
LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "train a recipe: --config configs/X.yaml (--ckpt_path last resumes)",
    "validate": "evaluate a checkpoint on the validation set (--config, --ckpt_path)",
    "test": "evaluate a checkpoint on the test set (--config, --ckpt_path)",
    "predict": "run the model's predict_step over the data module's predict set",
}

#: Trainer flags that switch a feature off, and the callbacks of that feature a recipe may list.
DISABLING_FLAGS: dict[str, type] = {
    "enable_checkpointing": Checkpoint,
    "enable_progress_bar": ProgressBar,
    "enable_model_summary": ModelSummary,
}


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
        # RecordSavedName: the module's stable name in checkpoints (zoo.saved_names), so moving a class breaks none.
        # (The rich progress bar is Lightning's own default when rich is installed.)
        kwargs["trainer_defaults"].setdefault("callbacks", [ResumableRNG(), RecordSavedName()])
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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The speech model <-> data contract, stated once. The DataModule's featurizer and tokenizer *are*
        the model's, and the DataModule's CTC length rule uses the encoder's own time reduction, so a recipe
        cannot make them disagree (a value given for a linked target is replaced by its source's). Links whose
        keys a recipe's classes lack (recommender, language models) do not apply."""
        parser.link_arguments(("model.init_args.encoder", "model.init_args.encoder_overrides"),
                              "data.init_args.time_reduction", compute_fn=encoder_time_reduction)
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


def _load_command(spec: str) -> Callable[[list[str]], int]:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def describe(spec: str) -> str:
    """First line of the command function's docstring, else of its module's, read without importing it
    (``zoo --help`` stays fast); a leading ````zoo name ARGS````: is dropped."""
    module, _, function = spec.partition(":")
    origin = importlib.util.find_spec(module).origin
    tree = ast.parse(open(origin, encoding="utf-8").read())
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    doc = (func and ast.get_docstring(func)) or ast.get_docstring(tree) or ""
    line = doc.strip().split("\n", 1)[0]
    if line.startswith("``") and "``: " in line:
        line = line.split("``: ", 1)[1]
    return line


def usage() -> str:
    """``zoo --help``: every command with one line each."""
    width = max(map(len, [*LIGHTNING_SUBCOMMANDS, *COMMANDS])) + 2
    lines = ["usage: zoo COMMAND [ARGS ...]    (zoo COMMAND --help: the command's options)", "",
             "Training and evaluation (Lightning CLI; any --model.* / --data.* / --trainer.* flag):"]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += ["", "Other commands:"]
    lines += [f"  {name:<{width}}{describe(spec)}" for name, spec in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in COMMANDS:
        return int(_load_command(COMMANDS[args[0]])(args[1:]) or 0)
    if not args[0].startswith("-") and args[0] not in LIGHTNING_SUBCOMMANDS:
        names = ", ".join([*LIGHTNING_SUBCOMMANDS, *COMMANDS])
        print(f"zoo: unknown command {args[0]!r}; commands: {names}", file=sys.stderr)
        return 2
    # args=None from the shell: LightningCLI reads sys.argv itself (and does not warn that both were given)
    ZooCLI(args=None if argv is None else args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
