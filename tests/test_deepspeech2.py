"""DeepSpeech2: sequence-wise batch norm, masked conv front end, recurrences, row convolution, presets."""

import math
import types

import pytest
import torch
from torch import nn

import zoo
from zoo.registry import model_from_dict, model_to_dict
from zoo.speech.deepspeech2 import (
    DeepSpeech2,
    DeepSpeech2Config,
    MaskedBatchNorm2d,
    PackedPlan,
    RecurrentLayer,
    SequenceBatchNorm,
    frame_mask,
    reverse_within_lengths,
)


def tiny(**overrides) -> DeepSpeech2:
    base = dict(
        in_features=24,
        num_classes=7,
        conv_channels=(3, 4),
        conv_kernels=((5, 7), (3, 5)),
        conv_strides=((2, 2), (1, 2)),
        rnn_layers=2,
        rnn_hidden=10,
        fc_hidden=9,
    )
    base.update(overrides)
    return DeepSpeech2(DeepSpeech2Config(**base))


def valid_frames(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (sum(lengths), D): the concatenated valid frames."""
    return torch.cat([x[b, : int(n)] for b, n in enumerate(lengths)])


@pytest.mark.parametrize("method", ["covariance", "projection", "auto"])
def test_sequence_batch_norm_matches_batchnorm1d_over_valid_frames(method):
    torch.manual_seed(0)
    lengths = torch.tensor([9, 4, 6])
    x = torch.randn(3, 9, 5) * 3 + 1
    x[1, 4:] = 100.0  # padding garbage must not enter the statistics
    x[2, 6:] = -50.0
    weight = torch.randn(8, 5, requires_grad=True)
    seq = SequenceBatchNorm(8)
    nn.init.normal_(seq.weight)
    nn.init.normal_(seq.bias)
    ref = nn.BatchNorm1d(8)
    ref.load_state_dict(seq.state_dict())
    mask = frame_mask(lengths, 9)
    for _ in range(2):  # running averages after two steps
        w_fold, b_fold = seq.fold(weight, x, mask, method)
        ours = valid_frames(x @ w_fold.T + b_fold, lengths)
        theirs = ref(valid_frames(x, lengths) @ weight.T)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seq.running_mean, ref.running_mean)
    torch.testing.assert_close(seq.running_var, ref.running_var, atol=1e-4, rtol=1e-4)
    # gradients flow through the batch statistics exactly as in ordinary batch norm
    g = torch.randn_like(ours)
    (gw_ours, gg_ours) = torch.autograd.grad((ours * g).sum(), (weight, seq.weight))
    (gw_ref, gg_ref) = torch.autograd.grad((theirs * g).sum(), (weight, ref.weight))
    torch.testing.assert_close(gw_ours, gw_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gg_ours, gg_ref, atol=1e-4, rtol=1e-4)
    seq.eval(), ref.eval()
    w_fold, b_fold = seq.fold(weight, x, mask)
    torch.testing.assert_close(
        x @ w_fold.T + b_fold, ref((x @ weight.T).transpose(1, 2)).transpose(1, 2), atol=1e-4, rtol=1e-4
    )


def test_masked_batchnorm2d_matches_batchnorm2d_over_valid_frames():
    torch.manual_seed(1)
    lengths = torch.tensor([7, 3])
    x = torch.randn(2, 4, 7, 5)
    x[1, :, 3:] = 77.0
    ours, ref = MaskedBatchNorm2d(4), nn.BatchNorm2d(4)
    out = ours(x, frame_mask(lengths, 7))
    expected = ref(torch.cat([x[0:1], x[1:2, :, :3]], dim=2))
    torch.testing.assert_close(torch.cat([out[0:1], out[1:2, :, :3]], dim=2), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, frame_mask(lengths, 7)), ref(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batchnorm2d_without_padding_is_batchnorm2d(momentum):
    torch.manual_seed(1)
    x = (torch.randn(2, 3, 5, 6) * 2 + 1).requires_grad_()
    ours, ref = MaskedBatchNorm2d(3, momentum=momentum), nn.BatchNorm2d(3, momentum=momentum)
    nn.init.normal_(ours.weight), nn.init.normal_(ours.bias)
    ref.load_state_dict(ours.state_dict())
    for time_dim in (2, 3, 2):
        mask = torch.ones(2, x.shape[time_dim], dtype=torch.bool)
        out, expected = ours(x, mask, time_dim=time_dim), ref(x)
        torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    (grad,), (grad_ref,) = torch.autograd.grad((out * g).sum(), x), torch.autograd.grad((expected * g).sum(), x)
    torch.testing.assert_close(grad, grad_ref)
    for name, buffer in ref.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buffer)


def naive_layer(layer: RecurrentLayer, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Per-utterance, per-step loop of DS2's equations with BN from nn.BatchNorm1d over valid frames."""
    dirs, H, kind = layer.directions, layer.hidden_size, layer.rnn_type
    bn = nn.BatchNorm1d(layer.weight_ih.shape[0])
    bn.load_state_dict(layer.norm.state_dict())
    bn.train(layer.training)
    pre = bn(valid_frames(x, lengths) @ layer.weight_ih.T)  # B(W x) on all valid frames
    outputs, start = [], 0
    for n in lengths.tolist():
        seq = pre[start : start + n].chunk(dirs, dim=1)
        start += n
        per_dir = []
        for d in range(dirs):
            h, c = torch.zeros(H), torch.zeros(H)
            U = layer.weight_hh[d]
            steps = range(n) if d == 0 else range(n - 1, -1, -1)
            ys = [None] * n
            for t in steps:
                wx = seq[d][t]
                if kind == "gru":
                    r = torch.sigmoid(wx[:H] + U[:H] @ h)
                    z = torch.sigmoid(wx[H : 2 * H] + U[H : 2 * H] @ h)
                    cand = torch.tanh(wx[2 * H :] + r * (U[2 * H :] @ h))
                    h = (1 - z) * cand + z * h
                elif kind == "lstm":
                    g = wx + U @ h
                    i, f, gg, o = g.chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif kind == "rnn_tanh":
                    h = torch.tanh(wx + U @ h)
                else:
                    h = torch.relu(wx + U @ h)
                ys[t] = h
            per_dir.append(torch.stack(ys))
        outputs.append(torch.stack(per_dir, dim=1))  # (n, dirs, H)
    return outputs


@pytest.mark.parametrize("kind,bidirectional", [("gru", True), ("lstm", True), ("rnn_relu", False), ("gru", False)])
def test_recurrent_layer_matches_naive_equations(kind, bidirectional):
    torch.manual_seed(2)
    layer = RecurrentLayer(5, 6, kind, bidirectional, batch_norm=True)
    nn.init.uniform_(layer.norm.weight, 0.5, 1.5)
    nn.init.normal_(layer.norm.bias, std=0.3)
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(3, 7, 5)
    x[1, 3:] = 9.0
    expected = naive_layer(layer, x, lengths)
    y, _ = layer(x, lengths, frame_mask(lengths, 7))
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :n], expected[b], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind,bidirectional", [("gru", True), ("lstm", True), ("rnn_relu", False), ("rnn_tanh", True)])
def test_packed_recurrence_matches_naive_equations(kind, bidirectional):
    """The C++ loop over packed valid frames (training: batch statistics of W x over valid frames)."""
    torch.manual_seed(2)
    layer = RecurrentLayer(5, 6, kind, bidirectional, batch_norm=True)
    nn.init.uniform_(layer.norm.weight, 0.5, 1.5)
    nn.init.normal_(layer.norm.bias, std=0.3)
    lengths = torch.tensor([4, 7, 1, 5])  # unsorted, with a one-frame utterance
    x = torch.randn(4, 7, 5)
    expected = naive_layer(layer, x, lengths)
    y = layer.forward_packed(valid_frames(x, lengths), PackedPlan.from_lengths(lengths))
    torch.testing.assert_close(y, torch.cat(expected), atol=1e-5, rtol=1e-4)


def test_reverse_within_lengths():
    x = torch.arange(12.0).view(2, 6)
    out = reverse_within_lengths(x, torch.tensor([6, 4]))
    assert out.tolist() == [[5, 4, 3, 2, 1, 0], [9, 8, 7, 6, 10, 11]]


def test_lookahead_row_convolution_formula():
    torch.manual_seed(3)
    model = tiny(bidirectional=False, lookahead=3)
    h = torch.randn(2, 6, model.lookahead.conv.in_channels)
    W = model.lookahead.conv.weight[:, 0, :]  # (features, tau + 1)
    padded = torch.cat([h, torch.zeros(2, 3, h.shape[2])], dim=1)
    expected = torch.stack([(W.T * padded[:, t : t + 4]).sum(1) for t in range(6)], dim=1)
    torch.testing.assert_close(model.lookahead(h), expected)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(merge="sum", rnn_type="lstm"),
        dict(bidirectional=False, lookahead=2, rnn_type="rnn_tanh"),
        dict(
            sequence_batch_norm=False,
            conv_channels=(3, 4, 2),
            conv_kernels=((5, 7), (3, 5), (3, 3)),
            conv_strides=((3, 2), (1, 2), (1, 1)),
        ),
    ],
)
def test_padding_never_changes_outputs(overrides):
    torch.manual_seed(4)
    model = tiny(**overrides)
    lengths = torch.tensor([41, 17, 30])
    features = torch.randn(3, 24, 41) * frame_mask(lengths, 41)[:, None, :]
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(features, lengths)
    model.eval()
    logits, out_lengths = model(features, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_len = model(features[b : b + 1, :, :n], lengths[b : b + 1])
        assert alone_len.item() == out_lengths[b].item()
        torch.testing.assert_close(logits[b, : alone_len.item()], alone[0], atol=1e-5, rtol=1e-5)


def test_training_statistics_ignore_padding():
    """In training mode extra padding (of any value) changes neither outputs nor gradients."""
    torch.manual_seed(5)
    model = tiny(bidirectional=True)
    lengths = torch.tensor([20, 13])
    features = torch.randn(2, 24, 20) * frame_mask(lengths, 20)[:, None, :]
    padded = torch.cat([features, torch.full((2, 24, 15), 3.0)], dim=2)
    out_a, len_a = model(features, lengths)
    out_b, _ = model(padded, lengths)
    valid = frame_mask(len_a, out_a.shape[1])
    torch.testing.assert_close(out_b[:, : out_a.shape[1]][valid], out_a[valid], atol=1e-5, rtol=1e-5)
    masked_b = out_b[:, : out_a.shape[1]].logsumexp(-1) * valid
    masked_a = out_a.logsumexp(-1) * valid
    grads_b = torch.autograd.grad(masked_b.sum(), list(model.parameters()))
    grads_a = torch.autograd.grad(masked_a.sum(), list(model.parameters()))
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, atol=1e-4, rtol=1e-4)


def test_output_lengths_and_time_reduction():
    model = tiny(conv_strides=((3, 2), (1, 2)))
    assert model.time_reduction == 3
    lengths = torch.tensor([1, 2, 3, 4, 30, 31])
    expected = [math.ceil(n / 3) for n in lengths.tolist()]
    assert model.output_lengths(lengths).tolist() == expected
    logits, out = model(torch.randn(6, 24, 31), lengths)
    assert out.tolist() == expected and logits.shape == (6, 11, 7)


def test_too_short_utterance_is_a_clear_error():
    model = tiny(conv_padding=((0, 3), (0, 2)))  # valid time convolutions: (3 - 1) * 2 + 5 = 9 frames
    assert model.front_end.min_input_frames() == 9
    with pytest.raises(ValueError, match=r"batch index \[1\] have \[8\] frames.*at least 9"):
        model(torch.randn(2, 24, 10), torch.tensor([10, 8]))
    with pytest.raises(ValueError, match=r"expects features \(B, 24, T\)"):
        model(torch.randn(2, 20, 10), torch.tensor([10, 6]))


def test_bigram_outputs_extend_the_output_layer():
    model = tiny(bigram_outputs=True)
    assert model.num_outputs == 7 + 6 * 6
    logits, _ = model(torch.randn(1, 24, 12), torch.tensor([12]))
    assert logits.shape[-1] == 43


def gru_params(d_in: int, h: int, dirs: int) -> int:
    return dirs * (3 * h * d_in + 3 * h * h) + 2 * dirs * 3 * h  # W, U, BN gamma/beta


def conv_params(c_in: int, c_out: int, kt: int, kf: int) -> int:
    return c_in * c_out * kt * kf + 2 * c_out


def test_parameter_counts_match_hand_formulas():
    # ds2-large: 161 -> 81 -> 41 bins, 32 * 41 = 1312 RNN inputs; concat -> 1600
    large = (
        conv_params(1, 32, 11, 41)
        + conv_params(32, 32, 11, 21)
        + gru_params(1312, 800, 2)
        + 4 * gru_params(1600, 800, 2)
        + 1600 * 1600
        + 1600
        + 1600 * 29
        + 29
    )
    assert zoo.count_parameters("ds2-large") == large
    # ds2-paper: 161 -> 81 -> 41 -> 21 bins, 96 * 21 = 2016; simple RNN (1 gate), directions summed
    H = 1840
    rnn = lambda d_in: 2 * (H * d_in + H * H) + 2 * 2 * H  # noqa: E731
    paper = (
        conv_params(1, 32, 11, 41)
        + conv_params(32, 32, 11, 21)
        + conv_params(32, 96, 11, 21)
        + rnn(2016)
        + 6 * rnn(H)
        + H * H
        + H
        + H * 29
        + 29
    )
    assert zoo.count_parameters("ds2-paper") == paper
    assert 95e6 < paper < 105e6
    # ds2-streaming: forward-only simple RNN x 2560, row conv tau = 19 (20 taps per feature)
    H = 2560
    uni = lambda d_in: H * d_in + H * H + 2 * H  # noqa: E731
    streaming = (
        conv_params(1, 32, 11, 41)
        + conv_params(32, 32, 11, 21)
        + uni(1312)
        + 4 * uni(H)
        + H * 20
        + H * H
        + H
        + H * 29
        + 29
    )
    assert zoo.count_parameters("ds2-streaming") == streaming
    # bigram outputs of ds2-paper: 29 + 28^2 output units
    assert zoo.count_parameters("ds2-paper", bigram_outputs=True) - paper == (1840 + 1) * 28 * 28


def test_presets_build_and_round_trip():
    names = {spec.name for spec in zoo.list_models("speech")}
    assert {"ds2-large", "ds2-paper", "ds2-streaming", "ds2-demo", "ds2-tiny"} <= names
    model = zoo.create("ds2-tiny")
    assert model.time_reduction == 2
    clone = model_from_dict(model_to_dict(model))
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    features = torch.randn(2, 161, 30)
    torch.testing.assert_close(clone(features, torch.tensor([30, 22]))[0], model(features, torch.tensor([30, 22]))[0])
    assert zoo.create("ds2-streaming").time_reduction == 2
    assert zoo.create("ds2-paper", rnn_hidden=16, fc_hidden=16).time_reduction == 3


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="1-7 recurrent layers"):
        tiny(rnn_layers=8)
    with pytest.raises(ValueError, match="rnn_type"):
        tiny(rnn_type="transformer")
    with pytest.raises(ValueError, match="1-3 convs"):
        tiny(conv_channels=(2, 2, 2, 2), conv_kernels=((3, 3),) * 4, conv_strides=((1, 1),) * 4)
    with pytest.raises(ValueError, match="no frequency bins"):
        tiny(in_features=3, conv_padding=((2, 0), (1, 0)))


@pytest.mark.parametrize("overrides", [dict(), dict(bidirectional=False, lookahead=2, rnn_type="lstm")])
def test_fuse_batchnorm_keeps_eval_outputs(overrides):
    torch.manual_seed(6)
    model = tiny(**overrides)
    lengths = torch.tensor([33, 20])
    features = torch.randn(2, 24, 33) * frame_mask(lengths, 33)[:, None, :]
    for _ in range(2):
        model(features, lengths)
    model.eval()
    with torch.no_grad():
        expected, _ = model(features, lengths)
        got, _ = model.fuse_batchnorm()(features, lengths)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, (SequenceBatchNorm, MaskedBatchNorm2d)) for m in model.modules())
    with pytest.raises(RuntimeError, match="folded"):
        model.train()


def test_float64_training_step_and_gradcheck():
    """A double model trains (batch statistics in float64, running averages kept in float64) and its
    gradients match finite differences through the conv BN, the sequence-wise BN and the recurrence."""
    torch.manual_seed(7)
    model = tiny(
        in_features=12,
        conv_channels=(2,),
        conv_kernels=((3, 5),),
        conv_strides=((2, 2),),
        rnn_layers=2,
        rnn_hidden=3,
        rnn_type="lstm",
        merge="sum",
        fc_hidden=0,
    ).double()
    lengths = torch.tensor([9, 6])
    features = (torch.randn(2, 12, 9, dtype=torch.float64) * frame_mask(lengths, 9)[:, None, :]).requires_grad_()
    logits, _ = model(features, lengths)
    assert logits.dtype == torch.float64 and model.rnns[0].norm.running_var.dtype == torch.float64
    assert model.front_end.norms[0].num_batches_tracked.item() == 1
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in model.parameters())
    valid = frame_mask(model.output_lengths(lengths), logits.shape[1])[..., None]
    torch.autograd.gradcheck(lambda f: model(f, lengths)[0] * valid, (features,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_front_end_is_the_time_frequency_convolution_of_its_weights():
    """The front end runs on (B, C, F, T) internally; its weights keep the (time, freq) meaning: compare
    with convolutions of the stored weights on (B, C, T, F) (eval mode), padded frames zeroed."""
    torch.manual_seed(8)
    model = tiny(conv_channels=(3, 4), conv_kernels=((5, 7), (3, 5)), conv_strides=((2, 3), (1, 2))).eval()
    for norm in model.front_end.norms:
        nn.init.normal_(norm.running_mean), nn.init.uniform_(norm.running_var, 0.5, 2.0)
    lengths = torch.tensor([23, 14])
    features = torch.randn(2, 24, 23) * frame_mask(lengths, 23)[:, None, :]
    front = model.front_end
    x, n = features.transpose(1, 2)[:, None], lengths
    for conv, norm, (pt, pf), (st, sf) in zip(front.convs, front.norms, front.padding, front.strides):
        x = nn.functional.conv2d(x, conv.weight, stride=(st, sf), padding=(pt, pf))
        x = nn.functional.hardtanh(norm(x, torch.ones(x.shape[:1] + x.shape[2:3], dtype=torch.bool)), 0, 20)
        n = torch.div(n + 2 * pt - conv.kernel_size[0], st, rounding_mode="floor") + 1
        x = x * frame_mask(n, x.shape[2])[:, None, :, None]
    expected = x.permute(0, 2, 1, 3).flatten(2)
    with torch.no_grad():
        got, got_lengths = front(features, lengths)
    assert got_lengths.tolist() == n.tolist()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_packed_c_recurrence_equals_fused_kernels_in_training(rnn_type):
    """The C++ recurrence on packed frames (default on the CPU) and PyTorch's fused kernels with BN folded
    into W (kernel="fused") give the same outputs, gradients and running statistics."""
    torch.manual_seed(9)
    models = [tiny(rnn_type=rnn_type, merge="sum"), tiny(rnn_type=rnn_type, merge="sum")]
    models[1].load_state_dict(models[0].state_dict())
    models[1].kernel = "fused"
    lengths = torch.tensor([25, 40, 17])
    features = torch.randn(3, 24, 40) * frame_mask(lengths, 40)[:, None, :]
    outs, grads = [], []
    for model in models:
        logits, out_lengths = model(features, lengths)
        valid = frame_mask(out_lengths, logits.shape[1])[..., None]
        outs.append(logits * valid)
        grads.append(torch.autograd.grad((outs[-1] * torch.cos(outs[-1])).sum(), list(model.parameters())))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for (name, _), a, b in zip(models[0].named_parameters(), *grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)
    for (name, a), b in zip(models[0].named_buffers(), models[1].buffers()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("rnn_type", ["gru", "rnn_relu"])
def test_float64_gradcheck_of_packed_gru_and_simple_rnn(rnn_type):
    torch.manual_seed(10)
    model = tiny(
        in_features=12,
        conv_channels=(2,),
        conv_kernels=((3, 5),),
        conv_strides=((2, 2),),
        rnn_layers=1,
        rnn_hidden=3,
        rnn_type=rnn_type,
        fc_hidden=0,
    ).double()
    lengths = torch.tensor([6, 9])
    features = (torch.randn(2, 12, 9, dtype=torch.float64) * frame_mask(lengths, 9)[:, None, :]).requires_grad_()
    valid = frame_mask(model.output_lengths(lengths), 5)[..., None]
    torch.autograd.gradcheck(lambda f: model(f, lengths)[0] * valid, (features,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_bf16_autocast_runs_the_packed_recurrence_close_to_fp32(monkeypatch):
    """Under CPU bf16 autocast the packed C++ path runs (``W x`` in bf16, statistics and recurrence in fp32)."""
    import zoo.speech.deepspeech2 as ds2

    torch.manual_seed(11)
    model = tiny(rnn_type="lstm", merge="sum")
    lengths = torch.tensor([30, 22])
    features = torch.randn(2, 24, 30) * frame_mask(lengths, 30)[:, None, :]
    expected, out_lengths = model(features, lengths)
    calls, original = [], ds2.PackedRecurrence.apply
    monkeypatch.setattr(ds2.PackedRecurrence, "apply", lambda *a: calls.append((a[0].dtype, a[4])) or original(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = model(features, lengths)
    assert calls == [(torch.float32, torch.bfloat16)] * 2  # states in fp32, the products with U in bf16
    valid = frame_mask(out_lengths, got.shape[1])
    assert (got.float() - expected)[valid].abs().max() < 0.1 * expected[valid].abs().max()
    got.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_recurrence_same_on_one_and_two_threads(threads, kind, bidirectional):
    """On two threads a bidirectional layer this small runs one direction per thread; a forward-only one
    splits the hidden units between them (70 units: three panels of 32, the last one padded). Nine utterances
    run in row blocks of six and three. The result equals the per-utterance loop and does not depend on the
    thread count."""
    torch.manual_seed(12)
    layer = RecurrentLayer(5, 70, kind, bidirectional, batch_norm=True)
    lengths = torch.tensor([4, 7, 5, 1, 7, 3, 6, 2, 7])
    x = torch.randn(int(lengths.sum()), 5, requires_grad=True)
    plan = PackedPlan.from_lengths(lengths)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = layer.forward_packed(x, plan)
        grads = torch.autograd.grad((y * torch.sin(y)).sum(), (x, layer.weight_hh))
    finally:
        torch.set_num_threads(before)
    padded = torch.zeros(len(lengths), 7, 5)
    padded[frame_mask(lengths, 7)] = x.detach()
    expected = torch.cat(naive_layer(layer, padded, lengths))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    torch.set_num_threads(1)
    try:
        y1 = layer.forward_packed(x, plan)
        grads1 = torch.autograd.grad((y1 * torch.sin(y1)).sum(), (x, layer.weight_hh))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(grads, grads1):  # ATen's reductions (batch-norm backward) may add in another order
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class RoundedProduct(torch.autograd.Function):
    """``h U^T`` with both operands rounded to bf16 and float32 accumulation; the backward rounds the incoming
    gradient to bf16 too: what the C++ loop's bf16 panels compute, written with float32 matmuls."""

    @staticmethod
    def forward(ctx, h, U):
        hb, Ub = h.bfloat16().float(), U.bfloat16().float()
        ctx.save_for_backward(hb, Ub)
        return hb @ Ub.T

    @staticmethod
    def backward(ctx, grad):
        hb, Ub = ctx.saved_tensors
        gb = grad.bfloat16().float()
        return gb @ Ub, gb.T @ hb


def rounded_loop(gx: torch.Tensor, U: torch.Tensor, lengths: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-utterance, per-step loop of the packed recurrence's equations (``gx`` (N, dirs * G) packed as in
    :class:`PackedPlan`) with every product by ``U`` a :class:`RoundedProduct`."""
    dirs, G, H = U.shape
    out, start = [], 0
    for n in lengths.tolist():
        seq = gx[start : start + n].view(n, dirs, G)
        start += n
        per_dir = []
        for d in range(dirs):
            h, c, ys = torch.zeros(1, H), torch.zeros(1, H), [None] * n
            for t in range(n) if d == 0 else range(n - 1, -1, -1):
                x, u = seq[t, d][None], RoundedProduct.apply(h, U[d])
                if kind == "lstm":
                    i, f, g, o = (x + u).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif kind == "gru":
                    r, z = torch.sigmoid(x[:, : 2 * H] + u[:, : 2 * H]).chunk(2, 1)
                    h = (1 - z) * torch.tanh(x[:, 2 * H :] + r * u[:, 2 * H :]) + z * h
                else:
                    h = torch.relu(x + u)
                ys[t] = h[0]
            per_dir.append(torch.stack(ys))
        out.append(torch.stack(per_dir, dim=1))
    return torch.cat(out)


def bf16_products_built() -> bool:
    from zoo.speech.deepspeech2 import load_recurrence

    return bool(getattr(load_recurrence(), "bf16_products", False))


@pytest.mark.parametrize("hidden", [70, 33])  # a padded panel; an odd depth (the last pair half zero)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_panels_equal_the_loop_with_the_same_rounding(threads, kind, hidden):
    """With bf16 products (autocast) on an AVX512-BF16 CPU, the loop multiplies by U packed as bf16 pairs and by
    bf16 copies of the states and gate gradients: its outputs and input gradients equal the per-utterance loop
    with the same rounding, on one thread (one direction per thread) and two (hidden units split, forward-only),
    and ``dL/dU`` (a bf16 product over all steps) to bf16's resolution."""
    if not bf16_products_built():
        pytest.skip("this CPU has no AVX512-BF16: the bf16 panels are not built (the fp32 panels run instead)")
    from zoo.speech.deepspeech2 import PackedRecurrence

    torch.manual_seed(21)
    G = {"lstm": 4, "gru": 3, "rnn_relu": 1}[kind] * hidden
    for dirs in (2, 1):
        lengths = torch.tensor([4, 7, 5, 1, 7, 3, 6, 2, 7])  # row blocks of six and three
        gx = torch.randn(int(lengths.sum()), dirs * G, requires_grad=True)
        U = (torch.randn(dirs, G, hidden) * 0.2).requires_grad_(True)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            y = PackedRecurrence.apply(gx, U, PackedPlan.from_lengths(lengths), kind, torch.bfloat16)
            grad_y = torch.randn_like(y)
            grads = torch.autograd.grad((y * grad_y).sum(), (gx, U))
        finally:
            torch.set_num_threads(before)
        expected = rounded_loop(gx, U, lengths, kind).view_as(y)
        grads_expected = torch.autograd.grad((expected * grad_y).sum(), (gx, U))
        # another order of float32 additions may round a state to the neighbouring bf16 value: 1e-4, while
        # products in float32 (no rounding) are further than 5e-4 from the rounded loop
        torch.testing.assert_close(y, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(grads[0], grads_expected[0], atol=1e-4, rtol=0)
        unrounded = PackedRecurrence.apply(gx, U, PackedPlan.from_lengths(lengths), kind, torch.float32)
        assert (unrounded - expected).abs().max() > 5e-4
        scale = grads_expected[1].abs().max()
        assert (grads[1] - grads_expected[1]).abs().max() <= 2**-8 * scale
        assert (grads[1] - grads_expected[1]).abs().max() > 0  # dL/dU did come out of a bf16 product


def test_without_bf16_panels_the_products_with_U_stay_float32(monkeypatch):
    """Where the loop has no bf16 panels (a CPU without AVX512-BF16), bf16 autocast keeps the per-step
    products in float32 (outputs equal the float32 run's) and only ``dL/dU`` is a bf16 product."""
    import zoo.speech.deepspeech2 as ds2

    built = ds2.load_recurrence()
    without = types.SimpleNamespace(forward=built.forward, backward=built.backward, bf16_products=False)
    torch.manual_seed(22)
    lengths = torch.tensor([5, 3, 4])
    gx = torch.randn(int(lengths.sum()), 2 * 4 * 40, requires_grad=True)
    U = (torch.randn(2, 4 * 40, 40) * 0.2).requires_grad_(True)
    plan = PackedPlan.from_lengths(lengths)
    y32 = ds2.PackedRecurrence.apply(gx, U, plan, "lstm", torch.float32)
    (gU32,) = torch.autograd.grad(y32.sum(), U)
    monkeypatch.setattr(ds2, "load_recurrence", lambda: without)
    y = ds2.PackedRecurrence.apply(gx, U, plan, "lstm", torch.bfloat16)
    (gU,) = torch.autograd.grad(y.sum(), U)
    assert torch.equal(y, y32)
    torch.testing.assert_close(gU, gU32.bfloat16().float(), atol=1e-2 * gU32.abs().max().item(), rtol=0)
    assert not torch.equal(gU, gU32)


def test_packed_recurrence_of_a_wide_layer_equals_the_fused_kernel():
    """A wide layer (U of 4 MiB per direction) at batch 2: the packed recurrence equals the fused kernel."""
    torch.manual_seed(13)
    layer = RecurrentLayer(8, 520, "lstm", True, batch_norm=True)  # U: 4 * 520 * 520 floats > 4 MiB
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, 8)
    mask = frame_mask(lengths, 5)
    y = layer.forward_packed(x[mask], PackedPlan.from_lengths(lengths))
    (gx,) = torch.autograd.grad((y * torch.cos(y)).sum(), layer.weight_hh)
    expected, _ = layer(x, lengths, mask)
    (gx_ref,) = torch.autograd.grad((expected[mask] * torch.cos(expected[mask])).sum(), layer.weight_hh)
    torch.testing.assert_close(y, expected[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-4)


def test_inference_mode_runs_the_cpp_recurrence_with_the_fused_kernels_outputs(monkeypatch):
    """Lightning validates and tests under torch.inference_mode (and zoo transcribe decodes under it): the C++
    loop runs there too, with the eval outputs of the fused-kernel path."""
    import zoo.speech.deepspeech2 as ds2

    torch.manual_seed(0)
    model = zoo.create("ds2-tiny").eval()
    x, lengths = torch.randn(3, model.config.in_features, 40), torch.tensor([40, 31, 17])
    model.kernel = "fused"
    with torch.no_grad():
        expected, expected_lengths = model(x, lengths)
    model.kernel = "auto"
    calls, original = [], ds2.PackedRecurrence.apply
    monkeypatch.setattr(ds2.PackedRecurrence, "apply", lambda *a: calls.append(1) or original(*a))
    with torch.inference_mode():
        out, out_lengths = model(x, lengths)
    assert len(calls) == len(model.rnns)
    assert torch.equal(out_lengths, expected_lengths)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_panel_scratch_is_kept_between_calls_and_replaced_on_a_new_shape():
    """The packed-U buffers are reused from call to call (no fresh page faults per layer and step), replaced
    when the shape or dtype changes, and work in and out of inference mode."""
    from zoo.speech.deepspeech2 import panel_scratch

    with torch.inference_mode():
        first = panel_scratch("forward", (2, 3, 4), torch.float32)
    assert not first.is_inference()
    assert panel_scratch("forward", (2, 3, 4), torch.float32) is first
    assert panel_scratch("backward", (2, 3, 4), torch.float32) is not first
    assert panel_scratch("forward", (2, 3, 5), torch.float32).shape == (2, 3, 5)
    assert panel_scratch("forward", (2, 3, 5), torch.float64).dtype == torch.float64
    torch.manual_seed(3)
    layers = [RecurrentLayer(5, hidden, "lstm", True, batch_norm=True) for hidden in (40, 70, 40)]
    lengths = torch.tensor([5, 2])
    x = torch.randn(2, 5, 5)
    mask = frame_mask(lengths, 5)
    for layer in layers:  # shapes alternate: every call repacks into the right buffer
        y = layer.forward_packed(x[mask], PackedPlan.from_lengths(lengths))
        expected, _ = layer(x, lengths, mask)
        torch.testing.assert_close(y, expected[mask], atol=1e-5, rtol=1e-4)
