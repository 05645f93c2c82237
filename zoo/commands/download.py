"""``zoo download org/name``: fetch a published pipeline into the Hugging Face cache (then it loads offline).

A registry name (``zoo download jasper-5x3``) means ``$ZOO_HUB_ORG/<name>``. Prints the local folder.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from zoo.hub import download, hub_org, is_repo_id
from zoo.pipeline import PipelineLoadError, read_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo download", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", help="org/name on the Hub, or a registry name")
    parser.add_argument("--revision", default=None, help="branch, tag or commit to pin")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: $HF_HUB_CACHE)")
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    console = Console()
    repo_id = args.repo if is_repo_id(args.repo) else f"{hub_org()}/{args.repo}"
    try:
        folder = download(repo_id, args.revision, args.cache_dir, args.token)
        config = read_config(folder)
    except PipelineLoadError as error:
        console.print(f"[red]zoo download: {error}[/]")
        return 1
    console.print(f"{repo_id}: {config['zoo_pipeline']}")
    print(folder)
    return 0
