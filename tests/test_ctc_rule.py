"""The CTC length rule (zoo.speech.ctc) against a naive loop, and its single use by every caller."""

import random

import torch

from zoo.speech.ctc import ctc_feasible, ctc_min_frames, ctc_min_frames_batch


def naive_min_frames(tokens: list[int]) -> int:
    frames = 0
    for i, token in enumerate(tokens):
        frames += 1 + (i > 0 and tokens[i - 1] == token)
    return frames


def test_min_frames_matches_a_naive_loop_with_padding():
    rng = random.Random(0)
    rows = [[rng.randrange(1, 4) for _ in range(rng.randrange(0, 12))] for _ in range(50)]
    width = max(map(len, rows))
    # pad with the last label repeated: padding must never count as a repeat
    padded = torch.tensor([row + [row[-1] if row else 1] * (width - len(row)) for row in rows])
    lengths = torch.tensor([len(row) for row in rows])
    expected = [naive_min_frames(row) for row in rows]
    assert ctc_min_frames_batch(padded, lengths).tolist() == expected
    assert [ctc_min_frames(row) for row in rows] == expected
    assert not ctc_feasible(torch.tensor(expected) - 1, padded, lengths).any()
    assert ctc_feasible(torch.tensor(expected), padded, lengths).all()


def test_every_caller_uses_the_one_rule():
    from zoo.callbacks import ctc_alignment as callback
    from zoo.datamodules import speech
    from zoo.lightning_modules import ctc_speech_recognizer
    from zoo.speech import alignment

    assert speech.ctc_min_frames is alignment.ctc_min_frames is callback.ctc_min_frames is ctc_min_frames
    assert ctc_speech_recognizer.ctc_feasible is ctc_feasible
