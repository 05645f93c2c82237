"""WER per real-speech source (:mod:`zoo.datamodules.real_speech`) for a trained CTC recognizer, greedy and
beam search, next to pocketsphinx (PyPI ``pocketsphinx``, its bundled en-us acoustic model, dictionary and
language model) decoding the same recordings in the same run.

WER is the corpus-level word error rate (jiwer: edits summed over the clips / reference words), with both
systems' hypotheses normalised by the same tokenizer as the references; each decoder's edits are also kept apart
(substituted, deleted and inserted words), which tells a recognizer that mishears from one that drops or invents
words.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import soundfile
import torch
from rich.table import Table

from zoo.datamodules.manifest import read_manifest
from zoo.datamodules.real_speech import PreparedSource
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig


class PocketsphinxMissing(RuntimeError):
    """The ``pocketsphinx`` package is not installed (one line: how to install it)."""


@dataclass
class SourceResult:
    """One source's scores; ``*_wer`` are fractions, None where that decoder did not run; ``edits``: per decoder
    ("greedy", "beam", "pocketsphinx") the word edits of its WER, ``{"substitutions", "deletions", "insertions"}``."""

    source: str
    clips: int
    words: int
    minutes: float
    greedy_wer: float
    beam_wer: float | None = None
    pocketsphinx_wer: float | None = None
    lexicon_oov: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    edits: dict[str, dict[str, int]] = field(default_factory=dict)
    speakers: list[str] = field(default_factory=list)
    licences: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)

    def edit_shares(self) -> dict[str, dict[str, float]]:
        """Per decoder, each kind of word edit as a fraction of the reference words (they sum to its WER)."""
        return {decoder: {k: n / max(self.words, 1) for k, n in edits.items()} for decoder, edits in self.edits.items()}


def recognizer_hypotheses(
    module, manifest: Path, batch_size: int = 16
) -> tuple[list[str], list[str], list[str] | None]:
    """(audio ids, greedy texts, beam texts or None) of ``module`` (a CTCSpeechRecognizer in eval mode)
    over ``manifest``, in the manifest's order."""
    from zoo.datamodules.speech import SpeechDataModule

    datamodule = SpeechDataModule(
        test_manifests=[str(manifest)],
        featurizer=module.featurizer_config,
        tokenizer=module.tokenizer_config,
        batch_size=batch_size,
        num_workers=0,
    )
    datamodule.setup("test")
    order = {u.audio_filepath: i for i, u in enumerate(datamodule.data["test"].utterances)}
    ids, greedy, beam = [], [], []
    decoder = module.beam_decoder()
    module.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            log_probs, lengths = module(batch["features"], batch["feature_lengths"])
            ids += batch["ids"]
            greedy += module.greedy_texts(log_probs, lengths)
            if decoder is not None:
                beam += decoder(log_probs, lengths)
    ranks = sorted(range(len(ids)), key=lambda i: order[ids[i]])
    return ([ids[i] for i in ranks], [greedy[i] for i in ranks], [beam[i] for i in ranks] if decoder else None)


class Pocketsphinx:
    """pocketsphinx's default English decoder (en-us acoustic model, cmudict, en-us 3-gram LM) on 16 kHz audio.

    ``transcribe_many`` decodes in ``workers`` processes (default: every CPU), each with a decoder of its own, so
    the reference costs a fraction of its serial time (pocketsphinx decodes one clip on one core).
    """

    def __init__(self, workers: int | None = None) -> None:
        try:
            import pocketsphinx
        except ImportError as error:
            raise PocketsphinxMissing(
                "the pocketsphinx reference needs the PyPI package pocketsphinx: pip install pocketsphinx"
            ) from error

        self.version = getattr(pocketsphinx, "__version__", None) or _distribution_version("pocketsphinx")
        self.decoder = _new_decoder()
        self.workers = max(1, workers if workers is not None else os.cpu_count() or 1)

    def transcribe(self, path: str | Path) -> str:
        return _decode(self.decoder, path)

    def transcribe_many(self, paths: list[str | Path]) -> list[str]:
        """Hypotheses for ``paths``, in their order; in worker processes when there are at least four clips per
        worker (starting one costs about as much as decoding a few clips)."""
        if self.workers == 1 or len(paths) < 4 * self.workers:
            return [self.transcribe(path) for path in paths]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker_decoder) as pool:
            chunk = max(1, len(paths) // (4 * self.workers))
            return list(pool.map(_transcribe_in_worker, [str(p) for p in paths], chunksize=chunk))


def _new_decoder():
    """pocketsphinx's default English decoder for 16 kHz audio, quiet."""
    from pocketsphinx import Decoder

    return Decoder(samprate=16000, loglevel="FATAL")


def _decode(decoder, path: str | Path) -> str:
    """One clip through a pocketsphinx ``Decoder`` -> its hypothesis ("" when it finds none).

    The front end is reset first (``reinit_feat``, 30 us): pocketsphinx otherwise carries its noise estimate
    from one clip into the next, so a clip's hypothesis would depend on which clips that decoder read before it.
    Each clip is decoded on its own, as the recognizer decodes it.
    """
    samples, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != 16000:
        raise ValueError(f"{path}: pocketsphinx reference expects 16 kHz audio, got {rate} Hz")
    decoder.reinit_feat()
    decoder.start_utt()
    decoder.process_raw(np.ascontiguousarray(samples[:, 0]).tobytes(), no_search=False, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


#: the decoder of a :meth:`Pocketsphinx.transcribe_many` worker process
_worker_decoder = None


def _start_worker_decoder() -> None:
    global _worker_decoder
    _worker_decoder = _new_decoder()


def _transcribe_in_worker(path: str) -> str:
    return _decode(_worker_decoder, path)


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


EDIT_KINDS = ("substitutions", "deletions", "insertions")


def word_edits(references: list[str], hypotheses: list[str]) -> dict[str, int]:
    """The word edits of the minimal alignment of each clip (jiwer), summed over the clips, by kind."""
    alignment = jiwer.process_words(references, hypotheses)
    return {kind: int(getattr(alignment, kind)) for kind in EDIT_KINDS}


def error_rate(edits: dict[str, int], words: int) -> float:
    """Corpus WER: the edits summed over the clips / reference words."""
    return sum(edits.values()) / max(words, 1)


def subset(records: list[dict[str, Any]], max_clips: int | None) -> list[dict[str, Any]]:
    """At most ``max_clips`` records, evenly spaced over the manifest (all of them when None)."""
    if max_clips is None or len(records) <= max_clips:
        return records
    return [records[round(i * (len(records) - 1) / max(max_clips - 1, 1))] for i in range(max_clips)]


def evaluate_real_speech(
    module,
    prepared: dict[str, PreparedSource],
    reference: Pocketsphinx | None = None,
    examples: int = 3,
    max_clips: int | None = None,
) -> list[SourceResult]:
    """Score ``module`` (greedy, and beam search when it has a beam-search config) and ``reference`` on every
    prepared source (``max_clips``: at most that many clips per source, evenly spaced); hypotheses are
    normalised like the references (lower case, numbers spelled...)."""
    import json
    import tempfile

    normal = CharTokenizer(TokenizerConfig(unknown="drop"))
    beam_config = getattr(module, "beam_search_config", None)
    lexicon = None
    if beam_config is not None and beam_config.lexicon:
        lexicon = {
            line.split()[0]
            for line in Path(beam_config.lexicon).read_text(encoding="utf-8").splitlines()
            if line.strip()
        }
    results = []
    for source, prepared_source in prepared.items():
        root = prepared_source.manifest.parent
        records = [
            {**r, "audio_filepath": str((root / r["audio_filepath"]).resolve())}
            for r in subset(read_manifest(prepared_source.manifest), max_clips)
        ]
        if not records:
            continue
        references = [r["text"] for r in records]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            manifest = Path(folder) / f"{source}.json"
            manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            ids, greedy, beam = recognizer_hypotheses(module, manifest)
        seconds = {"recognizer": round(time.perf_counter() - started, 2)}
        expected = [r["audio_filepath"] for r in records]
        if [str(Path(i).resolve()) for i in ids] != expected:
            raise RuntimeError(f"{prepared_source.manifest}: the recognizer skipped or reordered clips")
        words = sum(len(t.split()) for t in references)
        edits = {"greedy": word_edits(references, greedy)}
        result = SourceResult(
            source,
            len(records),
            words,
            round(sum(r["duration"] for r in records) / 60, 2),
            error_rate(edits["greedy"], words),
        )
        if beam is not None:
            edits["beam"] = word_edits(references, beam)
            result.beam_wer = error_rate(edits["beam"], words)
        if lexicon is not None:
            result.lexicon_oov = sum(w not in lexicon for t in references for w in t.split()) / max(words, 1)
        sphinx = None
        if reference is not None:
            started = time.perf_counter()
            sphinx = [normal.normalize(text) for text in reference.transcribe_many(expected)]
            seconds["pocketsphinx"] = round(time.perf_counter() - started, 2)
            edits["pocketsphinx"] = word_edits(references, sphinx)
            result.pocketsphinx_wer = error_rate(edits["pocketsphinx"], words)
        result.seconds = seconds
        result.edits = edits
        result.speakers = sorted({r.get("speaker", "?") for r in records})
        result.licences = sorted({r.get("licence", "?") for r in records})
        for i in range(min(examples, len(records))):
            example = {"reference": references[i], "greedy": greedy[i]}
            if beam is not None:
                example["beam"] = beam[i]
            if sphinx is not None:
                example["pocketsphinx"] = sphinx[i]
            result.examples.append(example)
        results.append(result)
    return results


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def real_speech_table(results: list[SourceResult], title: str = "real human speech: WER % per source") -> Table:
    table = Table(title=title)
    for column in ("source", "clips", "words", "minutes", "greedy", "beam", "pocketsphinx", "words not in lexicon"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for r in results:
        table.add_row(
            r.source,
            str(r.clips),
            str(r.words),
            f"{r.minutes:.1f}",
            _percent(r.greedy_wer),
            _percent(r.beam_wer),
            _percent(r.pocketsphinx_wer),
            _percent(r.lexicon_oov),
        )
    table.caption = "pocketsphinx: its bundled en-us model, dictionary and LM, on the same recordings in the same run"
    return table


def edits_table(
    results: list[SourceResult], title: str = "where the errors are: word edits % of reference words"
) -> Table:
    """Per source and decoder: substituted, deleted and inserted words as % of the reference words (they sum to
    the WER)."""
    table = Table(title=title)
    for column in ("source", "decoder", "substituted", "deleted", "inserted", "WER"):
        table.add_column(column, justify="left" if column in ("source", "decoder") else "right")
    for r in results:
        for decoder, shares in r.edit_shares().items():
            table.add_row(r.source, decoder, *(_percent(shares[k]) for k in EDIT_KINDS), _percent(sum(shares.values())))
    return table


def results_json(results: list[SourceResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
