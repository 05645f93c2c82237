"""``zoo import-nemo FILE.nemo OUT_DIR``: convert a NeMo Jasper/QuartzNet checkpoint into a zoo pipeline folder.

The folder (``model.safetensors`` + ``config.json``) loads with ``zoo.load(OUT_DIR)``; see
:mod:`zoo.speech.nemo_import` and docs/import-nemo.md for what converts exactly.

NeMo changed its featurizer in 2.5 (zero instead of reflection padding of the STFT, S // hop instead
of 1 + S // hop frames). The import reproduces the NeMo release recorded in the file's
``nemo_version`` (the current convention when none is recorded); --nemo-version picks another.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from zoo.speech.nemo_import import NemoImportError, import_nemo, nemo_version


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo import-nemo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("nemo", help="a NeMo .nemo file (tar with model_config.yaml + model_weights.ckpt)")
    parser.add_argument("out_dir", help="folder to write the zoo SpeechRecognizer to")
    parser.add_argument(
        "--nemo-version",
        metavar="X.Y",
        default=None,
        help="reproduce this NeMo release's featurizer (default: the file's nemo_version)",
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        recognizer = import_nemo(args.nemo, nemo_version=args.nemo_version)
    except NemoImportError as error:
        console.print(f"[red]zoo import-nemo: {escape(str(error))}[/]", soft_wrap=True, highlight=False)
        return 1
    recognizer.save_pretrained(args.out_dir)
    config, features = recognizer.encoder.config, recognizer.featurizer.config
    release = args.nemo_version or nemo_version(args.nemo) or "current"
    console.print(
        f"{escape(args.nemo)} -> {escape(args.out_dir)}: Jasper {len(config.blocks)} blocks, "
        f"residual={config.residual} ({config.residual_mode}), separable={config.separable}, "
        f"{recognizer.tokenizer.vocab_size} outputs; "
        f"NeMo {release} featurizer (STFT padding {features.stft_pad}, frame count {features.frame_count})",
        soft_wrap=True,
    )
    return 0
