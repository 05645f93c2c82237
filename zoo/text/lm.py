"""The recurrent language-model network shared by every LM in the zoo, and the plain LSTM baseline.

:class:`RNNLanguageModel`: token embedding -> recurrent stack -> softmax weights. The recurrent
stack is chosen by ``config.cell``:

==========  =====================================================  ============================
``cell``    stack                                                  paper
==========  =====================================================  ============================
``lstm``    :class:`LSTM` (fused ``nn.LSTM``, the baseline)         1603.09025 §5.2 baseline
``bnlstm``  :class:`zoo.text.bn_lstm.BNLSTM`                        1603.09025 eqs. 6-8
``lstmp``   :class:`zoo.text.factorized_lstm.FactorizedLSTM`        1703.10722 LSTMP (BIGLSTM)
``flstm``   the same with ``factor_size = r``                       1703.10722 §3.1
``glstm``   the same with ``groups = k``                            1703.10722 §3.2
==========  =====================================================  ============================

The network returns the last hidden layer, not logits: the task module computes the full or the
sampled softmax from :attr:`RNNLanguageModel.softmax_weight` / ``softmax_bias`` (a 793k-word
vocabulary's logits for a whole batch do not fit in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.registry import import_class, register

State = tuple[Tensor, Tensor]

#: cell name -> class path of the recurrent stack (imported lazily: those modules register presets of this class)
CELLS: dict[str, str] = {
    "lstm": "zoo.text.lm.LSTM",
    "bnlstm": "zoo.text.bn_lstm.BNLSTM",
    "lstmp": "zoo.text.factorized_lstm.FactorizedLSTM",
    "flstm": "zoo.text.factorized_lstm.FactorizedLSTM",
    "glstm": "zoo.text.factorized_lstm.FactorizedLSTM",
}


@dataclass
class LSTMConfig:
    input_size: int = 128
    hidden_size: int = 1000
    num_layers: int = 1
    forget_bias: float = 1.0
    dropout: float = 0.0


class LSTM(nn.Module):
    """The baseline: cuDNN/oneDNN-fused ``nn.LSTM`` (time-major), forget-gate bias ``forget_bias``.

    ``forward(x: (T, B, input_size), state=None, start=0)`` -> ``(T, B, hidden_size)``, ``(h, c)``
    each ``(L, B, hidden_size)``; ``start`` is accepted for a common interface (position-independent).
    """

    Config = LSTMConfig

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.output_size = config.hidden_size
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, config.num_layers, dropout=config.dropout)
        with torch.no_grad():
            h = config.hidden_size
            for name, param in self.lstm.named_parameters():
                if name.startswith("bias_ih"):  # gate order i, f, g, o; b_hh stays as initialised
                    param[h : 2 * h].fill_(config.forget_bias)

    def initial_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        zeros = torch.zeros(self.config.num_layers, batch_size, self.config.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, x: Tensor, state: State | None = None, start: int = 0) -> tuple[Tensor, State]:
        return self.lstm(x, state)


@dataclass
class LanguageModelConfig:
    """Embedding -> ``num_layers`` recurrent layers of ``cell`` -> softmax over ``vocab_size`` tokens.

    ``projection_size`` is the LSTMP family's ``p`` (ignored by ``lstm`` / ``bnlstm``);
    ``factor_size`` is F-LSTM's ``r``, ``groups`` G-LSTM's ``k``; ``max_length`` is BN-LSTM's ``T_max``.
    ``vocab_size`` is set from the data's vocabulary when training.
    """

    vocab_size: int = 256
    embedding_size: int = 128
    cell: str = "lstm"
    hidden_size: int = 256
    projection_size: int = 0
    num_layers: int = 1
    factor_size: int = 0
    groups: int = 1
    max_length: int = 100
    dropout: float = 0.0
    tie_weights: bool = False


def build_recurrent(config: LanguageModelConfig) -> nn.Module:
    """The recurrent stack selected by ``config.cell``, with a clear error on inconsistent settings."""
    if config.cell not in CELLS:
        raise ValueError(f"unknown cell {config.cell!r}; choose one of {sorted(CELLS)}")
    if (config.cell == "flstm") != (config.factor_size > 0):
        raise ValueError(
            f"cell={config.cell!r} with factor_size={config.factor_size}: only 'flstm' uses factor_size > 0"
        )
    if (config.cell == "glstm") != (config.groups > 1):
        raise ValueError(f"cell={config.cell!r} with groups={config.groups}: only 'glstm' uses groups > 1")
    cls = import_class(CELLS[config.cell])
    common = dict(input_size=config.embedding_size, hidden_size=config.hidden_size, num_layers=config.num_layers)
    inner_dropout = config.dropout if config.num_layers > 1 else 0.0
    if config.cell == "bnlstm":
        return cls(cls.Config(**common, max_length=config.max_length, dropout=inner_dropout))
    if config.cell == "lstm":
        return cls(cls.Config(**common, dropout=inner_dropout))
    return cls(
        cls.Config(
            **common,
            projection_size=config.projection_size or config.hidden_size,
            factor_size=config.factor_size,
            groups=config.groups,
            dropout=inner_dropout,
        )
    )


class RNNLanguageModel(nn.Module):
    """Recurrent LM network: ``tokens (B, T)`` -> last hidden layer ``(B, T, D)`` and the carried state.

    ``logits(hidden) = hidden @ softmax_weight.T + softmax_bias`` (``D`` = the stack's output size).
    """

    Config = LanguageModelConfig

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = build_recurrent(config)
        self.dropout = nn.Dropout(config.dropout)
        size = self.rnn.output_size
        if config.tie_weights and size != config.embedding_size:
            raise ValueError(f"tie_weights needs embedding_size ({config.embedding_size}) == output size ({size})")
        self.output = None if config.tie_weights else nn.Parameter(torch.empty(config.vocab_size, size))
        self.softmax_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if self.output is not None:
            nn.init.normal_(self.output, std=size**-0.5)

    @property
    def softmax_weight(self) -> Tensor:
        """``(V, D)``."""
        return self.embedding.weight if self.output is None else self.output

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.rnn.initial_state(batch_size, device=device, dtype=self.embedding.weight.dtype)

    def forward(self, tokens: Tensor, state: State | None = None, start: int = 0) -> tuple[Tensor, State]:
        """``tokens: (B, T)`` long -> ``hidden: (B, T, D)``, state. ``start``: absolute step (BN-LSTM)."""
        x = self.dropout(self.embedding(tokens.t()))
        hidden, state = self.rnn(x, state, start=start)
        return self.dropout(hidden).transpose(0, 1), state

    def logits(self, hidden: Tensor) -> Tensor:
        """``(..., D)`` -> ``(..., V)``; for evaluation over big vocabularies use chunks."""
        return torch.nn.functional.linear(hidden, self.softmax_weight, self.softmax_bias)


register(
    "lstm-ptb-char",
    RNNLanguageModel,
    LanguageModelConfig(vocab_size=50, embedding_size=128, cell="lstm", hidden_size=1000),
    task="lm",
    description="LSTM baseline of 1603.09025 §5.2: 1000 units, char-level PTB",
)
register(
    "lstm-char-small",
    RNNLanguageModel,
    LanguageModelConfig(vocab_size=128, embedding_size=64, cell="lstm", hidden_size=256),
    task="lm",
    description="CPU-scale char LSTM baseline, 256 units",
)
