"""``zoo import-deepspeech FILE.ckpt OUT_DIR``: convert a deepspeech.pytorch checkpoint into a zoo pipeline folder.

The folder (``model.safetensors`` + ``config.json``) loads with ``zoo.load(OUT_DIR)``. The encoder is
exact in eval mode; the featurizer is the zoo's closest spectrogram, not deepspeech.pytorch's (see
:mod:`zoo.speech.deepspeech_pytorch_import`).
"""

from __future__ import annotations

import argparse

from rich.console import Console

from zoo.speech.deepspeech_pytorch_import import DeepSpeechImportError, import_deepspeech


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo import-deepspeech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a deepspeech.pytorch .ckpt / .pth file")
    parser.add_argument("out_dir", help="folder to write the zoo SpeechRecognizer to")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load with weights_only=False (OmegaConf hyper-parameters); only for files you trust")
    args = parser.parse_args(argv)
    console = Console()
    try:
        recognizer = import_deepspeech(args.checkpoint, trust_pickle=args.trust_pickle)
    except DeepSpeechImportError as error:
        console.print(f"[red]zoo import-deepspeech: {error}[/]")
        return 1
    recognizer.save_pretrained(args.out_dir)
    config = recognizer.encoder.config
    console.print(f"{args.checkpoint} -> {args.out_dir}: DeepSpeech2 {config.rnn_layers} x {config.rnn_type} "
                  f"{config.rnn_hidden} ({'bidirectional' if config.bidirectional else f'lookahead {config.lookahead}'}), "
                  f"{recognizer.tokenizer.vocab_size} outputs")
    return 0
