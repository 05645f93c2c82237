"""``zoo list``: a table of the zoo's named models with their parameter counts."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from zoo.registry import count_parameters, list_models


def format_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo list", description=__doc__)
    parser.add_argument("--task", help="only models of this task (speech, lm, recsys)")
    args = parser.parse_args(argv)
    specs = list_models(args.task)
    # Names are what users copy: never wrapped or cut; only the description wraps (`zoo.load(name)` tells the class).
    table = Table(title="zoo models")
    table.add_column("name", no_wrap=True, min_width=max((len(spec.name) for spec in specs), default=4))
    table.add_column("task", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("description", ratio=1)
    for spec in specs:
        n = count_parameters(spec.name)
        table.add_row(spec.name, spec.task, f"{format_count(n)} ({n:,})", spec.description)
    Console().print(table)
    return 0
