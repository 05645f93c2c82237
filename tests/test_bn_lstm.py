"""BN-LSTM (arXiv 1603.09025 eqs. 6-8) against a naive per-step reference built from nn.BatchNorm1d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.text import bn_recurrence_cpp
from zoo.text.bn_lstm import BNLSTM, BNLSTMConfig, BNLSTMLayer, StepwiseBatchNorm
from zoo.text.bn_recurrence import bn_lstm_recurrence

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True, params=["cpp", "python"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against both recurrences: the C++ loop (built here with the machine's gcc) and
    the Python one; "cpp" fails rather than falls back if the extension cannot be built."""
    monkeypatch.setenv("ZOO_BN_LSTM_KERNEL", request.param)
    return request.param


class NaiveBNLSTM(nn.Module):
    """Eqs. 6-8 literally: one nn.BatchNorm1d per time step and per normalised term."""

    def __init__(self, layer: BNLSTMLayer, steps: int) -> None:
        super().__init__()
        self.layer = layer
        hidden = layer.hidden_size

        def norms(features: int) -> nn.ModuleList:
            return nn.ModuleList(nn.BatchNorm1d(features, momentum=0.1, affine=False) for _ in range(steps))

        self.bx, self.bh, self.bc = norms(4 * hidden), norms(4 * hidden), norms(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        batch = x.shape[1]
        h = torch.zeros(batch, lay.hidden_size)
        c = torch.zeros(batch, lay.hidden_size)
        outs = []
        for t in range(x.shape[0]):
            # γ shared over time, β_x = β_h = 0 (eq. 6), β_c learned (eq. 8).
            def bn(
                norm: nn.BatchNorm1d, v: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None
            ) -> torch.Tensor:
                return torch.nn.functional.batch_norm(
                    v, norm.running_mean, norm.running_var, gamma, beta, self.training, 0.1, 1e-5
                )

            pre = (
                bn(self.bh[t], h @ lay.weight_h.T, lay.bn_h.weight, None)
                + bn(self.bx[t], x[t] @ lay.weight_x.T, lay.bn_x.weight, None)
                + lay.bias
            )
            f, i, o, g = pre.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(bn(self.bc[t], c, lay.bn_c.weight, lay.bn_c.bias))
            outs.append(h)
        return torch.stack(outs)


def _layer(steps: int = 5, inp: int = 3, hidden: int = 4) -> BNLSTMLayer:
    torch.manual_seed(0)
    layer = BNLSTMLayer(inp, hidden, max_length=steps)
    with torch.no_grad():  # move γ, β off their init so a swapped parameter would show
        for bn in (layer.bn_x, layer.bn_h, layer.bn_c):
            bn.weight.uniform_(0.05, 0.5)
        layer.bn_c.bias.uniform_(-0.3, 0.3)
    return layer


def test_matches_naive_reference_train_and_eval() -> None:
    steps, batch = 5, 6
    layer = _layer(steps)
    naive = NaiveBNLSTM(layer, steps)
    x = torch.randn(steps, batch, 3)
    state = (torch.zeros(batch, 4), torch.zeros(batch, 4))
    for _ in range(3):  # several training batches move the running statistics
        xb = torch.randn(steps, batch, 3)
        ours, _ = layer(xb, state)
        ref = naive(xb)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for t in range(steps):
        torch.testing.assert_close(layer.bn_h.running_mean[t], naive.bh[t].running_mean)
        torch.testing.assert_close(layer.bn_x.running_var[t], naive.bx[t].running_var)
        torch.testing.assert_close(layer.bn_c.running_var[t], naive.bc[t].running_var)
    layer.eval()
    naive.eval()
    torch.testing.assert_close(layer(x, state)[0], naive(x), rtol=1e-5, atol=1e-6)


def test_gamma_init_and_zero_initial_state() -> None:
    model = BNLSTM(BNLSTMConfig(input_size=3, hidden_size=4, num_layers=2, max_length=5))
    for layer in model.layers:
        for bn in (layer.bn_x, layer.bn_h, layer.bn_c):
            assert torch.all(bn.weight == 0.1)
        assert layer.bn_x.bias is None and layer.bn_h.bias is None
    # Without a state the recurrence starts from h = c = 0 (eqs. 6-8): the stacked naive reference, which
    # starts from zeros, gives the same outputs and final h (both in eval mode, fresh statistics).
    model.eval()
    torch.manual_seed(2)
    x = torch.randn(4, 2, 3)
    out, (h, c) = model(x)
    first = NaiveBNLSTM(model.layers[0], 4).eval()
    second = NaiveBNLSTM(model.layers[1], 4).eval()
    hidden = first(x)
    expected = second(hidden)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, torch.stack([hidden[-1], expected[-1]]), rtol=1e-5, atol=1e-6)
    assert h.shape == c.shape == (2, 2, 4)


def test_padded_positions_never_enter_statistics() -> None:
    steps, hidden = 4, 4
    layer = _layer(steps, hidden=hidden)
    torch.manual_seed(1)
    x = torch.randn(steps, 5, 3)
    lengths = torch.tensor([4, 2, 3, 1, 4])
    mask = torch.arange(steps)[:, None] < lengths[None, :]
    garbage = x.clone()
    garbage[~mask] = 1e3  # whatever sits in the padding must not matter
    state = (torch.zeros(5, hidden), torch.zeros(5, hidden))
    out_a, (h_a, _) = layer(x, state, mask)
    stats_a = layer.bn_h.running_mean.clone(), layer.bn_x.running_var.clone()
    layer2 = _layer(steps, hidden=hidden)
    out_b, (h_b, _) = layer2(garbage, state, mask)
    torch.testing.assert_close(out_a[mask], out_b[mask])
    torch.testing.assert_close(stats_a[0], layer2.bn_h.running_mean)
    torch.testing.assert_close(stats_a[1], layer2.bn_x.running_var)
    # The final state of each sequence is its state at its last real step.
    torch.testing.assert_close(h_a, out_a[lengths - 1, torch.arange(5)])
    # Statistics at step 3 come only from the two sequences of length 4 (running mean from 0, momentum 0.1).
    wx3 = x[3, lengths == 4] @ layer.weight_x.T
    torch.testing.assert_close(stats_a[0].new_tensor(0.1) * wx3.mean(0), layer.bn_x.running_mean[3])


def test_beyond_t_max_reuses_last_statistics() -> None:
    bn = StepwiseBatchNorm(2, max_length=3, shift=True)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -2.0]]))
        bn.running_var.copy_(torch.tensor([[1.0, 1.0], [4.0, 4.0], [9.0, 0.25]]))
    bn.eval()
    x = torch.ones(6, 1, 2)
    y = bn(x)
    expected_last = (1 - torch.tensor([2.0, -2.0])) / torch.sqrt(torch.tensor([9.0, 0.25]) + 1e-5) * 0.1
    for t in range(2, 6):
        torch.testing.assert_close(y[t, 0], expected_last)
    # the same one step at a time with absolute positions (generation) through `start`
    torch.testing.assert_close(bn(x[:1], start=7)[0, 0], expected_last)
    torch.testing.assert_close(bn(x[:2], start=10)[0, 0], expected_last)
    # training beyond T_max is a configuration error, not a silent reuse
    bn.train()
    with pytest.raises(ValueError, match="max_length=3"):
        bn(torch.randn(4, 2, 2))


def test_long_sequence_at_inference_equals_stepwise_with_start() -> None:
    torch.manual_seed(0)
    model = BNLSTM(BNLSTMConfig(input_size=3, hidden_size=4, num_layers=2, max_length=3))
    for _ in range(2):
        model(torch.randn(3, 4, 3))
    model.eval()
    x = torch.randn(7, 2, 3)
    whole, _ = model(x)
    state, pieces = None, []
    for t in range(7):
        out, state = model(x[t : t + 1], state, start=t)
        pieces.append(out)
    torch.testing.assert_close(whole, torch.cat(pieces))


def test_gradcheck_tiny() -> None:
    torch.manual_seed(0)
    layer = BNLSTMLayer(2, 2, max_length=3).double()
    x = torch.randn(3, 4, 2, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(4, 2, dtype=torch.double)
    c0 = torch.randn(4, 2, dtype=torch.double)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)
    names = ["weight_h", "bn_h.weight", "bn_c.bias"]
    params = tuple(dict(layer.named_parameters())[n].detach().clone().requires_grad_(True) for n in names)

    def run(inp: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        out, (h, c) = torch.func.functional_call(layer, dict(zip(names, values)), (inp, (h0, c0), mask))
        return torch.cat([out.flatten(), c.flatten()])

    assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp, (h0, c0))[0], (x,), fast_mode=True)


def _reference_layer(layer: BNLSTMLayer, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, mask: torch.Tensor):
    """Eqs. 5-8 step by step with plain autograd: per-step moments over the real rows (training) or the
    running statistics (evaluation); padded rows keep their state. Independent of the layer's code."""

    def bn(v: torch.Tensor, t: int, norm: StepwiseBatchNorm, m: torch.Tensor) -> torch.Tensor:
        if layer.training:
            rows = v[m]
            mean, var = rows.mean(0), rows.var(0, unbiased=False)
        else:
            mean, var = norm.running_mean[t], norm.running_var[t]
        y = (v - mean) / torch.sqrt(var + norm.eps) * norm.weight
        return y if norm.bias is None else y + norm.bias

    outs = []
    for t in range(x.shape[0]):
        m = mask[t]
        pre = bn(h @ layer.weight_h.T, t, layer.bn_h, m) + bn(x[t] @ layer.weight_x.T, t, layer.bn_x, m) + layer.bias
        f, i, o, g = pre.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(bn(c_new, t, layer.bn_c, m))
        keep = m[:, None]
        h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        outs.append(h)
    return torch.stack(outs), c


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_hand_written_backward_matches_autograd_of_reference(training: bool, masked: bool) -> None:
    """Every gradient of the hand-written BPTT (input, initial state, all parameters) equals autograd's
    through the step-by-step reference, with a loss on every output and on the final cell."""
    steps, batch, inp, hidden = 6, 5, 3, 4
    layer = _layer(steps, inp, hidden).double()
    torch.manual_seed(2)
    with torch.no_grad():  # non-trivial running statistics for evaluation
        for norm in (layer.bn_x, layer.bn_h, layer.bn_c):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    layer.train(training)
    x = torch.randn(steps, batch, inp, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(batch, hidden, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([6, 3, 5, 1, 6]) if masked else torch.full((batch,), steps)
    mask = torch.arange(steps)[:, None] < lengths[None, :]
    w_out = torch.randn(steps, batch, hidden, dtype=torch.double)
    w_c = torch.randn(batch, hidden, dtype=torch.double)
    inputs = [x, h0, c0, *layer.parameters()]

    def grads(outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        loss = (outputs[0] * w_out).sum() + (outputs[1] * w_c).sum()
        return torch.autograd.grad(loss, inputs)

    ref_out, ref_c = _reference_layer(layer, x, h0, c0, mask)
    reference = grads((ref_out, ref_c))
    ours_out, (_, ours_c) = layer(x, (h0, c0), mask if masked else None)
    torch.testing.assert_close(ours_out, ref_out)
    torch.testing.assert_close(ours_c, ref_c)
    names = ["x", "h0", "c0", *(name for name, _ in layer.named_parameters())]
    for name, ours, ref in zip(names, grads((ours_out, ours_c)), reference):
        torch.testing.assert_close(ours, ref, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_all_inputs_float64(training: bool) -> None:
    """Finite differences against the hand-written backward, every input and parameter, with padding."""
    torch.manual_seed(3)
    layer = BNLSTMLayer(2, 3, max_length=4).double()
    layer.train(training)
    x = torch.randn(4, 5, 2, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    mask = torch.arange(4)[:, None] < torch.tensor([4, 2, 3, 4, 1])[None, :]
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def run(inp: torch.Tensor, h: torch.Tensor, c: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        out, (_, c_last) = torch.func.functional_call(layer, dict(zip(names, values)), (inp, (h, c), mask))
        return torch.cat([out.flatten(), c_last.flatten()])

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params))


def _grad_fn_name(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__


def test_kernel_choice_is_honoured_and_checked(kernel: str) -> None:
    layer = _layer()
    out, _ = layer(torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4)))
    expected = "BNLSTMRecurrenceCppBackward" if kernel == "cpp" else "BNLSTMRecurrenceBackward"
    assert _grad_fn_name(out) == expected
    wx = torch.randn(5, 2, 16)
    state = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="expected one of auto, cpp, python"):
        bn_lstm_recurrence(
            wx, state, state, layer.weight_h, layer.bias, layer.bn_x, layer.bn_h, layer.bn_c, kernel="fast"
        )
    with pytest.raises(ValueError, match="float32 / float64 on the CPU"):
        bn_lstm_recurrence(
            wx.half(),
            state.half(),
            state.half(),
            layer.weight_h.half(),
            layer.bias.half(),
            layer.bn_x,
            layer.bn_h,
            layer.bn_c,
            kernel="cpp",
        )


def test_auto_falls_back_to_python_when_the_extension_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bn_recurrence_cpp, "load_extension", lambda: None)
    layer = _layer()
    x, state = torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4))
    monkeypatch.setenv("ZOO_BN_LSTM_KERNEL", "auto")
    assert _grad_fn_name(layer(x, state)[0]) == "BNLSTMRecurrenceBackward"
    monkeypatch.setenv("ZOO_BN_LSTM_KERNEL", "cpp")
    with pytest.raises(RuntimeError, match="could not be built"):
        layer(x, state)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_and_python_kernels_agree_at_a_realistic_size(training: bool, masked: bool, threads: int) -> None:
    """float32, 2 layers of 256 units, batch 32, 12 steps: outputs, final state, every gradient and the
    running statistics of the two recurrences agree, on one thread and with the C++ loop's passes split
    over two (each (32, 1024) pass is above its 16k-element chunk)."""
    torch.set_num_threads(threads)  # the module's single_thread fixture restores the count afterwards
    torch.manual_seed(4)
    steps, batch, hidden = 12, 32, 256
    models = {}
    for kernel in ("cpp", "python"):
        torch.manual_seed(5)
        models[kernel] = BNLSTM(BNLSTMConfig(input_size=24, hidden_size=hidden, num_layers=2, max_length=steps))
        models[kernel].train(training)
    models["python"].load_state_dict(models["cpp"].state_dict())
    x = torch.randn(steps, batch, 24)
    # lengths 7..12: every step keeps at least a few real rows (with one, σ = √ε amplifies float32 rounding 300×)
    lengths = torch.randint(steps // 2 + 1, steps + 1, (batch,))
    mask = (torch.arange(steps)[:, None] < lengths[None, :]) if masked else None
    weight = torch.randn(steps, batch, hidden)
    results = {}
    for kernel, model in models.items():
        inp = x.clone().requires_grad_()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ZOO_BN_LSTM_KERNEL", kernel)
            out, (h, c) = model(inp, mask=mask)
        ((out * weight).sum() + c.sum()).backward()
        results[kernel] = [out, h, c, inp.grad, *(p.grad for p in model.parameters()), *model.buffers()]
    for ours, ref in zip(results["cpp"], results["python"]):
        # per tensor (measured at most 6.4e-6: the γ gradients sum 384 cancelling terms per step)
        difference, size = torch.linalg.vector_norm(ours - ref), torch.linalg.vector_norm(ref)
        assert difference <= 5e-5 * size, (ours.shape, difference / size)


def test_nan_in_the_input_propagates() -> None:
    """The C++ loop is compiled with fast vector exp / tanh, but never assumes finite values."""
    layer = _layer()
    x = torch.randn(5, 2, 3)
    x[2, 0, 1] = float("nan")
    out, (_, c) = layer(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    assert not torch.isnan(out[:2]).any()
    assert torch.isnan(out[2:]).all() and torch.isnan(c).all()  # the step's statistics spread it to the batch


def test_autocast_bf16_runs_the_recurrent_product_in_bf16() -> None:
    """Under CPU autocast (bf16) the recurrence stays within bf16 rounding of the float32 result, differs
    from it (the products did run in bf16), and the gradients reach every parameter in float32."""
    torch.manual_seed(6)
    model = BNLSTM(BNLSTMConfig(input_size=16, hidden_size=32, max_length=10))
    reference = BNLSTM(BNLSTMConfig(input_size=16, hidden_size=32, max_length=10))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(10, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = model(x)
    ref, _ = reference(x)
    assert out.dtype == c.dtype == torch.float32
    assert (out - ref).abs().max() > 1e-5
    torch.testing.assert_close(out, ref, rtol=0.0, atol=0.05)
    out.sum().backward()
    ref.sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cosine > 0.98, (name, cosine)


@pytest.mark.parametrize("masked", [False, True])
def test_cpp_and_python_kernels_agree_under_bf16_autocast(masked: bool) -> None:
    """The C++ loop reads and writes the bf16 products without separate casts; the values it rounds are
    the ones the Python loop casts, so both agree up to float32 summation order, which can flip a bf16
    rounding (one bf16 ulp is 0.4 %) that later steps carry on: compared by relative error over each tensor
    (measured: at most 0.94 % over 20 seeds; a wrong term is off by tens of per cent)."""
    steps, batch = 9, 12
    torch.manual_seed(7)
    models = {
        kernel: BNLSTM(BNLSTMConfig(input_size=16, hidden_size=32, max_length=steps)) for kernel in ("cpp", "python")
    }
    models["python"].load_state_dict(models["cpp"].state_dict())
    x = torch.randn(steps, batch, 16)
    mask = (torch.arange(steps)[:, None] < torch.randint(5, steps + 1, (batch,))[None, :]) if masked else None
    results = {}
    for kernel, model in models.items():
        with pytest.MonkeyPatch.context() as patch, torch.autocast("cpu", dtype=torch.bfloat16):
            patch.setenv("ZOO_BN_LSTM_KERNEL", kernel)
            out, (_, c) = model(x, mask=mask)
        (out.square().sum() + c.sum()).backward()
        results[kernel] = [out, c, *(p.grad for p in model.parameters()), *model.buffers()]
    for ours, ref in zip(results["cpp"], results["python"]):
        assert ours.dtype == ref.dtype
        error = torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref)
        assert error <= 2e-2, (ours.shape, error)


def test_bf16_autocast_rounds_only_inside_the_products() -> None:
    """With W_h = 0 and W_x x exactly representable in bf16, autocast has nothing to round outside the
    products: the outputs and every gradient but ∂L/∂W_h (whose operands are rounded) equal float32's,
    and ∂L/∂(W_x x), which autocast keeps in bf16 like W_x x itself, is float32's rounded once.
    A recurrence that kept ∂L/∂h_{t−1} in bf16 (the product's dtype) would be off by ~0.1 %."""
    import copy

    layer = _layer(steps=6, inp=3, hidden=4)
    with torch.no_grad():
        layer.weight_h.zero_()
    torch.manual_seed(8)
    wx = torch.randn(6, 5, 16).bfloat16().float()
    weights = torch.randn(6, 5, 4)
    results = []
    for autocast in (False, True):
        lay = copy.deepcopy(layer)
        inp = (wx.bfloat16() if autocast else wx.clone()).requires_grad_()  # as F.linear returns it under autocast
        state = torch.zeros(5, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, c = bn_lstm_recurrence(inp, state, state, lay.weight_h, lay.bias, lay.bn_x, lay.bn_h, lay.bn_c)
        ((out * weights).sum() + c.square().sum()).backward()
        results.append([inp.grad, out, c, *(p.grad for name, p in lay.named_parameters() if name != "weight_h")])
    (grad_exact, *exact), (grad_rounded, *rounded) = results
    for a, b in zip(rounded, exact):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_rounded, grad_exact.bfloat16(), rtol=0.0, atol=0.0)
