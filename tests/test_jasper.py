"""Jasper / QuartzNet encoder: parameter counts, masking, residual wiring, batch-norm folding."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import zoo
from zoo.speech.jasper import ConvNorm, Jasper, JasperConfig, fuse_batchnorm


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding and masking tests can fail."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def test_paper_parameter_counts():
    # Jasper 10x5 DR at 64 mels and 28 characters + blank: the paper's 333M (NeMo: 332.6M)
    assert zoo.count_parameters("jasper-10x5dr") == 332_632_349
    assert round(zoo.count_parameters("quartznet-15x5") / 1e6, 1) == 18.9
    assert 1.5e6 <= zoo.count_parameters("jasper-demo") <= 4e6
    assert zoo.count_parameters("jasper-tiny") < 100_000


def test_dense_residual_projects_prologue_and_every_earlier_block():
    model = zoo.create("jasper-tiny")
    widths = [model.config.prologue_filters] + [b[0] for b in model.config.blocks]
    for i, block in enumerate(model.blocks):
        assert [r.conv.in_channels for r in block.residuals] == widths[: i + 1]
        assert all(r.conv.kernel_size == (1,) for r in block.residuals)
    plain = zoo.create("jasper-tiny", residual="plain")
    assert [len(b.residuals) for b in plain.blocks] == [1, 1]
    assert [len(b.residuals) for b in zoo.create("jasper-tiny", residual="none").blocks] == [0, 0]


def test_quartznet_uses_separable_convs():
    model = zoo.create("quartznet-15x5", blocks=((8, 33, 5, 0.0),), epilogue=((8, 87, 2, 0.0),), prologue_filters=8)
    sub = model.blocks[0].convs[0]
    assert sub.depthwise.groups == 8 and sub.depthwise.kernel_size == (33,)
    assert sub.conv.kernel_size == (1,)
    assert model.epilogue[0].depthwise.dilation == (2,)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"separable": True},
        {"norm": "layernorm"},
        {"norm": "weightnorm"},
        {"residual": "plain"},
        {"prologue_stride": 3},
    ],
)
def test_padding_never_changes_an_utterance_output(overrides):
    torch.manual_seed(0)
    model = randomize_norms(zoo.create("jasper-tiny", **overrides)).eval()
    x = torch.randn(3, 64, 47)
    lengths = torch.tensor([47, 30, 11])
    with torch.no_grad():
        logits, out_lengths = model(x, lengths)
        r = model.time_reduction
        assert out_lengths.tolist() == [-(-n // r) for n in lengths.tolist()]
        assert logits.shape == (3, -(-47 // r), 29)
        for i, n in enumerate(lengths.tolist()):
            alone, alone_len = model(x[i : i + 1, :, :n], lengths[i : i + 1])
            assert alone_len.item() == out_lengths[i].item()
            torch.testing.assert_close(alone[0], logits[i, : alone_len.item()], atol=1e-5, rtol=1e-5)
            # the padding's garbage never leaks in: change it and the valid outputs stay
        noisy = x.clone()
        for i, n in enumerate(lengths.tolist()):
            noisy[i, :, n:] = 1e3
        again, _ = model(noisy, lengths)
        for i, n in enumerate(out_lengths.tolist()):
            torch.testing.assert_close(again[i, :n], logits[i, :n], atol=1e-5, rtol=1e-5)


def test_unmasked_conv_would_leak_padding():
    """The masking test above can fail: without masking, padding changes the outputs."""
    model = randomize_norms(zoo.create("jasper-tiny")).eval()
    x = torch.randn(2, 64, 40)
    x[1, :, 20:] = 5.0
    with torch.no_grad():
        batched, _ = model(x, torch.tensor([40, 40]))  # padding treated as signal
        masked, _ = model(x, torch.tensor([40, 20]))
    assert (batched[1, :10] - masked[1, :10]).abs().max() > 1e-3


def test_layers_follow_conv_norm_relu_dropout_with_residual_before_relu():
    """One block checked against a hand-written forward pass of the same weights."""
    cfg = JasperConfig(
        in_features=4,
        num_classes=3,
        prologue_filters=6,
        prologue_kernel=3,
        prologue_stride=1,
        prologue_dropout=0.0,
        blocks=((6, 3, 2, 0.0),),
        epilogue=(),
        residual="plain",
    )
    model = randomize_norms(Jasper(cfg)).eval()
    x = torch.randn(1, 4, 9)
    with torch.no_grad():
        out, _ = model(x, torch.tensor([9]))

        def cn(m: ConvNorm, h):
            return torch.nn.functional.batch_norm(
                m.conv(h), m.norm.running_mean, m.norm.running_var, m.norm.weight, m.norm.bias, False, 0.0, m.norm.eps
            )

        p = torch.relu(cn(model.prologue, x))
        block = model.blocks[0]
        h = torch.relu(cn(block.convs[0], p))
        h = torch.relu(cn(block.convs[1], h) + cn(block.residuals[0], p))
        ref = model.decoder(h).transpose(1, 2)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("overrides", [{}, {"separable": True}])
def test_fuse_batchnorm_keeps_outputs(overrides):
    torch.manual_seed(1)
    model = randomize_norms(zoo.create("jasper-tiny", **overrides)).eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fused.modules())
    x, lengths = torch.randn(2, 64, 33), torch.tensor([33, 25])
    with torch.no_grad():
        a, la = model(x, lengths)
        b, lb = fused(x, lengths)
    assert torch.equal(la, lb)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_errors():
    model = zoo.create("jasper-tiny", num_classes=7)
    rebuilt = zoo.registry.model_from_dict(zoo.registry.model_to_dict(model))
    assert rebuilt.config == model.config
    with pytest.raises(ValueError, match="norm"):
        zoo.create("jasper-tiny", norm="groupnorm")
    with pytest.raises(ValueError, match="expected features"):
        model(torch.randn(1, 80, 10), torch.tensor([10]))


def reference_conv_norm(x: torch.Tensor, module: ConvNorm) -> torch.Tensor:
    """One utterance (1, C, L), no padding: [depthwise conv1d ->] conv1d -> eval batch norm, from the parameters."""
    if module.depthwise is not None:
        d = module.depthwise
        x = F.conv1d(x, d.weight, None, stride=d.stride, padding=d.padding, dilation=d.dilation, groups=d.groups)
    c = module.conv
    x = F.conv1d(x, c.weight, c.bias, stride=c.stride, padding=c.padding, dilation=c.dilation)
    bn = module.norm
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def reference_jasper(model: Jasper, features: torch.Tensor, dense: bool) -> torch.Tensor:
    """Jasper (arXiv 1904.03288 Fig. 1-2) for one utterance (1, F, L) -> (L', classes): each block's last
    sub-block adds 1x1 conv + norm projections of the prologue's and every earlier block's output (dense)
    or of its input (plain) after its norm, before its ReLU."""
    x = F.relu(reference_conv_norm(features, model.prologue))
    outputs = [x]
    for block in model.blocks:
        sources = list(outputs) if dense else [x]
        for r, sub in enumerate(block.convs):
            x = reference_conv_norm(x, sub)
            if r == len(block.convs) - 1:
                x = x + sum(reference_conv_norm(s, proj) for proj, s in zip(block.residuals, sources, strict=True))
            x = F.relu(x)
        outputs.append(x)
    for conv in model.epilogue:
        x = F.relu(reference_conv_norm(x, conv))
    return F.conv1d(x, model.decoder.weight, model.decoder.bias)[0].T


@pytest.mark.parametrize("residual, separable", [("dense", False), ("plain", True)], ids=["jasper-dr", "quartznet"])
def test_forward_matches_a_per_utterance_functional_reference(residual, separable):
    """The batched, masked forward equals the functional reference run on each utterance alone (no padding),
    whatever sits in the padding; padded output frames are zero."""
    torch.manual_seed(0)
    config = JasperConfig(
        in_features=12,
        num_classes=7,
        prologue_filters=10,
        prologue_kernel=5,
        prologue_stride=2,
        prologue_dropout=0.0,
        blocks=((10, 5, 2, 0.0), (14, 7, 3, 0.0), (12, 3, 2, 0.0)),
        epilogue=((16, 5, 2, 0.0), (16, 1, 1, 0.0)),
        residual=residual,
        separable=separable,
    )
    model = randomize_norms(Jasper(config)).eval()
    assert [len(b.residuals) for b in model.blocks] == ([1, 2, 3] if residual == "dense" else [1, 1, 1])
    lengths = torch.tensor([41, 23, 32, 8])
    features = torch.randn(4, 12, 41)
    padded = features.clone()
    for b, n in enumerate(lengths):
        padded[b, :, n:] = 1e3  # whatever the padding holds must not reach the valid frames
    with torch.no_grad():
        logits, out_lengths = model(padded, lengths)
        assert out_lengths.tolist() == [(n + 1) // 2 for n in lengths.tolist()]
        for b, n in enumerate(lengths.tolist()):
            expected = reference_jasper(model, features[b : b + 1, :, :n], dense=residual == "dense")
            assert expected.shape[0] == out_lengths[b]
            torch.testing.assert_close(logits[b, : out_lengths[b]], expected, rtol=1e-4, atol=1e-4)
            assert (logits[b, out_lengths[b] :] == 0).all()
