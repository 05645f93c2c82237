"""``SpeechRecognizer``: the exported speech pipeline (featurizer settings + CTC encoder + tokenizer).

Saved as ``model.safetensors`` + ``config.json`` (see :mod:`zoo.pipeline`) and loaded with
``zoo.load(folder)``; ``zoo.load(folder, fuse=True)`` folds batch norm into the convolutions for
inference (the weights on disk stay unfolded). :meth:`SpeechRecognizer.transcribe` takes audio
files or arrays and returns text, word timestamps from the greedy CTC alignment and a confidence
per word. Audio longer than ``chunk_seconds`` is transcribed in overlapping chunks whose
log-probabilities are stitched at the middle of each overlap before decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.pipeline import Pipeline
from zoo.registry import model_from_dict
from zoo.speech.audio import load_audio, resample
from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder, greedy_alignment
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

AudioInput = str | Path | np.ndarray | Tensor


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
            the greedy alignment and are left empty where the two disagree.)
        chunk_seconds, chunk_overlap_seconds: long-audio chunking.
    """

    def __init__(self, featurizer: dict[str, Any] | None = None, encoder: dict[str, Any] | None = None,
                 tokenizer: dict[str, Any] | None = None, beam_search: dict[str, Any] | None = None,
                 chunk_seconds: float = 30.0, chunk_overlap_seconds: float = 2.0) -> None:
        super().__init__()
        if encoder is None:
            raise ValueError("SpeechRecognizer needs an encoder description (zoo.registry.model_to_dict)")
        if not 0 <= chunk_overlap_seconds < chunk_seconds / 2:
            raise ValueError("need 0 <= chunk_overlap_seconds < chunk_seconds / 2")
        self.featurizer = Featurizer(FeaturizerConfig(**(featurizer or {}))).eval()
        self.encoder = model_from_dict(encoder)
        self.tokenizer = CharTokenizer(TokenizerConfig(**(tokenizer or {})))
        outputs = getattr(self.encoder, "num_outputs", getattr(self.encoder.config, "num_classes", None))
        if outputs != self.tokenizer.vocab_size:
            raise ValueError(f"encoder has {outputs} outputs, the tokenizer {self.tokenizer.vocab_size} labels")
        self.beam_search = BeamSearchConfig(**beam_search) if beam_search else None
        self._beam: BeamSearchDecoder | None = None
        self.chunk_seconds, self.chunk_overlap_seconds = chunk_seconds, chunk_overlap_seconds
        self.fused = False
        self.eval()

    # ------------------------------------------------------------------ export / load
    @classmethod
    def from_pretrained(cls, *args: Any, fuse: bool = False, **kwargs: Any) -> SpeechRecognizer:  # type: ignore[override]
        """Hub-mixin loading; ``fuse=True`` then folds batch norm into the convolutions."""
        recognizer = super().from_pretrained(*args, **kwargs)
        return recognizer.fuse() if fuse else recognizer

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
            raise ValueError("this recognizer's batch norm is folded; save the unfolded model (weights are stored unfolded)")
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
                    words.append(Word(text, current[0][1] * self.frame_seconds, (current[-1][1] + 1) * self.frame_seconds,
                                      float(np.mean([p for _, _, p in current]))))
                current = []
            else:
                current.append((label, frame, prob))
        return words

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], batch_size: int = 8,
                   sample_rate: int | None = None) -> list[Transcript]:
        """Transcribe files (any format soundfile reads) or arrays at ``sample_rate`` (default: the
        model's). Returns one :class:`Transcript` per input."""
        inputs = [audio] if isinstance(audio, (str, Path, np.ndarray, Tensor)) else list(audio)
        waves = [self._waveform(a, sample_rate) for a in inputs]
        results = []
        all_log_probs = self.log_probs(waves, batch_size)
        beams = None
        if self.beam_search is not None:
            if self._beam is None:
                self._beam = BeamSearchDecoder(self.tokenizer.labels, self.beam_search, self.tokenizer.blank,
                                               spell=self.tokenizer.segment)
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
