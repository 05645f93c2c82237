"""``zoo prepare-real-speech``: build the real human speech test sets (Asterisk prompts, pocketsphinx, ALSA).

Module :mod:`zoo.datamodules.real_speech` does the work. Prints one row per source (clips, minutes,
speakers, licence, manifest) and the skipped clips with their reasons; a source whose package is
missing is one line saying how to install it. The manifests are ready as test sets of any speech
recipe::

    zoo test --config jasper_english --ckpt_path CKPT \\
        --data.init_args.test_manifests "[$HOME/.cache/zoo/speech/real/asterisk.json]"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from zoo.datamodules.real_speech import SOURCES, PreparedSource, prepare_real_speech


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo prepare-real-speech", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from {', '.join(SOURCES)}")
    parser.add_argument("--cache-dir", help="cache root (default: $ZOO_CACHE, $XDG_CACHE_HOME/zoo or ~/.cache/zoo)")
    parser.add_argument(
        "--no-fetch", action="store_true", help="use only installed packages (no `apt-get download`, no `pip download`)"
    )
    parser.add_argument(
        "--root",
        action="append",
        default=None,
        help="look for the Debian packages' files under this folder (e.g. one unpacked with "
        "`dpkg -x`) instead of /; repeatable",
    )
    parser.add_argument("--show-skipped", type=int, default=5, help="skipped clips listed per source (default 5)")
    return parser


def print_sources(prepared: dict[str, PreparedSource], console: Console, show_skipped: int = 5) -> None:
    table = Table(title="real-speech test sets")
    for column in ("source", "clips", "minutes", "words", "skipped", "speakers", "licence"):
        table.add_column(column, justify="right" if column in ("clips", "minutes", "words", "skipped") else "left")
    for source, p in prepared.items():
        i = p.info
        table.add_row(
            source,
            str(i["clips"]),
            f"{i['minutes']:.1f}",
            str(i["words"]),
            str(len(i["skipped"])),
            ", ".join(i["speakers"]),
            "; ".join(i["licences"]),
        )
    console.print(table)
    for source, p in prepared.items():
        stable = p.manifest.parent.parent / f"{source}.json"
        console.print(f"{source}: {stable} (= {p.manifest})", markup=False, soft_wrap=True)
    for source, p in prepared.items():
        skipped = p.info["skipped"]
        for item in skipped[:show_skipped]:
            console.print(
                f"  {source}: skipped {item['clip']}: {item['reason']}", overflow="ellipsis", no_wrap=True, markup=False
            )
        if len(skipped) > show_skipped:
            console.print(f"  {source}: ... and {len(skipped) - show_skipped} more (info.json beside the manifest)")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    console = Console()
    if unknown:
        console.print(f"zoo prepare-real-speech: unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
        return 2
    with console.status("preparing the real-speech test sets ..."):
        roots = [Path(r) for r in args.root] if args.root else None
        prepared = prepare_real_speech(
            sources,
            args.cache_dir,
            fetch=not args.no_fetch,
            roots=roots,
            report=lambda line: console.print(line, markup=False, soft_wrap=True),
        )
    if prepared:
        print_sources(prepared, console, args.show_skipped)
    return 0 if prepared else 1
