"""Softmax losses for language models with large vocabularies.

* :func:`sampled_softmax_nll` — training with ``S`` sampled negative classes (Jean et al. 2015, as used
  for One Billion Word by BIGLSTM, arXiv 1703.10722 §4 with ``S = 8192``): the logits of the true class
  and of the candidates are corrected by ``− log Q(k)``, ``Q(k) = S · P(k)`` being the expected number of
  times class ``k`` is drawn, and candidates that equal a position's true class ("accidental hits") are
  removed from that position's softmax.
* :class:`LogUniformSampler` — the log-uniform (Zipfian) candidate distribution
  ``P(k) = (log(k + 2) − log(k + 1)) / log(V + 1)``, for vocabularies sorted by decreasing frequency;
  ``S`` draws with replacement, shared by the whole batch.
* :func:`chunked_nll` — the exact full-softmax negative log-likelihood, computed over blocks of rows
  and vocabulary with a running log-sum-exp so that ``(tokens × V)`` logits are never materialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class LogUniformSampler:
    """Draws ``num_sampled`` candidate classes from ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``.

    Inverse-CDF sampling: ``CDF(k) = log(k + 2) / log(V + 1)``, so ``k = ⌊exp(u · log(V + 1))⌋ − 1``.
    """

    def __init__(self, vocab_size: int, num_sampled: int) -> None:
        if not 0 < num_sampled:
            raise ValueError(f"num_sampled must be positive, got {num_sampled}")
        self.vocab_size = vocab_size
        self.num_sampled = num_sampled
        self.log_range = math.log(vocab_size + 1)

    def probability(self, classes: Tensor) -> Tensor:
        k = classes.to(torch.float64)
        return ((torch.log(k + 2) - torch.log(k + 1)) / self.log_range).float()

    def log_expected_count(self, classes: Tensor) -> Tensor:
        """``log Q(k) = log(S · P(k))``, the logQ correction."""
        return torch.log(self.probability(classes) * self.num_sampled)

    def sample(self, device: torch.device | None = None, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(self.num_sampled, dtype=torch.float64, generator=generator, device=device)
        k = torch.exp(u * self.log_range).floor().long() - 1
        return k.clamp_(0, self.vocab_size - 1)


def sampled_softmax_nll(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor,
    candidates: Tensor,
    candidate_log_q: Tensor,
    target_log_q: Tensor,
) -> Tensor:
    """Per-position sampled-softmax loss.

    Args:
        hidden: ``(N, D)`` last hidden layer.
        targets: ``(N,)`` true classes.
        weight, bias: softmax parameters ``(V, D)``, ``(V,)``.
        candidates: ``(S,)`` sampled classes; ``candidate_log_q``: ``(S,)`` their ``log Q``.
        target_log_q: ``(N,)`` ``log Q`` of the true classes.
    Returns:
        ``(N,)`` ``−log softmax`` of the true class among ``{true} ∪ candidates`` with corrected logits.
    """
    true_logit = (hidden * weight[targets]).sum(-1) + bias[targets] - target_log_q
    sampled_logits = F.linear(hidden, weight[candidates], bias[candidates]) - candidate_log_q
    hits = targets.unsqueeze(1) == candidates.unsqueeze(0)
    sampled_logits = sampled_logits.masked_fill(hits, float("-inf"))
    logits = torch.cat([true_logit.unsqueeze(1), sampled_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - true_logit


def chunked_nll(
    hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor, max_block_elements: int = 1 << 24
) -> Tensor:
    """Exact full-softmax ``−log p(target)`` per position: ``(N, D)``, ``(N,)`` -> ``(N,)``.

    Logits are computed in ``rows × vocabulary`` blocks of at most ``max_block_elements`` entries.
    """
    vocab = weight.shape[0]
    vocab_block = min(vocab, max_block_elements)
    row_block = max(1, max_block_elements // vocab_block)
    out = []
    for h, y in zip(hidden.split(row_block), targets.split(row_block)):
        lse = torch.full((h.shape[0],), float("-inf"), dtype=h.dtype, device=h.device)
        for w, b in zip(weight.split(vocab_block), bias.split(vocab_block)):
            lse = torch.logaddexp(lse, torch.logsumexp(F.linear(h, w, b), dim=1))
        out.append(lse - ((h * weight[y]).sum(-1) + bias[y]))
    return torch.cat(out)
