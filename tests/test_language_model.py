"""Language-model task: sampled / chunked softmax, the LightningModule, the exported pipeline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo.text.softmax import LogUniformSampler, chunked_nll, sampled_softmax_nll


def _softmax_problem(n=7, d=5, v=13):
    torch.manual_seed(0)
    return torch.randn(n, d), torch.randint(0, v, (n,)), torch.randn(v, d), torch.randn(v)


def test_sampled_softmax_with_every_class_once_is_the_full_softmax() -> None:
    hidden, targets, weight, bias = _softmax_problem()
    v = weight.shape[0]
    everything = torch.arange(v)
    # each class "drawn" exactly once: Q = 1, log Q = 0; the true class is an accidental hit and is removed
    loss = sampled_softmax_nll(hidden, targets, weight, bias, everything, torch.zeros(v), torch.zeros(len(targets)))
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none"))
    # with a constant log Q the correction cancels
    loss_c = sampled_softmax_nll(hidden, targets, weight, bias, everything, torch.full((v,), 2.5), torch.full((len(targets),), 2.5))
    torch.testing.assert_close(loss_c, loss)


def test_sampled_softmax_by_hand_with_logq_and_accidental_hit() -> None:
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[0.5, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    bias = torch.zeros(3)
    sampler = LogUniformSampler(vocab_size=3, num_sampled=2)
    candidates = torch.tensor([0, 2, 1])  # class 1 is the target: an accidental hit
    log_q = sampler.log_expected_count(candidates)
    # Q(k) = 2 · log((k+2)/(k+1)) / log 4
    q = [2 * math.log((k + 2) / (k + 1)) / math.log(4) for k in range(3)]
    torch.testing.assert_close(log_q, torch.tensor([math.log(q[0]), math.log(q[2]), math.log(q[1])]))
    loss = sampled_softmax_nll(hidden, torch.tensor([1]), weight, bias, candidates, log_q, sampler.log_expected_count(torch.tensor([1])))
    true = 2.0 - math.log(q[1])
    others = [0.5 - math.log(q[0]), -1.0 - math.log(q[2])]
    expected = -true + math.log(math.exp(true) + sum(math.exp(o) for o in others))
    assert abs(loss.item() - expected) < 1e-5


def test_log_uniform_sampler_distribution() -> None:
    v = 50
    sampler = LogUniformSampler(v, 200_000)
    p = sampler.probability(torch.arange(v))
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert torch.all(p[:-1] > p[1:])  # Zipfian: frequent (small) ids more likely
    draws = sampler.sample(generator=torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() < v
    freq = torch.bincount(draws, minlength=v).float() / len(draws)
    torch.testing.assert_close(freq, p, atol=4e-3, rtol=0.05)


def test_chunked_nll_equals_cross_entropy_for_any_block_size() -> None:
    hidden, targets, weight, bias = _softmax_problem(n=9, v=31)
    full = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    for block in (1, 7, 40, 10_000):
        torch.testing.assert_close(chunked_nll(hidden, targets, weight, bias, max_block_elements=block), full)
