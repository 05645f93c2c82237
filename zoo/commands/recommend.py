"""``zoo recommend --model M --user U --k 10``: a user's top-k unseen items with predicted ratings.

``M`` is anything :func:`zoo.load` accepts: a folder written by ``Recommender.save_pretrained``, a
Lightning checkpoint (``.ckpt``) of ``AutoEncoderRecommender``, a Hub repository. The user's ratings
come from the data source recorded in the model (or ``--data``).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

import zoo


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Recommender folder, AutoEncoderRecommender .ckpt or Hub repo")
    parser.add_argument("--user", type=int, required=True, help="raw user id as in the rating file")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", help="rating file/folder to read the user's ratings from (default: the model's)")
    parser.add_argument("--format", default="auto")
    args = parser.parse_args(argv)
    recommender = zoo.load(args.model)
    if args.data:
        recommender.data = {**(recommender.data or {}), "path": args.data, "format": args.format}
    try:
        history = recommender.user_history(args.user)
    except (KeyError, ValueError) as error:
        print(f"zoo recommend: {error.args[0]}", file=sys.stderr)
        return 1
    table = Table(title=f"top {args.k} unseen items for user {args.user} ({len(history)} ratings known)")
    for column in ("rank", "item", "predicted rating"):
        table.add_column(column, justify="right")
    for rank, (item, rating) in enumerate(recommender.recommend(history, args.k), 1):
        table.add_row(str(rank), str(item), f"{rating:.3f}")
    Console().print(table)
    return 0
