"""Kneser–Ney n-gram LMs of orders 1-6 against a brute-force reference written from the equations
(Chen & Goodman 1998, §3.4-3.5), and the written ARPA files read back with their own back-off."""

import math
from functools import cache

import pytest

from zoo.speech.ngram import KneserNeyLM, build_arpa

CORPUS = [
    "go left",
    "go left",
    "go left now",
    "go right",
    "go right now",
    "turn left",
    "turn left now please",
    "turn right",
    "stop",
    "stop now",
    "go",
    "left left right",
    "go left now",
    "please go left now",
    "now go right",
    "go right now please",
    "turn left now",
    "stop now please",
    "go left",
    "turn right now",
]


class ReferenceKN:
    """Interpolated (modified) Kneser–Ney written directly from the equations with naive scans.

    Adjusted count a(g) of an n-gram g of length k: its raw count if k = N or g starts with <s>,
    else the continuation count N1+(• g) = #{v : c(v g) > 0}. Discounts per length k from the
    counts of counts n_r = #{g : a(g) = r} (r = 1..4 exactly): Y = n1 / (n1 + 2 n2),
    D_r = r − (r + 1) Y n_{r+1} / n_r (modified, D3 for a >= 3) or D = Y (plain). Fallbacks stated in
    the module's docstring: 0.5 everywhere without n1 or n2, D2 = 1 without n3, D3+ = 1.5 without
    n3 or n4; each D_r kept in [0.01, r].
    p(w | h) = max(a(h w) − D(a(h w)), 0) / Σ_v a(h v) + γ(h) p(w | h'),
    γ(h) = Σ_{v: a(h v) > 0} D(a(h v)) / Σ_v a(h v); an unseen h gives p(w | h'); below unigrams the
    uniform distribution over the vocabulary (+ </s>, <unk>; not <s>).
    """

    def __init__(self, sentences, order, discount="modified", discount_value=None):
        self.n = order
        self.sentences = [("<s>", *s.split(), "</s>") for s in sentences]
        self.vocab = sorted({w for s in sentences for w in s.split()}) + ["</s>", "<unk>"]
        self.kind, self.fixed = discount, discount_value
        self.adjusted, self.discount, self.prob = cache(self._adjusted), cache(self._discount), cache(self._prob)

    def grams(self, k):
        """Every distinct k-gram of the padded text (not the unigram <s>)."""
        return {s[i : i + k] for s in self.sentences for i in range(len(s) - k + 1)} - {("<s>",)}

    def raw(self, gram):
        k = len(gram)
        return sum(s[i : i + k] == gram for s in self.sentences for i in range(len(s) - k + 1))

    def _adjusted(self, gram):
        if len(gram) == self.n or gram[0] == "<s>":
            return self.raw(gram)
        return len({g[0] for g in self.grams(len(gram) + 1) if g[1:] == gram})

    def _discount(self, k, count):
        if self.fixed is not None:
            return self.fixed
        counts = [self.adjusted(g) for g in self.grams(k)]
        n = {r: counts.count(r) for r in (1, 2, 3, 4)}
        if n[1] == 0 or n[2] == 0:
            return 0.5
        y = n[1] / (n[1] + 2 * n[2])
        if self.kind == "plain":
            return y
        r = min(count, 3)
        if r == 1:
            d = 1 - 2 * y * n[2] / n[1]
        elif r == 2:
            d = 2 - 3 * y * n[3] / n[2] if n[3] else 1.0
        else:
            d = 3 - 4 * y * n[4] / n[3] if n[3] and n[4] else 1.5
        return min(max(d, 0.01), float(r))

    def _prob(self, word, history):
        if word not in self.vocab:
            word = "<unk>"
        history = history[max(len(history) - (self.n - 1), 0) :] if self.n > 1 else ()
        k = len(history) + 1
        lower = 1 / len(self.vocab) if k == 1 else self.prob(word, history[1:])
        following = {g: self.adjusted(g) for g in self.grams(k) if g[:-1] == history}
        total = sum(following.values())
        if total == 0:
            return lower
        c = following.get((*history, word), 0)
        gamma = sum(self.discount(k, a) for a in following.values()) / total
        return (max(c - self.discount(k, c), 0) if c else 0) / total + gamma * lower


def contexts(order):
    """Every history the corpus produces (short ones at sentence starts included) and unseen ones."""
    seen = set()
    for s in CORPUS:
        padded = ("<s>", *s.split())
        for i in range(1, len(padded) + 1):
            for j in range(max(0, i - (order - 1)), i + 1):
                seen.add(padded[j:i])
    return sorted(seen) + [("x", "left"), ("left", "x"), ("stop", "go", "left", "now", "please")]


@pytest.mark.parametrize("discount", ["modified", "plain"])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_kneser_ney_matches_the_brute_force_reference(order, discount):
    lm = KneserNeyLM(CORPUS, order=order, discount=discount)
    ref = ReferenceKN(CORPUS, order, discount)
    assert lm.vocab == ref.vocab
    for history in contexts(order):
        total = 0.0
        for w in lm.vocab:
            p = lm.prob(w, history)
            assert p == pytest.approx(ref.prob(w, history), rel=1e-9), (w, history)
            total += p
        assert total == pytest.approx(1.0, abs=1e-9), history


def test_order_four_keeps_the_whole_short_history():
    """The issue's symptom: at order 4, p(c | a b) equalled p(c | x b) = p(c | b)."""
    lm = KneserNeyLM(CORPUS, order=4)
    assert lm.prob("now", ("go", "left")) != pytest.approx(lm.prob("now", ("left",)))
    assert lm.prob("now", ("turn", "left")) != pytest.approx(lm.prob("now", ("go", "left")))


def read_arpa(path):
    """{n-gram: (log10 p, log10 back-off or None)} from an ARPA file, checking its \\data\\ counts."""
    declared, entries, section = {}, {}, None
    for line in path.read_text().splitlines():
        if not line.strip() or line == "\\data\\" or line == "\\end\\":
            continue
        if line.startswith("ngram "):
            k, count = line[len("ngram ") :].split("=")
            declared[int(k)] = int(count)
        elif line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        else:
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == section, line
            entries[gram] = (float(fields[0]), float(fields[2]) if len(fields) == 3 else None)
    assert {k: sum(len(g) == k for g in entries) for k in declared} == declared
    return entries


def arpa_prob(entries, word, history):
    """Standard ARPA back-off: p(w | h) if listed, else bo(h) · p(w | h')."""
    if (*history, word) in entries:
        return 10 ** entries[(*history, word)][0]
    if not history:
        return 10 ** entries[("<unk>",)][0]
    backoff = entries.get(history, (0.0, None))[1]
    return 10 ** (backoff or 0.0) * arpa_prob(entries, word, history[1:])


@pytest.mark.parametrize("discount", ["modified", "plain"])
@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
def test_arpa_file_normalises_in_every_context(tmp_path, order, discount):
    path = KneserNeyLM(CORPUS, order=order, discount=discount).write_arpa(tmp_path / "lm.arpa")
    entries = read_arpa(path)
    ref = ReferenceKN(CORPUS, order, discount)
    vocab = [g[0] for g in entries if len(g) == 1 and g != ("<s>",)]
    assert sorted(vocab) == sorted(ref.vocab)
    for gram in entries:  # KenLM's loader needs every n-gram's prefix and suffix listed
        assert len(gram) == 1 or (gram[:-1] in entries and gram[1:] in entries), gram
    histories = [g for g in entries if len(g) < order]
    assert len(histories) >= 10
    for history in histories:
        probs = [arpa_prob(entries, w, history) for w in vocab]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-5), history
        for w, p in zip(vocab, probs):
            assert p == pytest.approx(ref.prob(w, history), rel=1e-5), (w, history)


def test_char_arpa_spells_words_with_the_separator(tmp_path):
    path = build_arpa(["go left", "go lift"], tmp_path / "chars.arpa", order=3, unit="char")
    entries = read_arpa(path)
    assert ("g", "o", "|") in entries and ("|", "l", "e") in entries and ("<s>", "g", "o") in entries
    with pytest.raises(ValueError, match="unit must be"):
        build_arpa(["a"], tmp_path / "x.arpa", unit="bpe")
