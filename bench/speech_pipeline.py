"""Speech data pipeline benchmark.

1. Feature extraction speed in x real time per core (one thread, CPU time; goal >= 500x): the log-mel and
   spectrogram featurizers on single utterances (as the DataLoader workers run them) and on
   padded batches, plus the whole training path of one utterance (WAV decode + augmentation +
   features) for scale.
2. Padded-frame fraction per epoch (goal <= 5%): the bucketing sampler against random batching
   of the same utterances (the synthetic corpus's training set, or ``--manifest``).

    python bench/speech_pipeline.py [--manifest train.json] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from zoo.datamodules.bucketing import BucketingBatchSampler
from zoo.datamodules.manifest import read_manifests
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus
from zoo.speech.audio import load_audio
from zoo.speech.augment import AugmentationConfig, FeatureAugmentation, WaveformAugmentation
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

RATE = 16000


def _timed(fn, repeats: int, blocks: int = 5) -> float:
    """CPU seconds per call of this (single-threaded) process, best of ``blocks`` blocks.

    CPU time rather than wall time, and the best block, because the machines this runs on are
    often shared: other processes' load inflates wall time, and the best block is the closest
    to an idle core.
    """
    fn()  # warm-up
    best = float("inf")
    for _ in range(blocks):
        start = time.process_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.process_time() - start) / repeats)
    return best


def feature_speed(seconds: float = 3.0, batch: int = 16, repeats: int = 10) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.standard_normal((batch, int(seconds * RATE))).astype(np.float32) * 0.1)
    lengths = torch.full((batch,), audio.shape[1])
    print(f"feature extraction, 1 thread, CPU time, {seconds:.0f} s utterances (goal >= 500x real time per core)")
    for kind in ("logmel", "spectrogram"):
        featurizer = Featurizer(FeaturizerConfig(kind=kind)).train()
        with torch.no_grad():
            one = _timed(lambda: featurizer(audio[:1], lengths[:1]), repeats)
            many = _timed(lambda: featurizer(audio, lengths), max(1, repeats // 4))
        print(f"  {kind:12s} one utterance: {seconds / one:8.0f}x real time   batch of {batch}: {batch * seconds / many:8.0f}x")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "utt.wav"
        soundfile.write(path, audio[0].numpy(), RATE)
        featurizer = Featurizer(FeaturizerConfig()).train()
        wave_aug = WaveformAugmentation(AugmentationConfig())
        feat_aug = FeatureAugmentation(AugmentationConfig())

        def clean() -> None:
            wave = load_audio(path)
            featurizer(wave[None], torch.tensor([wave.shape[0]]))

        def augmented() -> None:
            wave = wave_aug(load_audio(path))
            feat_aug(featurizer(wave[None], torch.tensor([wave.shape[0]]))[0][0])

        with torch.no_grad():
            print(f"  WAV decode + log-mel:                       {seconds / _timed(clean, repeats):8.0f}x real time")
            print(f"  WAV decode + default augmentation + log-mel: {seconds / _timed(augmented, repeats):8.0f}x real time")


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded


def padding(lengths: list[int], batch_size: int, epochs: int = 3) -> None:
    n = len(lengths)
    print(f"\npadded frames per epoch, {n} utterances, batch size {batch_size} (goal <= 5% with buckets)")
    bucket, random_ = [], []
    for epoch in range(epochs):
        sampler = BucketingBatchSampler(lengths, batch_size=batch_size, seed=0)
        sampler.set_epoch(epoch)
        bucket.append(padding_fraction(lengths, list(sampler)))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        random_.append(padding_fraction(lengths, [b.tolist() for b in order.split(batch_size)]))
    budget = batch_size * int(np.mean(lengths))
    by_frames = BucketingBatchSampler(lengths, batch_size=None, max_batch_frames=budget, seed=0)
    framed = padding_fraction(lengths, list(by_frames))
    b, r = float(np.mean(bucket)), float(np.mean(random_))
    print(f"  random batches:                  {100 * r:5.1f}% padding")
    print(f"  bucketing sampler (count):       {100 * b:5.1f}% padding   ratio random/bucketing {r / max(b, 1e-9):6.1f}x")
    print(f"  bucketing sampler ({budget} frames): {100 * framed:5.1f}% padding   ({len(by_frames)} batches)")
    sorted_epoch = BucketingBatchSampler(lengths, batch_size=batch_size, sorted_epochs=1)
    print(f"  SortaGrad sorted epoch:          {100 * padding_fraction(lengths, list(sorted_epoch)):5.1f}% padding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="manifest whose durations to batch (default: synthetic corpus train split)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    feature_speed()
    manifest = args.manifest or build_corpus(SyntheticCorpusConfig()).train
    tokenizer = CharTokenizer(TokenizerConfig(unknown="drop"))
    data = read_manifests(manifest, tokenizer, audio_check="none")
    featurizer = Featurizer(FeaturizerConfig())
    lengths = [int(featurizer.num_frames(round(u.duration * RATE))) for u in data.utterances]
    print(f"\ndurations from {manifest}: {sum(u.duration for u in data.utterances) / 3600:.2f} h, "
          f"{min(u.duration for u in data.utterances):.2f}-{max(u.duration for u in data.utterances):.2f} s")
    padding(lengths, args.batch_size)


if __name__ == "__main__":
    main()
