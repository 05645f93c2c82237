"""CTC decoding: greedy (best path) and beam search with a lexicon and an n-gram LM.

Greedy decoding takes the most likely label per frame, merges repeats and drops blanks
(Graves et al. 2006, §3.2 best-path decoding). Beam search uses torchaudio's flashlight-based
``ctc_decoder``: with a lexicon (the words of the training text) the hypotheses are restricted to
those words and scored by an optional word n-gram LM; without a lexicon it spells freely, optionally
guided by a character n-gram LM (ARPA files from :mod:`zoo.speech.ngram`). The LM weight and
the word insertion score are tuned on held-out data with :func:`tune_beam_search`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

#: Flashlight's word separator: the tokenizer's space is passed to the decoder under this name.
SIL_TOKEN = "|"


def greedy_alignment(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[tuple[int, int, float]]]:
    """Best path: per utterance the emitted ``(label, frame, probability)`` after merging repeats
    and dropping blanks.

    Args:
        log_probs: (B, T, V) log-probabilities (or logits: only the argmax and, for the probability,
            the softmax of the row matter; pass log-probabilities for meaningful probabilities).
        lengths: (B,) valid frames.
    """
    best, ids = log_probs.max(dim=-1)  # (B, T)
    frames = torch.arange(ids.shape[1], device=ids.device)
    previous = torch.cat([torch.full_like(ids[:, :1], blank), ids[:, :-1]], dim=1)
    keep = (ids != blank) & (ids != previous) & (frames[None, :] < lengths[:, None].to(ids.device))
    out = []
    probs = best.exp()
    for b in range(ids.shape[0]):
        t = keep[b].nonzero().squeeze(1)
        out.append(list(zip(ids[b, t].tolist(), t.tolist(), probs[b, t].tolist(), strict=True)))
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """(B, T, V) scores, (B,) lengths -> label ids per utterance (repeats merged, blanks dropped)."""
    return [[label for label, _, _ in path] for path in greedy_alignment(log_probs, lengths, blank)]


@dataclass
class BeamSearchConfig:
    """Beam-search settings (torchaudio ``ctc_decoder`` arguments).

    ``lexicon``: a word list file (one word per line) restricting the output to those words, or
    None for lexicon-free decoding. ``lm``: an ARPA file (word n-grams with a lexicon, character
    n-grams with ``|`` as the space without one) or None.
    """

    lexicon: str | None = None
    lm: str | None = None
    beam_size: int = 50
    beam_size_token: int | None = None
    beam_threshold: float = 25.0
    lm_weight: float = 0.5
    word_score: float = 0.0
    unk_score: float = -math.inf
    sil_score: float = 0.0

    def __post_init__(self) -> None:
        # paths as str: torchaudio takes only str LM paths, and the config is saved as JSON
        self.lexicon = None if self.lexicon is None else os.fspath(self.lexicon)
        self.lm = None if self.lm is None else os.fspath(self.lm)


def write_lexicon(words: Iterable[str], path: str | Path, spell: Callable[[str], Sequence[str]] = list) -> Path:
    """Flashlight lexicon: ``word w o r d |`` per line (spelling ends with the word separator).

    ``spell`` gives a word's tokens: its characters by default, DS2 bigrams ``wo rd`` with
    :meth:`zoo.speech.tokenizer.CharTokenizer.segment` of a bigram tokenizer.
    """
    path = Path(path)
    unique = sorted({w for w in words if w})
    path.write_text("".join(f"{w} {' '.join(spell(w))} {SIL_TOKEN}\n" for w in unique))
    return path


def append_separator_frame(log_probs: Tensor, lengths: Tensor, separator: int) -> tuple[Tensor, Tensor]:
    """One extra frame after each utterance's last that emits the word separator with probability 1.

    Lexicon spellings end with the separator (``word w o r d |``): flashlight emits a word only
    when its trie walk reaches that ``|``. A CTC model trained on transcripts without a trailing
    space has no reason to emit one after the last word, so without this frame the decoder must
    either spend a low-probability ``|`` on a blank frame or drop the utterance's last word.

    Args:
        log_probs: (B, T, V) log-probabilities.
        lengths: (B,) valid frames.
    Returns:
        (B, T + 1, V) log-probabilities with frame ``lengths[b]`` of utterance ``b`` set to
        ``log 1`` for ``separator`` and ``-inf`` elsewhere, and ``lengths + 1``.
    """
    batch, _, vocabulary = log_probs.shape
    padded = torch.cat([log_probs, log_probs.new_full((batch, 1, vocabulary), -math.inf)], dim=1)
    frame = torch.full((vocabulary,), -math.inf, dtype=log_probs.dtype)
    frame[separator] = 0.0
    padded[torch.arange(batch), lengths.long()] = frame
    return padded, lengths + 1


class BeamSearchDecoder:
    """Batched CTC beam search over log-probabilities.

    Args:
        labels: id -> symbol of the tokenizer (``labels[blank]`` is the blank; ``" "`` the space).
        config: :class:`BeamSearchConfig`.
        blank: blank id.
        spell: a lexicon word -> its tokens (default: its characters); the tokenizer's
            ``segment`` for bigram labels.
    """

    def __init__(
        self,
        labels: Sequence[str],
        config: BeamSearchConfig,
        blank: int = 0,
        spell: Callable[[str], Sequence[str]] = list,
    ) -> None:
        from torchaudio.models.decoder import ctc_decoder

        if " " not in labels:
            raise ValueError("beam search needs a space in the tokenizer's alphabet (the word separator)")
        self.config = config
        self.labels = list(labels)
        self.blank = blank
        tokens = [SIL_TOKEN if s == " " else s for s in labels]
        tokens[blank] = "<blank>"
        self._tmp = tempfile.TemporaryDirectory(prefix="zoo-lexicon-")
        lexicon = None
        if config.lexicon is not None:
            words = Path(config.lexicon).read_text().split()
            if not words:
                raise ValueError(f"{config.lexicon}: empty word list")
            bad = sorted({c for w in words for c in w if c not in labels or c == " "})
            if bad:
                raise ValueError(f"{config.lexicon}: characters {bad} are not in the tokenizer's alphabet")
            lexicon = str(write_lexicon(words, Path(self._tmp.name) / "lexicon.txt", spell))
        lm_dict = None
        if config.lm is not None:
            if not Path(config.lm).is_file():
                raise FileNotFoundError(f"language model {config.lm} does not exist")
            if lexicon is None:
                # lexicon-free: flashlight scores the LM with token ids as word ids, so the LM's
                # dictionary must list the tokens in token order (without it torchaudio builds one
                # in hash order and every character is scored as another)
                lm_dict = Path(self._tmp.name) / "lm_tokens.txt"
                lm_dict.write_text("".join(f"{t}\n" for t in tokens))
                lm_dict = str(lm_dict)
        self._decoder = ctc_decoder(
            lexicon=lexicon,
            tokens=tokens,
            lm=config.lm,
            lm_dict=lm_dict,
            beam_size=config.beam_size,
            beam_size_token=config.beam_size_token,
            beam_threshold=config.beam_threshold,
            lm_weight=config.lm_weight,
            word_score=config.word_score,
            unk_score=config.unk_score,
            sil_score=config.sil_score,
            blank_token="<blank>",
            sil_token=SIL_TOKEN,
        )

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """(B, T, V) log-probabilities, (B,) lengths -> best transcript per utterance."""
        emissions = log_probs.detach().float().cpu()
        lengths = lengths.detach().cpu().to(torch.int32)
        if self.config.lexicon is not None:
            emissions, lengths = append_separator_frame(emissions, lengths, self.labels.index(" "))
        hypotheses = self._decoder(emissions.contiguous(), lengths)
        texts = []
        for nbest in hypotheses:
            if not nbest:
                texts.append("")
                continue
            best = nbest[0]
            if self.config.lexicon is not None:
                texts.append(" ".join(best.words))
            else:
                texts.append(" ".join("".join(self.labels[i] for i in best.tokens.tolist()).split()))
        return texts


@dataclass
class BeamSearchTrial:
    """One grid point of :func:`tune_beam_search` and its word error rate."""

    lm_weight: float
    word_score: float
    wer: float


def tune_beam_search(
    emissions: Sequence[tuple[Tensor, Tensor]],
    references: Sequence[str],
    labels: Sequence[str],
    config: BeamSearchConfig,
    lm_weights: Sequence[float] = (0.5, 1.0, 2.0, 3.0),
    word_scores: Sequence[float] = (-2.0, 0.0, 2.0, 4.0, 6.0),
    blank: int = 0,
    spell: Callable[[str], Sequence[str]] = list,
) -> tuple[BeamSearchConfig, list[BeamSearchTrial]]:
    """Grid search of ``lm_weight`` x ``word_score`` minimising corpus WER on held-out data.

    Args:
        emissions: ``(log_probs (B, T, V), lengths (B,))`` batches, computed once by the caller.
        references: the transcripts of all utterances, in batch order.
        config: every other setting (lexicon, LM, beam size).
    Returns:
        ``config`` with the best pair (ties: the first in grid order) and every trial.
    """
    from torchmetrics.functional.text import word_error_rate

    if sum(int(lengths.numel()) for _, lengths in emissions) != len(references):
        raise ValueError("tune_beam_search: the emissions and the references differ in number of utterances")
    trials = []
    for lm_weight in lm_weights:
        for word_score in word_scores:
            setting = replace(config, lm_weight=lm_weight, word_score=word_score)
            decoder = BeamSearchDecoder(labels, setting, blank, spell)
            hypotheses = [text for log_probs, lengths in emissions for text in decoder(log_probs, lengths)]
            trials.append(BeamSearchTrial(lm_weight, word_score, float(word_error_rate(hypotheses, list(references)))))
    best = min(trials, key=lambda t: t.wer)
    return replace(config, lm_weight=best.lm_weight, word_score=best.word_score), trials
