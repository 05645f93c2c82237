"""``zoo import-nemo FILE.nemo OUT_DIR``: convert a NeMo Jasper/QuartzNet checkpoint into a zoo pipeline folder.

The folder (``model.safetensors`` + ``config.json``) loads with ``zoo.load(OUT_DIR)``; see
:mod:`zoo.speech.nemo_import` for what converts exactly.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from zoo.speech.nemo_import import NemoImportError, import_nemo


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo import-nemo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nemo", help="a NeMo .nemo file (tar with model_config.yaml + model_weights.ckpt)")
    parser.add_argument("out_dir", help="folder to write the zoo SpeechRecognizer to")
    args = parser.parse_args(argv)
    console = Console()
    try:
        recognizer = import_nemo(args.nemo)
    except NemoImportError as error:
        console.print(f"[red]zoo import-nemo: {error}[/]")
        return 1
    recognizer.save_pretrained(args.out_dir)
    config = recognizer.encoder.config
    console.print(f"{args.nemo} -> {args.out_dir}: Jasper {len(config.blocks)} blocks, residual={config.residual}, "
                  f"separable={config.separable}, {recognizer.tokenizer.vocab_size} outputs")
    return 0
