"""LSTMP / F-LSTM / G-LSTM (arXiv 1703.10722) against the paper's equations and parameter formulas."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.text.factorized_lstm import FactorizedLSTM, FactorizedLSTMConfig, LSTMPLayer
from zoo.text.lm import LanguageModelConfig, RNNLanguageModel

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_lstmp(x, h, c, gates_fn, projection):
    """[i, j, f, o] = T([x, h]) + b; c = σ(f)c + σ(i)tanh(j); m = σ(o)tanh(c); h = P m."""
    outs = []
    for t in range(x.shape[0]):
        i, j, f, o = gates_fn(x[t], h)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(j)
        h = (torch.sigmoid(o) * torch.tanh(c)) @ projection.T
        outs.append(h)
    return torch.stack(outs), h, c


def _inputs(d=6, p=4, n=8, batch=3, steps=5):
    torch.manual_seed(0)
    return torch.randn(steps, batch, d), torch.randn(batch, p), torch.randn(batch, n)


def test_lstmp_matches_equations() -> None:
    x, h0, c0 = _inputs()
    layer = LSTMPLayer(6, 8, 4)
    torch.nn.init.normal_(layer.bias)
    W = torch.cat([layer.weight_x[0], layer.weight_h[0]]).T  # (4n, d + p)
    ref, h_ref, c_ref = naive_lstmp(
        x, h0, c0, lambda xt, h: (torch.cat([xt, h], 1) @ W.T + layer.bias).chunk(4, 1), layer.projection
    )
    out, (h, c) = layer(x, (h0, c0))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(c, c_ref)


def test_flstm_is_lstmp_with_w_equal_w2_w1() -> None:
    x, h0, c0 = _inputs()
    flstm = LSTMPLayer(6, 8, 4, factor_size=3)
    W1 = torch.cat([flstm.w1_x, flstm.w1_h], 1)  # (r, d + p), no bias
    W = flstm.w2 @ W1  # (4n, d + p), rank r
    ref, _, _ = naive_lstmp(
        x, h0, c0, lambda xt, h: (torch.cat([xt, h], 1) @ W.T + flstm.bias).chunk(4, 1), flstm.projection
    )
    torch.testing.assert_close(flstm(x, (h0, c0))[0], ref)


def test_glstm_groups_are_independent_and_projection_mixes() -> None:
    x, h0, c0 = _inputs(d=6, p=4, n=8)
    k = 2
    layer = LSTMPLayer(6, 8, 4, groups=k)
    torch.nn.init.normal_(layer.bias)

    def gates(xt, h):
        parts = []
        for g in range(k):  # group g sees only its slice of x and of h
            inp = torch.cat([xt.chunk(k, 1)[g], h.chunk(k, 1)[g]], 1)
            w = torch.cat([layer.weight_x[g], layer.weight_h[g]])  # (d/k + p/k, 4n/k)
            parts.append((inp @ w + layer.bias.chunk(k)[g]).chunk(4, 1))  # group's own i, j, f, o
        return [torch.cat([p[q] for p in parts], 1) for q in range(4)]

    ref, h_ref, c_ref = naive_lstmp(x, h0, c0, gates, layer.projection)
    out, (h, c) = layer(x, (h0, c0))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(c, c_ref)
    # a change in group 0's input reaches group 1's cells only through the projection (next step)
    x2 = x.clone()
    x2[0, :, :3] += 1.0
    _, (_, c_one_step) = layer(x2[:1], (h0, c0))
    _, (_, c_orig) = layer(x[:1], (h0, c0))
    torch.testing.assert_close(c_one_step[:, 4:], c_orig[:, 4:])
    assert not torch.allclose(c_one_step[:, :4], c_orig[:, :4])


@pytest.mark.parametrize(
    "kwargs, formula",
    [
        ({}, lambda d, p, n: (d + p) * 4 * n + 4 * n + n * p),
        ({"factor_size": 5}, lambda d, p, n: (d + p) * 5 + 5 * 4 * n + 4 * n + n * p),
        ({"groups": 2}, lambda d, p, n: (d + p) * 4 * n // 2 + 4 * n + n * p),
    ],
)
def test_parameter_counts_follow_the_paper(kwargs, formula) -> None:
    d, p, n = 6, 4, 8
    layer = LSTMPLayer(d, n, p, **kwargs)
    assert sum(q.numel() for q in layer.parameters()) == formula(d, p, n)


def test_one_billion_word_presets_counted_on_meta() -> None:
    V, p, n = 793_470, 1024, 8192
    embedding_and_softmax = V * p + V * p + V
    lstmp_layer = 2 * p * 4 * n + 4 * n + n * p
    assert zoo.count_parameters("biglstm-1b") == embedding_and_softmax + 2 * lstmp_layer
    assert zoo.count_parameters("flstm-1b") == embedding_and_softmax + 2 * (2 * p * 512 + 512 * 4 * n + 4 * n + n * p)
    assert zoo.count_parameters("glstm-1b") == embedding_and_softmax + 2 * (2 * p * 4 * n // 4 + 4 * n + n * p)
    assert 1.7e9 < zoo.count_parameters("biglstm-1b") < 1.8e9


def test_forget_bias_one_and_stack_shapes() -> None:
    stack = FactorizedLSTM(FactorizedLSTMConfig(input_size=6, hidden_size=8, projection_size=4, num_layers=3, groups=2))
    for layer in stack.layers:
        gates = layer.bias.view(2, 4, -1)
        assert torch.all(gates[:, 2] == 1) and torch.all(gates[:, [0, 1, 3]] == 0)
    out, (h, c) = stack(torch.randn(5, 3, 6))
    assert out.shape == (5, 3, 4) and h.shape == (3, 3, 4) and c.shape == (3, 3, 8)
    torch.testing.assert_close(h[-1], out[-1])
    baseline = zoo.create("lstm-char-small")
    b = baseline.rnn.lstm.bias_ih_l0
    assert torch.all(b[256:512] == 1.0)


@pytest.mark.parametrize(
    "cell, extra",
    [("lstm", {}), ("bnlstm", {}), ("lstmp", {}), ("flstm", {"factor_size": 4}), ("glstm", {"groups": 2})],
)
def test_language_model_network_runs_every_cell(cell, extra) -> None:
    config = LanguageModelConfig(
        vocab_size=11,
        embedding_size=8,
        cell=cell,
        hidden_size=8,
        projection_size=4,
        num_layers=2,
        max_length=6,
        **extra,
    )
    net = RNNLanguageModel(config)
    tokens = torch.randint(0, 11, (3, 6))
    hidden, state = net(tokens)
    assert hidden.shape == (3, 6, net.rnn.output_size)
    assert net.logits(hidden).shape == (3, 6, 11)
    # carrying the state across two halves equals one pass (position-independent cells; BN-LSTM via `start`)
    net.eval()
    whole, _ = net(tokens)
    first, state = net(tokens[:, :3])
    second, _ = net(tokens[:, 3:], state, start=3)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_inconsistent_cell_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="factor_size"):
        RNNLanguageModel(LanguageModelConfig(cell="lstmp", factor_size=4))
    with pytest.raises(ValueError, match="unknown cell"):
        RNNLanguageModel(LanguageModelConfig(cell="gru"))
