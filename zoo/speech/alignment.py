"""CTC forced alignment of a transcript to a model's emissions: which output frames emit which label.

The best CTC path (Graves et al. 2006, eq. 3: the path ``pi`` that maximises ``prod_t y^t_{pi_t}``
among the paths that collapse to the transcript) is found by Viterbi with
:func:`torchaudio.functional.forced_align`; consecutive frames of the same non-blank label on it are
one emitted token (:func:`torchaudio.functional.merge_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import Tensor

from zoo.speech.ctc import ctc_min_frames


@dataclass(frozen=True)
class AlignedToken:
    """One transcript label on the best path: output frames ``[start, end)`` and its mean log-probability."""

    label: int
    start: int
    end: int
    log_prob: float


def ctc_forced_alignment(log_probs: Tensor, tokens: Tensor, blank: int = 0) -> tuple[Tensor, list[AlignedToken]]:
    """Viterbi CTC alignment of one utterance.

    Args:
        log_probs: (T', V) log-posteriors of the output frames.
        tokens: (L,) transcript label ids (no blanks).
        blank: the blank id.

    Returns:
        path: (T',) the label of every output frame on the best path (``blank`` between tokens);
        tokens: one :class:`AlignedToken` per transcript label, in order.

    Raises:
        ValueError: when ``T' < L + repeats`` (no CTC path exists) or ``tokens`` holds the blank.
    """
    if log_probs.ndim != 2 or tokens.ndim != 1:
        raise ValueError(
            f"expected log_probs (T, V) and tokens (L,), got {tuple(log_probs.shape)} and {tuple(tokens.shape)}"
        )
    if bool((tokens == blank).any()):
        raise ValueError("the transcript holds the blank id")
    if log_probs.shape[0] < ctc_min_frames(tokens):
        raise ValueError(
            f"{log_probs.shape[0]} frames cannot align {tokens.numel()} labels "
            f"({ctc_min_frames(tokens)} frames needed under CTC)"
        )
    emissions = log_probs.detach().float().cpu()[None]
    path, scores = AF.forced_align(emissions, tokens.detach().long().cpu()[None], blank=blank)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=blank)
    aligned = [
        AlignedToken(int(s.token), int(s.start), int(s.end), float(scores[0, s.start : s.end].mean())) for s in spans
    ]
    return path[0].to(torch.long), aligned
