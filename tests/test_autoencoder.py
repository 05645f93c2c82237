"""The deep autoencoder of arXiv 1708.01715: presets, parameter counts, tied decoder, dropout placement."""

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.recsys.autoencoder import ACTIVATIONS, AutoEncoderConfig, DeepAutoEncoder


def dense_count(sizes):
    """Hand formula: encoder Σ (i·o + o) + decoder Σ (o·i + i) over consecutive widths."""
    return sum(i * o + o for i, o in zip(sizes, sizes[1:])) + sum(o * i + i for i, o in zip(sizes, sizes[1:]))


def tied_count(sizes):
    """Tied decoder: encoder weights + encoder biases + decoder biases only."""
    return sum(i * o + o for i, o in zip(sizes, sizes[1:])) + sum(sizes[:-1])


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("autorec-netflix-full", (17768, 512, 512, 1024)),
        ("autorec-netflix-6m", (17768, 256, 256, 512)),
        ("autorec-netflix-3m", (17768, 128, 256, 256)),
        ("autorec-ml100k", (1682, 128, 128)),
    ],
)
def test_preset_parameter_counts(name, sizes):
    assert zoo.count_parameters(name) == dense_count(sizes)
    assert zoo.count_parameters(name, constrained=True) == tied_count(sizes)


def test_full_netflix_count_by_hand():
    n = 17768
    expected = (
        (n * 512 + 512)
        + (512 * 512 + 512)
        + (512 * 1024 + 1024)
        + (1024 * 512 + 512)
        + (512 * 512 + 512)
        + (512 * n + n)
    )
    assert zoo.count_parameters("autorec-netflix-full") == expected == 19_788_136


def test_preset_dropout_values():
    assert zoo.create("autorec-netflix-full").config.dropout == 0.8
    assert zoo.create("autorec-netflix-3m").config.dropout == 0.65


def test_forward_matches_manual_layers_untied_and_tied():
    torch.manual_seed(0)
    x = torch.randn(3, 7)
    for constrained in (False, True):
        net = DeepAutoEncoder(
            AutoEncoderConfig(num_items=7, encoder_sizes=(5, 4), activation="elu", constrained=constrained)
        ).eval()
        we, be = list(net.encoder_weights), list(net.encoder_biases)
        bd = list(net.decoder_biases)
        wd = [w.t() for w in we] if constrained else list(net.decoder_weights)
        if constrained:
            assert net.decoder_weights is None
            assert wd[1].shape == (5, 4) and bd[1].shape == (5,) and bd[0].shape == (7,)
        h = F.elu(x @ we[0].t() + be[0])
        h = F.elu(h @ we[1].t() + be[1])
        h = F.elu(h @ wd[1].t() + bd[1])
        y = F.elu(h @ wd[0].t() + bd[0])
        torch.testing.assert_close(net(x), y)


def test_tied_decoder_shares_encoder_weights_in_gradients():
    net = DeepAutoEncoder(AutoEncoderConfig(num_items=6, encoder_sizes=(3,), constrained=True))
    with torch.no_grad():
        net.decoder_biases[0].fill_(0.25)
    net.encoder_weights[0].data.copy_(torch.arange(18.0).view(3, 6) / 10)
    torch.testing.assert_close(net.decoder_weight(0), net.encoder_weights[0].t())
    assert net.decoder_biases[0].data_ptr() != net.encoder_biases[0].data_ptr()
    # the decoder contributes to the encoder weight's gradient: compare with an untied copy
    x = torch.rand(2, 6)
    net(x).sum().backward()
    untied = DeepAutoEncoder(AutoEncoderConfig(num_items=6, encoder_sizes=(3,)))
    untied.load_state_dict(
        {
            **{k: v for k, v in net.state_dict().items()},
            "decoder_weights.0": net.encoder_weights[0].detach().t().clone(),
        }
    )
    untied(x).sum().backward()
    torch.testing.assert_close(
        net.encoder_weights[0].grad, untied.encoder_weights[0].grad + untied.decoder_weights[0].grad.t()
    )


def test_linear_last_layer_and_activations():
    torch.manual_seed(1)
    x = torch.randn(4, 5)
    linear = DeepAutoEncoder(
        AutoEncoderConfig(num_items=5, encoder_sizes=(3,), activation="sigmoid", last_layer_activation=False)
    )
    with torch.no_grad():
        linear.decoder_biases[0].fill_(-10.0)
    assert (linear(x) < 0).all()  # no sigmoid on the output
    for name in ACTIVATIONS:
        DeepAutoEncoder(AutoEncoderConfig(num_items=5, encoder_sizes=(3,), activation=name))(x)
    with pytest.raises(ValueError, match="unknown activation"):
        DeepAutoEncoder(AutoEncoderConfig(activation="gelu"))


@pytest.mark.parametrize(("name", "reference"), [("selu", F.selu), ("elu", F.elu)])
def test_exp_form_elu_matches_torch(name, reference):
    """The branch-free exp form equals torch's expm1 kernels, values and gradients, on both sides of 0
    (including exactly 0, large negatives that saturate, and bf16)."""
    x = torch.cat([torch.linspace(-30, 5, 2001), torch.zeros(3), torch.randn(500)]).requires_grad_(True)
    ours, theirs = ACTIVATIONS[name](x), reference(x)
    torch.testing.assert_close(ours, theirs, atol=2e-7, rtol=1e-6)
    grad = torch.randn_like(x)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(g_ours, g_theirs, atol=2e-7, rtol=1e-6)
    xb = x.detach().bfloat16()
    torch.testing.assert_close(ACTIVATIONS[name](xb), reference(xb), atol=1e-2, rtol=1e-2)
    xd = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ACTIVATIONS[name], (xd,))


def reference_forward(net, x, drop=None):
    """§3.3 written out: selu encoder layers, dropout ``drop`` (a function) on the code only, decoder back."""
    we, be, bd = list(net.encoder_weights), list(net.encoder_biases), list(net.decoder_biases)
    wd = list(net.decoder_weights)
    h = F.selu(x @ we[0].t() + be[0])
    h = F.selu(h @ we[1].t() + be[1])
    if drop is not None:
        h = drop(h)
    h = F.selu(h @ wd[1].t() + bd[1])
    return F.selu(h @ wd[0].t() + bd[0])


def test_dropout_only_on_code_layer():
    p = 0.5
    net = DeepAutoEncoder(AutoEncoderConfig(num_items=50, encoder_sizes=(40, 30), dropout=p))
    x = torch.rand(8, 50)
    # eval: no dropout anywhere
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(net, x))
        eval_code = net.encode(x)
    # training: each code unit is either dropped or scaled by 1 / (1 - p) ...
    net.train()
    with torch.no_grad():
        code = net.encode(x)
    dropped = code == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(code[~dropped], eval_code[~dropped] / (1 - p))
    # ... and nothing else is dropped: the same random draws give the reference with dropout on the code only
    torch.manual_seed(7)
    with torch.no_grad():
        ours = net(x)
    torch.manual_seed(7)
    with torch.no_grad():
        expected = reference_forward(net, x, lambda h: F.dropout(h, p, training=True))
    torch.testing.assert_close(ours, expected)
    assert not torch.allclose(ours, reference_forward(net, x))  # dropout is active in training


def test_xavier_init():
    torch.manual_seed(0)
    net = DeepAutoEncoder(AutoEncoderConfig(num_items=1000, encoder_sizes=(500,)))
    w = net.encoder_weights[0]
    bound = (6 / (1000 + 500)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(w.std().item() - bound / 3**0.5) < 0.01 * bound
    assert all((b == 0).all() for b in net.decoder_biases)
    shifted = DeepAutoEncoder(AutoEncoderConfig(num_items=10, encoder_sizes=(4, 3), output_bias_init=3.5))
    assert (shifted.decoder_biases[0] == 3.5).all() and (shifted.decoder_biases[1] == 0).all()
