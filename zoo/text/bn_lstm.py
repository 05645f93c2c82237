"""Batch-normalized LSTM (Cooijmans et al., "Recurrent Batch Normalization", arXiv 1603.09025).

Eqs. 6-8 of the paper, with ``BN(h; γ, β) = β + γ ⊙ (h − E[h]) / sqrt(Var[h] + ε)`` (eq. 5)::

    (f̃, ĩ, õ, g̃) = BN(W_h h_{t−1}; γ_h, 0) + BN(W_x x_t; γ_x, 0) + b      (6)
    c_t = σ(f̃) ⊙ c_{t−1} + σ(ĩ) ⊙ tanh(g̃)                                (7)
    h_t = σ(õ) ⊙ tanh(BN(c_t; γ_c, β_c))                                  (8)

Statistics are kept **separately for every time step** ``t = 0 … T_max−1`` (sharing them over
time "severely degrades performance", §3); γ and β are shared over time. Training uses the
minibatch statistics of each step; inference uses the population statistics (running averages of
the minibatch estimates, momentum ``bn_momentum`` as in ``nn.BatchNorm1d``); steps beyond
``T_max`` reuse the statistics of step ``T_max − 1`` (§3). γ is initialised to 0.1 (§4), β to 0.
Padded positions (``mask == False``) never enter the statistics and leave the state unchanged.
The initial state is zeros unless one is passed: never random.

**Truncated BPTT.** A language model trained on windows of ``T`` steps with the hidden state
carried from one window to the next indexes the statistics by the position *within the window*
(``start=0`` for every window), so ``T_max`` is the window length and evaluation must use the
same windowing. :meth:`BNLSTM.forward` takes ``start`` for running a long sequence in pieces
with absolute positions instead (inference over a stream, generation one step at a time): step
``start + t`` uses statistics ``min(start + t, T_max − 1)``.

Speed: ``W_x x_t`` is computed for all steps in one product; the loop over time runs in C++
(:mod:`zoo.text.bn_recurrence_cpp`): per step the ``W_h h_{t−1}`` product and one fused pass for
both normalisations of eq. 6, the gates, the cell and eq. 8, with a hand-written backward through
time. Under ``torch.autocast`` (``precision: bf16-mixed``) the products run in bf16 and everything
else in float32. ``ZOO_BN_LSTM_KERNEL=python`` selects the Python loop
(:mod:`zoo.text.bn_recurrence`), which is also the fallback off the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry import register
from zoo.text.bn_recurrence import bn_lstm_recurrence
from zoo.text.lm import LanguageModelConfig, RNNLanguageModel

State = tuple[Tensor, Tensor]


class StepwiseBatchNorm(nn.Module):
    """Batch normalisation (eq. 5) with separate statistics for each time step up to ``max_length``.

    Args:
        num_features: F, the size of the normalised vectors.
        max_length: T_max, the number of per-step statistics kept.
        shift: learn β (eq. 8's ``β_c``); without it β is fixed at 0 (eq. 6).
        gamma_init: initial γ (0.1 in the paper).
    """

    def __init__(
        self,
        num_features: int,
        max_length: int,
        shift: bool = True,
        gamma_init: float = 0.1,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(max_length, num_features))
        self.register_buffer("running_var", torch.ones(max_length, num_features))

    def check_training_length(self, end: int) -> None:
        if self.training and end > self.max_length:
            raise ValueError(
                f"training sequence reaches step {end} but the model keeps statistics for only "
                f"max_length={self.max_length} steps; raise max_length to the longest training window"
            )

    def forward(self, x: Tensor, mask: Tensor | None = None, start: int = 0) -> Tensor:
        """Normalise all steps at once.

        Args:
            x: ``(T, B, F)``.
            mask: ``(T, B)`` bool, True at real (non-padded) positions, or None.
            start: absolute step of ``x[0]``.
        Returns:
            ``(T, B, F)``.
        """
        steps = x.shape[0]
        index = torch.arange(start, start + steps, device=x.device).clamp_(max=self.max_length - 1)
        if not self.training:
            mean, var = self.running_mean[index].unsqueeze(1), self.running_var[index].unsqueeze(1)
        else:
            self.check_training_length(start + steps)
            if mask is None:
                # (T, B, F) as B rows of T·F channels: one fused batch_norm computes every step's
                # statistics and updates the running ones of steps start..start+T-1 in place.
                batch = x.shape[1]
                y = F.batch_norm(
                    x.transpose(0, 1).reshape(batch, -1),
                    self.running_mean[start : start + steps].view(-1),
                    self.running_var[start : start + steps].view(-1),
                    self.weight.repeat(steps),
                    None if self.bias is None else self.bias.repeat(steps),
                    True,
                    self.momentum,
                    self.eps,
                )
                return y.view(batch, steps, -1).transpose(0, 1)
            mean, var, count = masked_moments(x, mask.unsqueeze(-1).to(x.dtype))
            self.update_running(index, mean.squeeze(1), var.squeeze(1), count.view(-1, 1))
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def update_running(self, index: Tensor, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Move the running statistics of steps ``index`` toward the minibatch estimates ``mean, var: (T, F)``
        (biased; the running variance is the unbiased one) from ``count: (T, 1)`` rows; steps without data are
        skipped."""
        present = count > 0
        unbiased = var * count / (count - 1).clamp(min=1)
        m = self.momentum * present.to(mean.dtype)
        self.running_mean[index] = (1 - m) * self.running_mean[index] + m * mean.detach()
        self.running_var[index] = (1 - m) * self.running_var[index] + m * unbiased.detach()


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance over dim 1 of ``x: (T, B, F)`` counting only rows with ``mask: (T, B, 1)`` = 1.

    Returns ``mean, var: (T, 1, F)`` and ``count: (T, 1, 1)``; a step without rows gets mean 0, var 1.
    """
    count = mask.sum(1, keepdim=True)
    safe = count.clamp(min=1)
    mean = (x * mask).sum(1, keepdim=True) / safe
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / safe
    var = torch.where(count > 0, var, torch.ones_like(var))
    return mean, var, count


class BNLSTMLayer(nn.Module):
    """One BN-LSTM layer (eqs. 6-8). Gate order in the weights: f, i, o, g (as eq. 6).

    Shapes: ``x: (T, B, input_size)`` -> ``(T, B, hidden_size)``; state ``(h, c)`` each ``(B, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        max_length: int,
        gamma_init: float = 0.1,
        forget_bias: float = 1.0,
        bn_momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_x = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        norm = dict(max_length=max_length, gamma_init=gamma_init, eps=eps, momentum=bn_momentum)
        self.bn_x = StepwiseBatchNorm(4 * hidden_size, shift=False, **norm)
        self.bn_h = StepwiseBatchNorm(4 * hidden_size, shift=False, **norm)
        self.bn_c = StepwiseBatchNorm(hidden_size, shift=True, **norm)
        self.forget_bias = forget_bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal weights (the paper's choice for all weight matrices), forget-gate bias."""
        for weight in (self.weight_x, self.weight_h):
            if not weight.is_meta:
                nn.init.orthogonal_(weight)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[: self.hidden_size].fill_(self.forget_bias)

    def forward(self, x: Tensor, state: State, mask: Tensor | None = None, start: int = 0) -> tuple[Tensor, State]:
        steps = x.shape[0]
        self.bn_h.check_training_length(start + steps)
        # W_x x_t for every step at once; the recurrence normalises it and runs the loop over time
        # (one autograd function with a hand-written backward through time)
        out, c = bn_lstm_recurrence(
            F.linear(x, self.weight_x),
            state[0],
            state[1],
            self.weight_h,
            self.bias,
            self.bn_x,
            self.bn_h,
            self.bn_c,
            mask,
            start,
        )
        return out, (out[-1], c)


@dataclass
class BNLSTMConfig:
    """A stack of BN-LSTM layers (the paper's PTB model: 1 layer of 1000 units, sequences of 100)."""

    input_size: int = 128
    hidden_size: int = 1000
    num_layers: int = 1
    max_length: int = 100
    gamma_init: float = 0.1
    forget_bias: float = 1.0
    bn_momentum: float = 0.1
    dropout: float = 0.0


class BNLSTM(nn.Module):
    """Multi-layer BN-LSTM with the ``nn.LSTM`` calling convention (time-major).

    ``forward(x: (T, B, input_size), state=None, mask=None, start=0)`` returns
    ``(T, B, hidden_size)`` and the state ``(h, c)``, each ``(num_layers, B, hidden_size)``.
    """

    Config = BNLSTMConfig

    def __init__(self, config: BNLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.output_size = config.hidden_size
        self.layers = nn.ModuleList(
            BNLSTMLayer(
                config.input_size if i == 0 else config.hidden_size,
                config.hidden_size,
                config.max_length,
                gamma_init=config.gamma_init,
                forget_bias=config.forget_bias,
                bn_momentum=config.bn_momentum,
            )
            for i in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)

    def initial_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: a deterministic initial state."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(
        self, x: Tensor, state: State | None = None, mask: Tensor | None = None, start: int = 0
    ) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device, x.dtype)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, (h, c) = layer(x, (state[0][i], state[1][i]), mask, start)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


register(
    "bnlstm-ptb-char",
    RNNLanguageModel,
    LanguageModelConfig(vocab_size=50, embedding_size=128, cell="bnlstm", hidden_size=1000, max_length=100),
    task="lm",
    description="BN-LSTM, char-level PTB (1603.09025 §5.2): 1000 units, T_max 100",
)
register(
    "bnlstm-char-small",
    RNNLanguageModel,
    LanguageModelConfig(vocab_size=128, embedding_size=64, cell="bnlstm", hidden_size=256, max_length=64),
    task="lm",
    description="CPU-scale char BN-LSTM, 256 units, T_max 64",
)
