"""``SpeechRecognizer``: the exported speech pipeline (featurizer settings + CTC encoder + tokenizer
+ its decoder).

Saved as ``model.safetensors`` + ``config.json`` (see :mod:`zoo.pipeline`), plus, when the
recognizer decodes with beam search, the decoder's files: ``lexicon.txt`` (the word list) and
``lm.arpa`` (the n-gram LM), referred to by these names in config.json's ``beam_search`` next to the
tuned beam settings (beam size, LM weight, word score, ...). Loaded with ``zoo.load(folder)`` (or
from the Hub, which brings the same files); ``zoo.load(folder, fuse=True)`` folds batch norm into
the convolutions for inference (the weights on disk stay unfolded). :meth:`SpeechRecognizer.transcribe`
takes audio files or arrays and returns text (beam search when the recognizer has a beam-search
configuration, ``decoder="greedy"`` for best-path decoding), word timestamps from the greedy CTC
alignment and a confidence per word. Audio longer than ``chunk_seconds`` is transcribed in
overlapping chunks whose log-probabilities are stitched at the middle of each overlap before decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.config import as_config, config_from_dict
from zoo.pipeline import Pipeline
from zoo.registry import model_from_dict
from zoo.speech.audio import load_audio, resample
from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder, greedy_alignment
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

AudioInput = str | Path | np.ndarray | Tensor
#: File names of the beam-search decoder's files inside an exported folder.
LEXICON_NAME = "lexicon.txt"
LM_NAME = "lm.arpa"
DECODERS = ("beam", "greedy")


@dataclass
class Word:
    """A recognised word: ``start``/``end`` in seconds; ``confidence`` = mean posterior of its
    characters at the frames where the best path emits them."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Transcript:
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0


class SpeechRecognizer(Pipeline):
    """Featurizer + CTC encoder + character (or DS2 bigram) tokenizer (+ optional beam search).

    Args:
        featurizer: :class:`~zoo.speech.features.FeaturizerConfig` fields.
        encoder: ``zoo.registry.model_to_dict(encoder)`` (class path + config).
        tokenizer: :class:`~zoo.speech.tokenizer.TokenizerConfig` fields.
        beam_search: :class:`~zoo.speech.decoding.BeamSearchConfig` fields, or None for greedy
            decoding. (With beam search the text is the beam's; word timestamps still come from
            the greedy alignment and are left empty where the two disagree.) Its ``lexicon`` and
            ``lm`` are file paths; saved, they become the folder's ``lexicon.txt`` / ``lm.arpa``.
        chunk_seconds, chunk_overlap_seconds: long-audio chunking.
    """

    def __init__(
        self,
        featurizer: dict[str, Any] | None = None,
        encoder: dict[str, Any] | None = None,
        tokenizer: dict[str, Any] | None = None,
        beam_search: dict[str, Any] | None = None,
        chunk_seconds: float = 30.0,
        chunk_overlap_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        if encoder is None:
            raise ValueError("SpeechRecognizer needs an encoder description (zoo.registry.model_to_dict)")
        if not 0 <= chunk_overlap_seconds < chunk_seconds / 2:
            raise ValueError("need 0 <= chunk_overlap_seconds < chunk_seconds / 2")
        self.featurizer = Featurizer(config_from_dict(FeaturizerConfig, featurizer or {})).eval()
        self.encoder = model_from_dict(encoder)
        self.tokenizer = CharTokenizer(config_from_dict(TokenizerConfig, tokenizer or {}))
        outputs = getattr(self.encoder, "num_outputs", getattr(self.encoder.config, "num_classes", None))
        if outputs != self.tokenizer.vocab_size:
            raise ValueError(f"encoder has {outputs} outputs, the tokenizer {self.tokenizer.vocab_size} labels")
        self.beam_search: BeamSearchConfig | None = None
        self._beam: BeamSearchDecoder | None = None
        self.set_beam_search(beam_search)
        self.chunk_seconds, self.chunk_overlap_seconds = chunk_seconds, chunk_overlap_seconds
        self.fused = False
        self.eval()

    def set_beam_search(self, config: BeamSearchConfig | dict[str, Any] | None) -> None:
        """Decode with beam search (``config``: a :class:`BeamSearchConfig` or its fields; files must
        exist) or, with None, greedily; saved with the recognizer."""
        config = as_config(config, BeamSearchConfig)
        for path in (config.lexicon, config.lm) if config is not None else ():
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"beam search: {path} does not exist")
        self.beam_search = dataclasses.replace(config) if config is not None else None
        self._beam = None

    # ------------------------------------------------------------------ export / load
    def assets(self) -> dict[str, Path]:
        """The decoder's files: ``lexicon.txt`` and ``lm.arpa`` when beam search uses them."""
        files = {}
        if self.beam_search is not None:
            if self.beam_search.lexicon is not None:
                files[LEXICON_NAME] = Path(self.beam_search.lexicon)
            if self.beam_search.lm is not None:
                files[LM_NAME] = Path(self.beam_search.lm)
        return files

    def export_config(self) -> dict[str, Any]:
        """config.json: the ``__init__`` arguments with the current decoder; its files by their names in the folder."""
        config = super().export_config()
        beam = None
        if self.beam_search is not None:
            beam = dataclasses.asdict(self.beam_search)
            beam["lexicon"] = LEXICON_NAME if beam["lexicon"] is not None else None
            beam["lm"] = LM_NAME if beam["lm"] is not None else None
        config["beam_search"] = beam
        return config

    def card_sections(self) -> str:
        """The model card's "Decoding" section: how :meth:`transcribe` turns log-probabilities into text."""
        if self.beam_search is None:
            return (
                "## Decoding\n\nGreedy (best-path) CTC decoding: the most likely label per frame, repeats "
                "merged, blanks dropped. The folder carries no lexicon or language model.\n"
            )
        b = self.beam_search
        lines = [
            "## Decoding",
            "",
            "`transcribe()` decodes with CTC beam search (torchaudio's flashlight decoder):",
            "",
        ]
        if b.lexicon is not None:
            words = len(Path(b.lexicon).read_text().split())
            lines.append(f"- lexicon: `{LEXICON_NAME}`, {words:,} words (the output is restricted to them)")
        else:
            lines.append("- no lexicon: the decoder spells freely")
        if b.lm is not None:
            order = _arpa_order(Path(b.lm))
            unit = "word" if b.lexicon is not None else "character"
            lines.append(f"- language model: `{LM_NAME}`, {unit} {order}-gram Kneser–Ney (ARPA)")
        lines += [
            (
                f"- beam size {b.beam_size}, beam threshold {b.beam_threshold:g}, LM weight {b.lm_weight:g}, "
                f"word score {b.word_score:g}, silence score {b.sil_score:g}, unknown-word score {b.unk_score:g}"
            ),
            "",
            '`transcribe(..., decoder="greedy")` or `zoo transcribe --greedy` decodes best-path instead.',
            "",
        ]
        return "\n".join(lines)

    @classmethod
    def from_pretrained(cls, *args: Any, fuse: bool = False, **kwargs: Any) -> SpeechRecognizer:  # type: ignore[override]
        """Hub-mixin loading; ``fuse=True`` then folds batch norm into the convolutions."""
        recognizer = super().from_pretrained(*args, **kwargs)
        return recognizer.fuse() if fuse else recognizer

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs: Any) -> SpeechRecognizer:  # type: ignore[override]
        """The mixin's loading, with the decoder's files (names in config.json) found in the folder or
        fetched from the same Hub repository."""
        beam = kwargs.get("beam_search")
        if beam:
            beam = dict(beam)
            for key in ("lexicon", "lm"):
                if beam.get(key) is not None and not Path(beam[key]).is_absolute():
                    beam[key] = cls.asset_file(model_id, beam[key], **kwargs)
            kwargs["beam_search"] = beam
        return super()._from_pretrained(model_id=model_id, **kwargs)

    def fuse(self) -> SpeechRecognizer:
        """Fold batch norm into the preceding convolutions (encoders with ``fuse_batchnorm``)."""
        folding = getattr(self.encoder, "fuse_batchnorm", None)
        if folding is None:
            raise ValueError(f"{type(self.encoder).__name__} does not support batch-norm folding")
        folding()
        self.fused = True
        return self.eval()

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:  # type: ignore[override]
        if self.fused:
            raise ValueError(
                "this recognizer's batch norm is folded; save the unfolded model (weights are stored unfolded)"
            )
        return super().save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------ inference
    @property
    def sample_rate(self) -> int:
        return self.featurizer.config.sample_rate

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder output frame."""
        return self.featurizer.hop_length * self.encoder.time_reduction / self.sample_rate

    def _waveform(self, audio: AudioInput, sample_rate: int | None) -> Tensor:
        if isinstance(audio, (str, Path)):
            return load_audio(audio, self.sample_rate)
        wave = torch.as_tensor(audio, dtype=torch.float32)
        if wave.dim() == 2:  # (channels, samples) -> mono
            wave = wave.mean(0)
        if wave.dim() != 1:
            raise ValueError(f"audio arrays must be (samples,) or (channels, samples), got {tuple(wave.shape)}")
        if sample_rate is not None and sample_rate != self.sample_rate:
            wave = resample(wave, sample_rate, self.sample_rate)
        return wave

    def _chunks(self, num_samples: int) -> list[tuple[int, int, int, int]]:
        """(start, end) samples of each chunk and the (first, last) global output frames it keeps."""
        samples_per_frame = self.featurizer.hop_length * self.encoder.time_reduction
        chunk = int(self.chunk_seconds * self.sample_rate) // samples_per_frame * samples_per_frame
        overlap = int(self.chunk_overlap_seconds * self.sample_rate) // samples_per_frame * samples_per_frame
        total_frames = math.ceil(self.featurizer.num_frames(num_samples) / self.encoder.time_reduction)
        if num_samples <= chunk:
            return [(0, num_samples, 0, total_frames)]
        step = chunk - overlap
        starts = list(range(0, max(num_samples - overlap, 1), step))
        out = []
        for i, start in enumerate(starts):
            first = 0 if i == 0 else (start + overlap // 2) // samples_per_frame
            last = total_frames if i == len(starts) - 1 else (starts[i + 1] + overlap // 2) // samples_per_frame
            out.append((start, min(start + chunk, num_samples), first, last))
        return out

    @torch.no_grad()
    def log_probs(self, waveforms: Sequence[Tensor], batch_size: int = 8) -> list[Tensor]:
        """Per waveform (S,) -> (T', V) fp32 log-probabilities, chunked and stitched when long."""
        pieces: list[tuple[int, Tensor, int, int, int]] = []  # (input index, samples, first, last, offset frame)
        samples_per_frame = self.featurizer.hop_length * self.encoder.time_reduction
        for i, wave in enumerate(waveforms):
            for start, end, first, last in self._chunks(len(wave)):
                pieces.append((i, wave[start:end], first, last, start // samples_per_frame))
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][1]))
        outputs: dict[int, Tensor] = {}
        device = next(self.encoder.parameters()).device
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            lengths = torch.tensor([len(pieces[k][1]) for k in idx])
            batch = torch.zeros(len(idx), int(lengths.max()))
            for row, k in enumerate(idx):
                batch[row, : lengths[row]] = pieces[k][1]
            features, frames = self.featurizer(batch.to(device), lengths.to(device))
            logits, out_lengths = self.encoder(features, frames)
            log_probs = logits.float().log_softmax(-1).cpu()
            for row, k in enumerate(idx):
                outputs[k] = log_probs[row, : out_lengths[row]]
        stitched: list[list[Tensor]] = [[] for _ in waveforms]
        for k, (i, _, first, last, offset) in enumerate(pieces):
            stitched[i].append(outputs[k][max(first - offset, 0) : last - offset])
        return [torch.cat(parts) for parts in stitched]

    def words(self, log_probs: Tensor) -> list[Word]:
        """Words with times and confidences from the best path of (T', V) log-probabilities."""
        path = greedy_alignment(log_probs[None], torch.tensor([len(log_probs)]), self.tokenizer.blank)[0]
        words, current = [], []
        space = self.tokenizer.labels.index(" ") if " " in self.tokenizer.labels else -1
        for label, frame, prob in [*path, (space, -1, 0.0)]:
            if label == space:
                if current:
                    text = "".join(self.tokenizer.labels[c] for c, _, _ in current)
                    start, end = current[0][1] * self.frame_seconds, (current[-1][1] + 1) * self.frame_seconds
                    words.append(Word(text, start, end, float(np.mean([p for _, _, p in current]))))
                current = []
            else:
                current.append((label, frame, prob))
        return words

    def transcribe(
        self,
        audio: AudioInput | Sequence[AudioInput],
        batch_size: int = 8,
        sample_rate: int | None = None,
        decoder: str | None = None,
    ) -> list[Transcript]:
        """Transcribe files (any format soundfile reads) or arrays at ``sample_rate`` (default: the
        model's). ``decoder``: ``"beam"`` (the default when the recognizer has a beam-search
        configuration, e.g. an exported lexicon and LM) or ``"greedy"``. Returns one
        :class:`Transcript` per input."""
        decoder = decoder or ("beam" if self.beam_search is not None else "greedy")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "beam" and self.beam_search is None:
            raise ValueError("decoder='beam': this recognizer has no beam-search configuration (set_beam_search)")
        inputs = [audio] if isinstance(audio, (str, Path, np.ndarray, Tensor)) else list(audio)
        waves = [self._waveform(a, sample_rate) for a in inputs]
        results = []
        all_log_probs = self.log_probs(waves, batch_size)
        beams = None
        if decoder == "beam" and self.beam_search is not None:
            if self._beam is None:
                self._beam = BeamSearchDecoder(
                    self.tokenizer.labels, self.beam_search, self.tokenizer.blank, spell=self.tokenizer.segment
                )
            for lp in all_log_probs:
                beams = (beams or []) + self._beam(lp[None], torch.tensor([len(lp)]))
        for i, (wave, lp) in enumerate(zip(waves, all_log_probs, strict=True)):
            words = self.words(lp)
            text = " ".join(w.word for w in words)
            if beams is not None:
                if beams[i] != text:
                    words = []
                text = beams[i]
            results.append(Transcript(text, words, len(wave) / self.sample_rate))
        return results


def _arpa_order(path: Path) -> int:
    """The highest n of an ARPA file's ``ngram n=count`` header lines."""
    orders = []
    with path.open() as f:
        for line in f:
            if line.startswith("ngram "):
                orders.append(int(line.split("=")[0].split()[1]))
            elif line.startswith("\\1-grams:"):
                break
    return max(orders, default=0)
