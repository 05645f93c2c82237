"""``zoo publish SOURCE --repo org/name``: export a checkpoint (or take an exported folder) and push it to the Hub.

SOURCE is a Lightning ``.ckpt`` (exported through the task module's ``to_pipeline()`` with a model
card filled from the checkpoint) or a pipeline folder written by ``zoo.hub.export``. The token
comes from ``--token``, ``$HF_TOKEN`` or ``hf auth login``. ``--dry-run`` only exports.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from zoo.hub import CardInfo, card_info_from_checkpoint, export_checkpoint, is_repo_id, push
from zoo.pipeline import PipelineLoadError, read_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a Lightning .ckpt or an exported pipeline folder")
    parser.add_argument("--repo", required=True, help="Hub repository, org/name")
    parser.add_argument("--branch", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the cached login)")
    parser.add_argument("--export-dir", default=None, help="keep the exported folder here (default: a temporary one)")
    parser.add_argument("--recipe", default=None, help="training config YAML to show in the model card")
    parser.add_argument("--dataset", action="append", default=[], help="training data key for the model card "
                        "(movielens, netflix, librispeech, synthetic-speech, ptb); repeatable")
    parser.add_argument("--seed", type=int, default=None, help="training seed for the model card")
    parser.add_argument("--dry-run", action="store_true", help="export only, do not upload")
    args = parser.parse_args(argv)
    console = Console()
    if not is_repo_id(args.repo):
        parser.error(f"--repo must look like org/name, got {args.repo!r}")
    source = Path(args.source)
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-export-") as tmp:
            if source.is_dir():
                read_config(source)
                folder = source
            else:
                overrides = {"datasets": args.dataset, "seed": args.seed, "title": args.repo}
                if args.recipe:
                    overrides["recipe"] = Path(args.recipe).read_text()
                info: CardInfo = card_info_from_checkpoint(source, **overrides)
                folder = export_checkpoint(source, args.export_dir or tmp, info, load_name=args.repo)
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            console.print(f"exported [bold]{folder}[/]: {', '.join(files)}")
            if args.dry_run:
                return 0
            url = push(folder, args.repo, token=args.token, private=args.private or None, branch=args.branch)
    except (PipelineLoadError, OSError, KeyError, ValueError) as error:
        console.print(f"[red]zoo publish: {error}[/]")
        return 1
    console.print(f"published [bold]{args.repo}[/]: {url}")
    return 0
