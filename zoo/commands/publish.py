"""``zoo publish SOURCE --repo org/name``: export a checkpoint (or take an exported folder) and push it to the Hub.

SOURCE is a Lightning ``.ckpt`` (exported through the task module's ``to_pipeline()`` with a model
card filled from the checkpoint) or a pipeline folder written by ``zoo.hub.export`` / ``zoo demo``
(pushed as it is, with its assets: a recognizer's lexicon.txt and lm.arpa). A speech checkpoint
gets its beam-search decoder from ``--lexicon``, ``--lm`` and the tuned ``--lm-weight``,
``--word-score``, ``--beam-size`` (the values ``zoo demo`` prints and writes to results.json).
The token comes from ``--token``, ``$HF_TOKEN`` or ``hf auth login``. ``--dry-run`` only exports.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from zoo import recipes
from zoo.cards import CardInfo
from zoo.checkpoints import card_info_from_checkpoint, export_checkpoint
from zoo.hub import is_repo_id, push
from zoo.pipeline import Pipeline, PipelineLoadError, read_config
from zoo.speech.decoding import BeamSearchConfig


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="a Lightning .ckpt or an exported pipeline folder")
    parser.add_argument("--repo", required=True, help="Hub repository, org/name")
    parser.add_argument("--branch", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the cached login)")
    parser.add_argument("--export-dir", default=None, help="keep the exported folder here (default: a temporary one)")
    parser.add_argument(
        "--recipe",
        default=None,
        help="training recipe to show in the model card: a name such as jasper_demo, or a YAML path",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="training data key for the model card "
        "(movielens, netflix, librispeech, synthetic-speech, ptb); repeatable",
    )
    parser.add_argument("--seed", type=int, default=None, help="training seed for the model card")
    parser.add_argument("--command", default=None, help="the command that trained the model, for the model card")
    decoding = parser.add_argument_group("beam-search decoder of a speech checkpoint (written into the export)")
    decoding.add_argument("--lexicon", default=None, help="word list (one word per line)")
    decoding.add_argument("--lm", default=None, help="ARPA n-gram LM (zoo.speech.ngram.build_arpa)")
    decoding.add_argument("--beam-size", type=int, default=BeamSearchConfig.beam_size)
    decoding.add_argument("--lm-weight", type=float, default=BeamSearchConfig.lm_weight)
    decoding.add_argument("--word-score", type=float, default=BeamSearchConfig.word_score)
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
                overrides = {"datasets": args.dataset, "seed": args.seed, "title": args.repo, "command": args.command}
                if args.recipe:
                    overrides["recipe"] = recipes.path(args.recipe).read_text()
                info: CardInfo = card_info_from_checkpoint(source, **overrides)
                folder = export_checkpoint(
                    source,
                    args.export_dir or tmp,
                    info,
                    load_name=args.repo,
                    prepare=lambda pipeline: set_decoder(pipeline, args),
                )
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            console.print(f"exported [bold]{folder}[/]: {', '.join(files)}")
            if args.dry_run:
                return 0
            url = push(folder, args.repo, token=args.token, private=args.private or None, branch=args.branch)
    except (PipelineLoadError, OSError, KeyError, ValueError, TypeError) as error:
        console.print(f"[red]zoo publish: {error}[/]")
        return 1
    console.print(f"published [bold]{args.repo}[/]: {url}")
    return 0


def set_decoder(pipeline: Pipeline, args: argparse.Namespace) -> None:
    """Give a speech recognizer the beam-search decoder of ``--lexicon`` / ``--lm`` and the tuned weights."""
    if args.lexicon is None and args.lm is None:
        return
    if not callable(getattr(pipeline, "set_beam_search", None)):
        raise TypeError(f"--lexicon/--lm: a {type(pipeline).__name__} has no beam-search decoder")
    pipeline.set_beam_search(
        BeamSearchConfig(
            lexicon=args.lexicon,
            lm=args.lm,
            beam_size=args.beam_size,
            lm_weight=args.lm_weight,
            word_score=args.word_score,
        )
    )
