"""``zoo import-deepspeech FILE.ckpt OUT_DIR``: convert a deepspeech.pytorch checkpoint into a zoo pipeline folder.

The folder (``model.safetensors`` + ``config.json``) loads with ``zoo.load(OUT_DIR)``. The encoder is
exact in eval mode and the featurizer reproduces deepspeech.pytorch's spectrogram, so features, outputs
and greedy transcripts from raw audio equal theirs (see :mod:`zoo.speech.deepspeech_pytorch_import`
and docs/import-deepspeech-pytorch.md).
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from zoo.speech.deepspeech_pytorch_import import DeepSpeechImportError, import_deepspeech
from zoo.speech.peer_features import PAD_MODES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo import-deepspeech", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a deepspeech.pytorch .ckpt / .pth file")
    parser.add_argument("out_dir", help="folder to write the zoo SpeechRecognizer to")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load with weights_only=False (pickled classes other than OmegaConf/deepspeech.pytorch "
        "configuration); only for files you trust",
    )
    parser.add_argument(
        "--stft-pad",
        choices=PAD_MODES,
        default="constant",
        help="STFT padding of the checkpoint's training: 'constant' (zeros, librosa >= 0.10, "
        "default) or 'reflect' (librosa <= 0.9)",
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        recognizer = import_deepspeech(args.checkpoint, trust_pickle=args.trust_pickle, stft_pad=args.stft_pad)
    except DeepSpeechImportError as error:
        console.print(f"[red]zoo import-deepspeech: {escape(str(error))}[/]", soft_wrap=True, highlight=False)
        return 1
    recognizer.save_pretrained(args.out_dir)
    config = recognizer.encoder.config
    shape = "bidirectional" if config.bidirectional else f"lookahead {config.lookahead}"
    console.print(
        f"{args.checkpoint} -> {args.out_dir}: DeepSpeech2 {config.rnn_layers} x {config.rnn_type} "
        f"{config.rnn_hidden} ({shape}), {recognizer.tokenizer.vocab_size} outputs, featurizer "
        f"deepspeech_pytorch ({recognizer.featurizer.config.window}, stft_pad "
        f"{recognizer.featurizer.config.stft_pad})",
        soft_wrap=True,
        highlight=False,
    )
    return 0
