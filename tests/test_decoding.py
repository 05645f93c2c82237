"""CTC beam search (torchaudio's flashlight decoder) with the zoo's n-gram LMs: lexicon-free with a
character LM, and the ARPA paths build_arpa returns."""

import pytest
import torch

from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder
from zoo.speech.ngram import build_arpa
from zoo.speech.tokenizer import CharTokenizer


def spelled(tok: CharTokenizer, text: str, confusions: dict[int, tuple[str, float]]) -> torch.Tensor:
    """(1, 2L, V) log-probs: each character of ``text`` then a blank frame; at position ``i`` of
    ``confusions`` the frame puts ``p`` on ``text[i]`` and ``1 - p`` on the other character."""
    frames = []
    for i, c in enumerate(text):
        row = torch.full((tok.vocab_size,), 1e-4)
        if i in confusions:
            other, p = confusions[i]
            row[tok.labels.index(c)], row[tok.labels.index(other)] = p, 1 - p
        else:
            row[tok.labels.index(c)] = 1.0
        blank = torch.full((tok.vocab_size,), 1e-4)
        blank[tok.blank] = 1.0
        frames += [row, blank]
    stacked = torch.stack(frames)
    return (stacked / stacked.sum(-1, keepdim=True)).log()[None]


@pytest.mark.parametrize("order", [3, 5])
def test_lexicon_free_character_lm_scores_the_right_characters(tmp_path, order):
    """The issue's case: char LM on "go left" x20 + "go lift" x1, acoustics slightly favouring "lift"
    (i 0.6 / e 0.4). Without the LM the acoustics win; with weight 2 the LM's "left" must win (before
    the fix torchaudio mapped the LM's entries to the tokens in its own order and "lift" stayed)."""
    tok = CharTokenizer()
    lm = build_arpa(["go left"] * 20 + ["go lift"], tmp_path / "chars.arpa", order=order, unit="char")
    log_probs = spelled(tok, "go lift", {4: ("e", 0.6)})
    lengths = torch.tensor([log_probs.shape[1]])

    def decode(weight: float) -> str:
        return BeamSearchDecoder(tok.labels, BeamSearchConfig(lm=str(lm), lm_weight=weight, beam_size=20))(
            log_probs, lengths
        )[0]

    assert decode(0.0) == "go lift"
    assert decode(2.0) == "go left"
    # and the other way round: an LM that prefers "lift" keeps it against acoustics favouring "left"
    lift = build_arpa(["go lift"] * 20 + ["go left"], tmp_path / "lift.arpa", order=order, unit="char")
    favour_left = spelled(tok, "go left", {4: ("i", 0.6)})
    config = BeamSearchConfig(lm=str(lift), lm_weight=2.0, beam_size=20)
    assert BeamSearchDecoder(tok.labels, config)(favour_left, lengths) == ["go lift"]


def test_decoder_accepts_the_paths_build_arpa_returns(tmp_path):
    """build_arpa returns a Path; torchaudio takes only str LM paths (a Path was accepted here and
    then rejected by torchaudio)."""
    tok = CharTokenizer()
    words = tmp_path / "words.txt"
    words.write_text("go\nleft\nlift\n")
    lm = build_arpa(["go left"] * 20 + ["go lift"], tmp_path / "words.arpa", order=2)
    config = BeamSearchConfig(lexicon=words, lm=lm, lm_weight=2.0, beam_size=10)
    assert isinstance(config.lm, str) and isinstance(config.lexicon, str)
    log_probs = spelled(tok, "go lift", {4: ("e", 0.6)})
    assert BeamSearchDecoder(tok.labels, config)(log_probs, torch.tensor([log_probs.shape[1]])) == ["go left"]
    chars = build_arpa(["go left"], tmp_path / "chars.arpa", order=3, unit="char")
    assert BeamSearchDecoder(tok.labels, BeamSearchConfig(lm=chars, beam_size=5))(
        log_probs, torch.tensor([log_probs.shape[1]])
    ) in (["go left"], ["go lift"])
