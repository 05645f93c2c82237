"""``LanguageModelPipeline``: the exported language model (network + vocabulary + tokenisation).

Text is tokenised as in training (``datamodules/text.py``): characters (``level="char"``) or
whitespace-separated words (``level="word"``), every line break is ``</s>``; unknown tokens are
``<unk>``. A text is scored and generated after a ``</s>`` context (the start of a line in the
training streams). BN-LSTM networks run with absolute positions: step ``t`` uses population
statistics ``min(t, T_max − 1)`` (1603.09025 §3).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from zoo.pipeline import Pipeline
from zoo.registry import model_from_dict

UNK, BOS, EOS = "<unk>", "<s>", "</s>"


class LanguageModelPipeline(Pipeline):
    """Args:
    network: ``zoo.registry.model_to_dict`` of an :class:`~zoo.text.lm.RNNLanguageModel`.
    vocabulary: the tokens, id order (``<unk>``, ``<s>``, ``</s>`` first).
    level: ``char`` or ``word``.
    """

    def __init__(self, network: dict[str, Any], vocabulary: list[str], level: str = "char") -> None:
        super().__init__()
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.net = model_from_dict(network)
        if self.net.config.vocab_size != len(vocabulary):
            raise ValueError(f"network vocab_size {self.net.config.vocab_size} != {len(vocabulary)} vocabulary tokens")
        self.vocabulary = list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.vocabulary)}
        self.level = level
        self.eval()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a line break is ``</s>`` (none after an unterminated last line)."""
        ids: list[int] = []
        lines = text.split("\n")
        for n, line in enumerate(lines):
            tokens = list(line) if self.level == "char" else line.split()
            ids.extend(self.index.get(t, self.index[UNK]) for t in tokens)
            if n < len(lines) - 1:
                ids.append(self.index[EOS])
        return ids

    def decode(self, ids: list[int]) -> str:
        tokens = ["\n" if self.vocabulary[i] == EOS else self.vocabulary[i] for i in ids]
        if self.level == "char":
            return "".join(tokens)
        return " ".join(tokens).replace(" \n ", "\n").replace(" \n", "\n")

    @torch.no_grad()
    def score(self, text: str) -> dict[str, float]:
        """Negative log-likelihood of ``text`` (after a ``</s>`` context): total nats, tokens,
        perplexity and bits per token (bits per character at the char level)."""
        ids = self.encode(text)
        if not ids:
            raise ValueError("cannot score an empty text")
        device = self.net.softmax_bias.device
        sequence = torch.tensor([[self.index[EOS], *ids]], device=device)
        hidden, _ = self.net(sequence[:, :-1])
        log_probs = torch.log_softmax(self.net.logits(hidden[0]).float(), dim=-1)
        nll = -log_probs.gather(1, sequence[0, 1:, None]).sum().item()
        mean = nll / len(ids)
        return {"nll": nll, "tokens": len(ids), "perplexity": math.exp(mean), "bits_per_token": mean / math.log(2)}

    @torch.no_grad()
    def generate(self, prompt: str = "", n: int = 100, temperature: float = 1.0, seed: int | None = None) -> str:
        """``prompt`` followed by ``n`` sampled tokens (``temperature`` 0: greedy)."""
        generator = torch.Generator(device="cpu")
        if seed is not None:
            generator.manual_seed(seed)
        device = self.net.softmax_bias.device
        context = torch.tensor([[self.index[EOS], *self.encode(prompt)]], device=device)
        hidden, state = self.net(context)
        position = context.shape[1]
        out: list[int] = []
        for _ in range(n):
            logits = self.net.logits(hidden[0, -1]).float().cpu()
            logits[[self.index[UNK], self.index[BOS]]] = -math.inf  # never emit <unk> or <s>
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
            out.append(token)
            step: Tensor = torch.tensor([[token]], device=device)
            hidden, state = self.net(step, state, start=position)
            position += 1
        return prompt + self.decode(out)
