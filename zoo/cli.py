"""The ``zoo`` command line.

``zoo fit|validate|test|predict --config NAME`` (a recipe of :mod:`zoo.recipes`, or a YAML path) is Lightning's own CLI
(:class:`zoo.lightning_cli.ZooCLI`), so every hyperparameter of the model, the data and the
trainer can be overridden on the command line (``--model.lr 0.01``, ``--trainer.max_epochs 3``).
It is imported only for those subcommands, so ``zoo``, ``zoo --help`` and the zoo's own commands
start without Lightning (``from zoo.cli import ZooCLI`` still works).
The zoo's own commands (``zoo list``, ``zoo demo``, ...) are small functions listed in
:data:`COMMANDS`, each imported only when it runs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from zoo import recipes

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
    "fit": "train a recipe: --config jasper_demo (a recipe name or a YAML path; --ckpt_path last resumes)",
    "validate": "evaluate a checkpoint on the validation set (--config, --ckpt_path)",
    "test": "evaluate a checkpoint on the test set (--config, --ckpt_path)",
    "predict": "run the model's predict_step over the data module's predict set",
}


def quiet_known_warnings() -> None:
    """Silence one known, harmless deprecation inside pytorch-lightning 2.6.6 under torch >= 2.13."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


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
    lines = [
        "usage: zoo COMMAND [ARGS ...]    (zoo COMMAND --help: the command's options)",
        "",
        "Training and evaluation (Lightning CLI; any --model.* / --data.* / --trainer.* flag):",
    ]
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
    try:
        args = recipes.config_args(args)  # --config jasper_demo -> the recipe file inside the package
    except recipes.RecipeError as error:
        print(f"zoo: {error}", file=sys.stderr)
        return 2
    from zoo.lightning_cli import ZooCLI  # Lightning (and torch) only for a Lightning subcommand

    # args=None from the shell: LightningCLI reads sys.argv itself (and does not warn that both were given)
    if argv is None:
        sys.argv[1:] = args
    ZooCLI(args=None if argv is None else args)
    return 0


def __getattr__(name: str) -> Any:
    """``from zoo.cli import ZooCLI`` (and ``DISABLING_FLAGS``) still works: imported on first use."""
    if name in ("ZooCLI", "DISABLING_FLAGS"):
        from zoo import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
