"""The CTC length rule, in one place.

A CTC path (Graves et al. 2006, §3.1) for a label sequence ``l`` of length ``L`` must put a blank between
every pair of equal adjacent labels, so it needs at least ``L + repeats(l)`` output frames; with fewer frames
no path collapses to ``l`` and the CTC loss is infinite. The data side filters utterances with it, the
training step masks batches with it and forced alignment refuses with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def ctc_min_frames_batch(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) fewest output frames a CTC path needs for each padded target row (``L + repeats``).

    Args:
        targets: (B, S) label ids, padded past each row's length with anything.
        target_lengths: (B,) valid labels per row.
    """
    target_lengths = target_lengths.to(targets.device)
    positions = torch.arange(targets.shape[1], device=targets.device)[1:]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & (positions[None, :] < target_lengths[:, None])).sum(1)
    return target_lengths + repeats


def ctc_min_frames(tokens: Sequence[int] | Tensor) -> int:
    """Fewest output frames a CTC path needs for one label sequence (``L + repeats``)."""
    row = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
    return int(ctc_min_frames_batch(row, torch.tensor([row.shape[1]]))[0])


def ctc_feasible(out_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) bool: whether each target can be aligned in its output frames (``T' >= L + repeats``)."""
    return out_lengths.to(targets.device) >= ctc_min_frames_batch(targets, target_lengths)
