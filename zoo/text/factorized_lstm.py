"""LSTMP, F-LSTM and G-LSTM (Kuchaiev & Ginsburg, "Factorization tricks for LSTM networks", arXiv 1703.10722).

LSTM with a recurrent projection (LSTMP, §2), with input ``x`` of size ``d``, state ``n``,
projection ``p``::

    [i, j, f, o] = T([x_t, h_{t−1}]) + b       gates, forget bias 1
    c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(j)
    m_t = σ(o) ⊙ tanh(c_t)
    h_t = P m_t                                P: n -> p, no bias

The affine map ``T`` is where the variants differ (§3):

* LSTMP: ``T = W``, one ``(d + p) × 4n`` matrix.                       params ``(d+p)·4n + 4n + n·p``
* F-LSTM ("factorized", §3.1): ``W ≈ W2·W1`` with ``W1: (d+p) → r`` (no bias) and ``W2: r → 4n``.
                                                                       params ``(d+p)·r + r·4n + 4n + n·p``
* G-LSTM ("group", §3.2): ``x`` and ``h`` are split into ``k`` groups; group ``g`` computes its own
  gates ``(d/k + p/k) → 4n/k`` independently; the full projection ``P`` mixes the groups.
                                                                       params ``(d+p)·4n/k + 4n + n·p``

With ``d = p`` these are the paper's ``2p·4n``, ``2p·r + r·4n`` and ``2p·4n/k`` (+ bias and projection).
The input half of ``T`` is applied to all time steps at once; only the recurrent half runs in the
per-step loop. Presets: ``biglstm-1b`` (BIGLSTM: 2 layers, n = 8192, p = 1024, vocabulary 793,470),
``flstm-1b`` (F512), ``glstm-1b`` (G4), and small CPU variants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry import register
from zoo.text.lm import LanguageModelConfig, RNNLanguageModel

State = tuple[Tensor, Tensor]


class LSTMPLayer(nn.Module):
    """One LSTMP layer; ``factor_size > 0`` makes it F-LSTM, ``groups > 1`` G-LSTM.

    Shapes: ``x: (T, B, input_size)`` -> ``(T, B, projection_size)``; state ``h: (B, p)``, ``c: (B, n)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        projection_size: int,
        factor_size: int = 0,
        groups: int = 1,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        if factor_size and groups > 1:
            raise ValueError("choose either factor_size (F-LSTM) or groups (G-LSTM), not both")
        for name, size in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("projection_size", projection_size),
        ):
            if size % groups:
                raise ValueError(f"{name}={size} is not divisible by groups={groups}")
        self.hidden_size, self.projection_size = hidden_size, projection_size
        self.factor_size, self.groups, self.forget_bias = factor_size, groups, forget_bias
        n4 = 4 * hidden_size
        if factor_size:  # W1 = [w1_x, w1_h] without bias, W2
            self.w1_x = nn.Parameter(torch.empty(factor_size, input_size))
            self.w1_h = nn.Parameter(torch.empty(factor_size, projection_size))
            self.w2 = nn.Parameter(torch.empty(n4, factor_size))
        else:  # block-diagonal W for k groups (k = 1: the full LSTMP matrix), stored per group
            self.weight_x = nn.Parameter(torch.empty(groups, input_size // groups, n4 // groups))
            self.weight_h = nn.Parameter(torch.empty(groups, projection_size // groups, n4 // groups))
        self.bias = nn.Parameter(torch.empty(n4))
        self.projection = nn.Parameter(torch.empty(projection_size, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform ±1/sqrt(fan-in) weights (as nn.LSTM), zero bias except forget gates = forget_bias."""
        for name, param in self.named_parameters():
            if name == "bias":
                continue
            fan_in = param.shape[-2] if param.ndim == 3 else param.shape[-1]  # (k, in/k, out/k) or (out, in)
            nn.init.uniform_(param, -(fan_in**-0.5), fan_in**-0.5)
        with torch.no_grad():
            self.bias.zero_()
            # gate layout (groups, [i, j, f, o], n/k): every group's f block
            self.bias.view(self.groups, 4, -1)[:, 2].fill_(self.forget_bias)

    def input_gates(self, x: Tensor) -> Tensor:
        """The input half of ``T`` plus ``b`` for all steps: ``(T, B, d)`` -> ``(T, B, 4n)``."""
        if self.factor_size:
            return F.linear(F.linear(x, self.w1_x), self.w2, self.bias)
        if self.groups == 1:
            return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight_x[0]).view(*x.shape[:2], -1)
        xs = x.reshape(-1, self.groups, x.shape[-1] // self.groups).transpose(0, 1)  # (k, T·B, d/k)
        out = torch.bmm(xs, self.weight_x).transpose(0, 1).reshape(*x.shape[:2], -1)
        return out + self.bias

    def recurrent_gates(self, h: Tensor) -> Tensor:
        """The recurrent half of ``T``: ``(B, p)`` -> ``(B, 4n)``."""
        if self.factor_size:
            return F.linear(F.linear(h, self.w1_h), self.w2)
        if self.groups == 1:
            return h @ self.weight_h[0]
        hs = h.view(h.shape[0], self.groups, -1).transpose(0, 1)  # (k, B, p/k)
        return torch.bmm(hs, self.weight_h).transpose(0, 1).reshape(h.shape[0], -1)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        gx = self.input_gates(x)
        h, c = state
        batch, k = x.shape[1], self.groups
        outputs = []
        for gx_t in gx.unbind(0):  # not gx[t]: its backward would allocate a full (T, B, 4n) gradient per step
            gates = (gx_t + self.recurrent_gates(h)).view(batch, k, 4, -1)
            i, j, f, o = gates.unbind(2)  # each (B, k, n/k)
            c = torch.addcmul(torch.sigmoid(f) * c.view(batch, k, -1), torch.sigmoid(i), torch.tanh(j))
            c = c.reshape(batch, -1)
            m = torch.sigmoid(o).reshape(batch, -1) * torch.tanh(c)
            h = F.linear(m, self.projection)
            outputs.append(h)
        return torch.stack(outputs), (h, c)


@dataclass
class FactorizedLSTMConfig:
    """A stack of LSTMP layers; ``factor_size = r > 0``: F-LSTM, ``groups = k > 1``: G-LSTM."""

    input_size: int = 1024
    hidden_size: int = 8192
    projection_size: int = 1024
    num_layers: int = 2
    factor_size: int = 0
    groups: int = 1
    forget_bias: float = 1.0
    dropout: float = 0.0


class FactorizedLSTM(nn.Module):
    """Multi-layer LSTMP / F-LSTM / G-LSTM with the ``nn.LSTM(proj_size=p)`` calling convention.

    ``forward(x: (T, B, input_size), state=None, start=0)`` returns ``(T, B, projection_size)`` and
    ``(h: (L, B, p), c: (L, B, n))``. ``start`` (the absolute step, used by BN-LSTM) is accepted for a
    common interface and does not matter here: these cells are position-independent.
    """

    Config = FactorizedLSTMConfig

    def __init__(self, config: FactorizedLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.output_size = config.projection_size
        self.layers = nn.ModuleList(
            LSTMPLayer(
                config.input_size if i == 0 else config.projection_size,
                config.hidden_size,
                config.projection_size,
                factor_size=config.factor_size,
                groups=config.groups,
                forget_bias=config.forget_bias,
            )
            for i in range(config.num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)

    def initial_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        c = self.config
        return (
            torch.zeros(c.num_layers, batch_size, c.projection_size, device=device, dtype=dtype),
            torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device, dtype=dtype),
        )

    def forward(self, x: Tensor, state: State | None = None, start: int = 0) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[1], x.device, x.dtype)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, (h, c) = layer(x, (state[0][i], state[1][i]))
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


def _one_billion_word(cell: str, **kw: int) -> LanguageModelConfig:
    """BIGLSTM (§4): 2 layers, n = 8192, p = 1024 (= embedding size), vocabulary 793,470."""
    return LanguageModelConfig(
        vocab_size=793_470, embedding_size=1024, cell=cell, hidden_size=8192, projection_size=1024, num_layers=2, **kw
    )


register(
    "biglstm-1b",
    RNNLanguageModel,
    _one_billion_word("lstmp"),
    task="lm",
    description="BIGLSTM, One Billion Word (1703.10722): 2x LSTMP 8192/1024",
)
register(
    "flstm-1b",
    RNNLanguageModel,
    _one_billion_word("flstm", factor_size=512),
    task="lm",
    description="F-LSTM F512 on BIGLSTM (1703.10722 §3.1)",
)
register(
    "glstm-1b",
    RNNLanguageModel,
    _one_billion_word("glstm", groups=4),
    task="lm",
    description="G-LSTM G4 on BIGLSTM (1703.10722 §3.2)",
)


def _small(cell: str, **kw: int) -> LanguageModelConfig:
    """CPU scale, word level, BIGLSTM's proportions / 16: n = 512, p = 64 (p = n/8), 2 layers;
    F32 (r = n/16, as F512 for n = 8192) or G4."""
    return LanguageModelConfig(
        vocab_size=10_000, embedding_size=64, cell=cell, hidden_size=512, projection_size=64, num_layers=2, **kw
    )


register("lstmp-small", RNNLanguageModel, _small("lstmp"), task="lm", description="CPU-scale LSTMP 512/64, 2 layers")
register(
    "flstm-small",
    RNNLanguageModel,
    _small("flstm", factor_size=32),
    task="lm",
    description="CPU-scale F-LSTM F32 (r = n/16, as F512 at n = 8192)",
)
register("glstm-small", RNNLanguageModel, _small("glstm", groups=4), task="lm", description="CPU-scale G-LSTM G4")
