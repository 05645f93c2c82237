"""Speech data pipeline benchmark.

1. Feature extraction speed in x real time per core (one thread, CPU time; goal >= 500x): the log-mel and
   spectrogram featurizers on single utterances (as the DataLoader workers run them) and on
   padded batches, plus the whole training path of one utterance (WAV decode + augmentation +
   features) for scale.
2. Padded-frame fraction per epoch (goal <= 5%): the bucketing sampler against random batching
   of the same utterances (the synthetic corpus's training set, or ``--manifest``).

    python bench/speech_pipeline.py [--manifest train.json] [--batch-size 16]

CPU time of this single-threaded process, best of 5 blocks (``harness.cpu_time``: other processes'
load inflates wall time on a shared machine; the best block is the closest to an idle core).
Results: ``bench/results/speech_pipeline.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
from harness import cpu_time, environment, table, write_result

from zoo.datamodules.bucketing import BucketingBatchSampler
from zoo.datamodules.manifest import read_manifests
from zoo.datamodules.synthetic_speech import SyntheticCorpusConfig, build_corpus
from zoo.speech.audio import load_audio
from zoo.speech.augment import AugmentationConfig, FeatureAugmentation, WaveformAugmentation
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig

RATE = 16000


def feature_speed(seconds: float = 3.0, batch: int = 16, repeats: int = 10) -> list[dict]:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.standard_normal((batch, int(seconds * RATE))).astype(np.float32) * 0.1)
    lengths = torch.full((batch,), audio.shape[1])
    print(f"feature extraction, 1 thread, CPU time, {seconds:.0f} s utterances (goal >= 500x real time per core)")
    rows = []
    for kind in ("logmel", "spectrogram"):
        featurizer = Featurizer(FeaturizerConfig(kind=kind)).train()
        with torch.no_grad():
            one = cpu_time(lambda: featurizer(audio[:1], lengths[:1]), repeats)
            many = cpu_time(lambda: featurizer(audio, lengths), max(1, repeats // 4))
        print(
            f"  {kind:12s} one utterance: {seconds / one:8.0f}x real time   batch of {batch}: "
            f"{batch * seconds / many:8.0f}x"
        )
        rows.append({"path": f"{kind} features, one utterance", "x_real_time": seconds / one})
        rows.append({"path": f"{kind} features, batch of {batch}", "x_real_time": batch * seconds / many})
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
            for name, fn in (
                ("WAV decode + log-mel", clean),
                ("WAV decode + default augmentation + log-mel", augmented),
            ):
                rate = seconds / cpu_time(fn, repeats)
                print(f"  {name + ':':44s} {rate:8.0f}x real time")
                rows.append({"path": name, "x_real_time": rate})
    return rows


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded


def padding(lengths: list[int], batch_size: int, epochs: int = 3) -> list[dict]:
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
    print(
        f"  bucketing sampler (count):       {100 * b:5.1f}% padding   ratio random/bucketing {r / max(b, 1e-9):6.1f}x"
    )
    print(f"  bucketing sampler ({budget} frames): {100 * framed:5.1f}% padding   ({len(by_frames)} batches)")
    sorted_epoch = BucketingBatchSampler(lengths, batch_size=batch_size, sorted_epochs=1)
    sorted_fraction = padding_fraction(lengths, list(sorted_epoch))
    print(f"  SortaGrad sorted epoch:          {100 * sorted_fraction:5.1f}% padding")
    return [
        {"batching": "random batches", "padding": r},
        {"batching": f"bucketing sampler ({batch_size} utterances)", "padding": b},
        {"batching": f"bucketing sampler ({budget} frames, {len(by_frames)} batches)", "padding": framed},
        {"batching": "SortaGrad sorted epoch", "padding": sorted_fraction},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="manifest whose durations to batch (default: synthetic corpus train split)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--name", default="speech_pipeline", help="result file bench/results/<name>.json")
    args = parser.parse_args()
    env = environment()
    speed = feature_speed()
    env["threads"] = 1
    manifest = args.manifest or build_corpus(SyntheticCorpusConfig()).train
    tokenizer = CharTokenizer(TokenizerConfig(unknown="drop"))
    data = read_manifests(manifest, tokenizer, audio_check="none")
    featurizer = Featurizer(FeaturizerConfig())
    lengths = [int(featurizer.num_frames(round(u.duration * RATE))) for u in data.utterances]
    print(
        f"\ndurations from {manifest}: {sum(u.duration for u in data.utterances) / 3600:.2f} h, "
        f"{min(u.duration for u in data.utterances):.2f}-{max(u.duration for u in data.utterances):.2f} s"
    )
    pad = padding(lengths, args.batch_size)
    write_result(
        args.name,
        [
            table(
                "Feature extraction speed (1 thread, CPU time, best of 5 blocks; goal ≥ 500× real time per core)",
                [("path", "path"), ("x_real_time", "× real time", ",.0f")],
                speed,
            ),
            table(
                f"Padded frames per epoch ({len(lengths)} utterances of "
                f"{Path(manifest).parent.name}/{Path(manifest).name}, "
                f"batch {args.batch_size}; goal ≤ 5 % with buckets)",
                [("batching", "batching"), ("padding", "padded frames", ".1%")],
                pad,
            ),
        ],
        env=env,
        title="Speech data pipeline",
    )


if __name__ == "__main__":
    main()
