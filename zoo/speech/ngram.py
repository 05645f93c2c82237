"""A small interpolated Kneser–Ney n-gram estimator that writes ARPA files.

KenLM's ``lmplz`` cannot be installed here, so beam-search language models for the CTC decoder
are built with this estimator (Chen & Goodman 1998, "An empirical study of smoothing techniques",
§3.4 interpolated Kneser–Ney and §3.5 the modified variant). For order ``n`` and history ``h``
(``h'`` = ``h`` without its first word)::

    p(w | h) = max(c(h w) − D(c(h w)), 0) / Σ_v c(h v)  +  γ(h) · p(w | h')
    γ(h)     = (D1·N1(h •) + D2·N2(h •) + D3·N3+(h •)) / Σ_v c(h v)

``c`` is the raw count at the highest order and the *continuation count* ``N1+(• h w)`` (number of
distinct words seen before ``h w``) at lower orders, except for n-grams starting with ``<s>``, which
keep raw counts (nothing can precede ``<s>``; KenLM does the same). Unigrams interpolate with the
uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>`` excluded).
``discount="modified"`` estimates D1, D2, D3+ per order from counts of counts
(n_r = number of n-grams of that order whose adjusted count is exactly r; Y = n1 / (n1 + 2·n2),
D_r = r − (r + 1)·Y·n_{r+1} / n_r); ``"plain"`` uses one D = Y per order, or the fixed
``discount_value`` if given. Toy corpora lack some counts of counts: without n1 or n2 every D is
0.5, without n3 D2 = 1, without n3 or n4 D3+ = 1.5; each D_r is kept in [0.01, r] so every history
keeps back-off mass and no discounted count is negative. The ARPA file stores ``log10 p(w | h)``
for every seen n-gram and ``log10 γ(h)`` as the back-off weight of every history, so a reader that backs off
(``p(w | h) = γ(h)·p(w | h')`` for unseen ``h w``) reproduces the interpolated model exactly.

``unigram_prior`` (word -> frequency, e.g. a general-English word list) replaces the uniform distribution below
the unigrams: the vocabulary then also holds the prior's words, and ``p0(w) = f(w) / Σ_v f(v)`` over the
vocabulary, where a word without a positive prior frequency (``</s>``, ``<unk>``, a word only in the text) gets the
prior's smallest one. A word the text never saw thus keeps a probability in proportion to how common it is
(the interpolation with a background distribution is the lowest level of Chen & Goodman's recursion, §3.4).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class KneserNeyLM:
    """Interpolated (modified) Kneser–Ney n-gram model over whitespace-separated tokens.

    Args:
        sentences: token lists (or strings, split on whitespace), one per sentence.
        order: n.
        discount: ``"modified"`` (three discounts per order) or ``"plain"`` (one per order).
        discount_value: a fixed D for every order (``"plain"`` only), e.g. for hand-checked tests.
        unigram_prior: word -> frequency of a background distribution that replaces the uniform one below the
            unigrams (see the module docstring); its words join the vocabulary.
    """

    def __init__(
        self,
        sentences: Iterable[str | list[str]],
        order: int = 3,
        discount: str = "modified",
        discount_value: float | None = None,
        unigram_prior: Mapping[str, float] | None = None,
    ) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if discount not in ("modified", "plain"):
            raise ValueError(f"discount must be 'modified' or 'plain', got {discount!r}")
        self.order = order
        raw: list[Counter] = [Counter() for _ in range(order + 1)]  # raw[k][ngram of length k]
        vocab: set[str] = set()
        for sentence in sentences:
            tokens = sentence.split() if isinstance(sentence, str) else list(sentence)
            if not tokens:
                continue
            vocab.update(tokens)
            padded = [BOS] * 1 + tokens + [EOS]
            for k in range(1, order + 1):
                for i in range(len(padded) - k + 1):
                    gram = tuple(padded[i : i + k])
                    if gram != (BOS,):
                        raw[k][gram] += 1
        if not vocab:
            raise ValueError("no training text: every sentence is empty")
        if unigram_prior:
            vocab.update(w for w in unigram_prior if w not in (BOS, EOS, UNK))
        self.vocab = sorted(vocab) + [EOS, UNK]
        self._in_vocab = frozenset(self.vocab)
        self._base: dict[str, float] | None = None  # None: uniform
        if unigram_prior:
            floor = min(f for f in unigram_prior.values() if f > 0)
            weights = {w: f if (f := unigram_prior.get(w, 0.0)) > 0 else floor for w in self.vocab}
            norm = math.fsum(weights.values())
            self._base = {w: f / norm for w, f in weights.items()}
        # adjusted counts: raw at the top order and for n-grams starting with <s>, else continuation counts
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]
        self.counts[order] = raw[order]
        for k in range(1, order):
            for gram in raw[k + 1]:
                self.counts[k][gram[1:]] += 1
            for gram, c in raw[k].items():
                if gram[0] == BOS:
                    self.counts[k][gram] = c
        self.discounts = [self._discounts(self.counts[k], discount, discount_value) for k in range(order + 1)]
        self._totals: list[dict[tuple, int]] = []
        self._types: list[dict[tuple, list[int]]] = []
        for k in range(order + 1):
            totals: dict[tuple, int] = defaultdict(int)
            types: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
            for gram, c in self.counts[k].items():
                totals[gram[:-1]] += c
                types[gram[:-1]][min(c, 3) - 1] += 1
            self._totals.append(dict(totals))
            self._types.append(dict(types))

    @staticmethod
    def _discounts(counts: Counter, kind: str, fixed: float | None) -> tuple[float, float, float]:
        if fixed is not None:
            if kind != "plain":
                raise ValueError("discount_value needs discount='plain'")
            return (fixed, fixed, fixed)
        n = Counter(counts.values())  # n_r: how many n-grams have (adjusted) count exactly r
        if not n[1] or not n[2]:
            return (0.5, 0.5, 0.5)  # too little data for counts of counts (e.g. a toy corpus)
        y = n[1] / (n[1] + 2 * n[2])
        if kind == "plain":
            return (y, y, y)
        d = [
            1 - 2 * y * n[2] / n[1],
            2 - 3 * y * n[3] / n[2] if n[3] else 1.0,
            3 - 4 * y * n[4] / n[3] if n[3] and n[4] else 1.5,
        ]
        # D_k in (0, k]: positive so every history keeps back-off mass, at most k so counts stay >= 0
        return tuple(min(max(v, 0.01), k + 1.0) for k, v in enumerate(d))  # type: ignore[return-value]

    def backoff(self, history: tuple[str, ...]) -> float:
        """γ(h): the mass the history's seen continuations leave to the lower order."""
        k = len(history) + 1
        total = self._totals[k].get(history)
        if not total:
            return 1.0
        d = self.discounts[k]
        n1, n2, n3 = self._types[k][history]
        return (d[0] * n1 + d[1] * n2 + d[2] * n3) / total

    def prob(self, word: str, history: tuple[str, ...] | list[str] = ()) -> float:
        """p(word | history) under the interpolated model (history truncated to order − 1)."""
        history = tuple(history)
        history = history[max(len(history) - (self.order - 1), 0) :] if self.order > 1 else ()
        if word not in self._in_vocab:
            word = UNK
        if not history:
            total = self._totals[1][()]
            c = self.counts[1].get((word,), 0)
            discounted = max(c - self.discounts[1][min(c, 3) - 1], 0.0) / total if c else 0.0
            if self._base is not None:
                return discounted + self.backoff(()) * self._base[word]
            return discounted + self.backoff(()) / len(self.vocab)
        return self._interpolate(word, history, self.prob(word, history[1:]))

    def _interpolate(self, word: str, history: tuple[str, ...], lower: float) -> float:
        """p(word | history) from ``lower`` = p(word | history[1:]) (``word`` in the vocabulary, history non-empty)."""
        k = len(history) + 1
        total = self._totals[k].get(history)
        if not total:
            return lower
        c = self.counts[k].get((*history, word), 0)
        discounted = max(c - self.discounts[k][min(c, 3) - 1], 0.0) / total if c else 0.0
        return discounted + self.backoff(history) * lower

    def write_arpa(self, path: str | Path) -> Path:
        """Write the model in ARPA format (log10 probabilities and back-off weights)."""
        path = Path(path)
        entries: list[list[str]] = []
        # p of the previous order's n-grams: the lower-order term of this order's (every suffix of a seen
        # n-gram is seen one order down), so each probability is computed once instead of recursively
        lower: dict[tuple[str, ...], float] = {}
        for k in range(1, self.order + 1):
            lines = []
            grams = sorted(self.counts[k]) if k > 1 else [(w,) for w in self.vocab]
            if k == 1:
                grams = [(BOS,)] + grams
            probs: dict[tuple[str, ...], float] = {}
            for gram in grams:
                if gram == (BOS,):
                    logp = -99.0
                else:
                    if k == 1:
                        p = self.prob(gram[0])
                    elif gram[1:] not in lower:
                        p = self.prob(gram[-1], gram[:-1])
                    else:
                        p = self._interpolate(gram[-1], gram[:-1], lower[gram[1:]])
                    probs[gram] = p
                    logp = math.log10(p)
                line = f"{logp:.7f}\t{' '.join(gram)}"
                if k < self.order and gram in self._totals[k + 1]:
                    line += f"\t{math.log10(self.backoff(gram)):.7f}"
                lines.append(line)
            entries.append(lines)
            lower = probs
        with path.open("w") as f:
            f.write("\n\\data\\\n")
            for k, lines in enumerate(entries, start=1):
                f.write(f"ngram {k}={len(lines)}\n")
            for k, lines in enumerate(entries, start=1):
                f.write(f"\n\\{k}-grams:\n")
                f.write("\n".join(lines) + "\n")
            f.write("\n\\end\\\n")
        return path


def build_arpa(
    sentences: Iterable[str],
    path: str | Path,
    order: int = 3,
    unit: str = "word",
    discount: str = "modified",
    unigram_prior: Mapping[str, float] | None = None,
) -> Path:
    """Estimate a Kneser–Ney LM on ``sentences`` and write it to ``path``.

    ``unit="char"`` models characters (space written as ``|``), for lexicon-free beam search;
    ``unigram_prior``: word frequencies below the unigrams (:class:`KneserNeyLM`), word LMs only.
    """
    if unit == "char":
        if unigram_prior:
            raise ValueError("unigram_prior is for word LMs (unit='word')")
        sentences = [" ".join("|" if c == " " else c for c in s.strip()) for s in sentences]
    elif unit != "word":
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    return KneserNeyLM(sentences, order=order, discount=discount, unigram_prior=unigram_prior).write_arpa(path)
