"""The speech DataModule shared by every CTC speech model (Jasper, QuartzNet, DeepSpeech2).

manifest (JSON lines) -> audio (soundfile, 16 kHz mono) -> [train: waveform augmentation]
-> features (``zoo.speech.features.Featurizer``) -> [train: SpecAugment / SpecCutout]
-> padded batch. Audio is decoded and featurized one utterance at a time in the DataLoader
workers; batches come from :class:`~zoo.datamodules.bucketing.BucketingBatchSampler`, which
shards them across ranks itself (run Lightning with ``use_distributed_sampler: false``).

Training keeps utterances with ``min_duration <= duration <= max_duration`` whose transcript
fits CTC after the encoder's time reduction (``frames // time_reduction >= target length +
repeated adjacent letters``, frames counted at the fastest speed perturbation); the dropped
counts are logged. Validation, test and prediction keep every utterance, so no utterance is ever
silently removed from a WER.

Every batch is a dict: ``features`` (B, F, T) float32, ``feature_lengths`` (B,) int64,
``targets`` (B, L) int64 zero-padded, ``target_lengths`` (B,) int64, ``texts`` (normalised
transcripts), ``ids`` (audio paths).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.config import as_config
from zoo.datamodules.bucketing import BucketingBatchSampler
from zoo.datamodules.manifest import ManifestData, ManifestError, Utterance, read_manifests, report_skipped
from zoo.datamodules.resumable import ResumePosition
from zoo.datamodules.splits import ALL_SPLITS as SPLITS
from zoo.datamodules.splits import STAGE_SPLITS
from zoo.datamodules.synthetic_speech import CorpusManifests, SyntheticCorpusConfig, build_corpus
from zoo.speech.audio import AudioError, load_audio
from zoo.speech.augment import AugmentationConfig, FeatureAugmentation, WaveformAugmentation
from zoo.speech.ctc import ctc_min_frames
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig


class SpeechDataset(Dataset):
    """Utterances -> per-utterance feature dicts (computed in the calling DataLoader worker).

    With ``train=True`` the featurizer dithers and the augmentations are applied. After
    :meth:`cache_features`, items come from features computed once (then only the feature-domain
    augmentations vary between epochs). A decoding failure raises a :class:`ManifestError` naming the manifest line,
    or with ``skip_bad``
    returns ``{"error": message}`` for the collate function to drop and count.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        featurizer: FeaturizerConfig,
        *,
        train: bool = False,
        augmentation: AugmentationConfig | None = None,
        time_reduction: int = 1,
        skip_bad: bool = False,
    ):
        self.utterances = list(utterances)
        self.featurizer = Featurizer(featurizer).train(train)
        self.sample_rate = featurizer.sample_rate
        self.train = train
        use_augmentation = train and augmentation is not None and augmentation.enabled
        use_waveform = use_augmentation and WaveformAugmentation.active(augmentation)
        self.waveform_augmentation = WaveformAugmentation(augmentation, self.sample_rate) if use_waveform else None
        self.feature_augmentation = FeatureAugmentation(augmentation, featurizer) if use_augmentation else None
        self.time_reduction = time_reduction
        self.skip_bad = skip_bad
        self.cached_features: list[Tensor | str] | None = None

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        if self.cached_features is not None:
            features = self.cached_features[index]
            if isinstance(features, str):  # unreadable audio, kept as its message (skip_bad)
                return {"error": features}
        else:
            try:
                features = self.featurize(index)
            except ManifestError as error:
                if self.skip_bad:
                    return {"error": str(error)}
                raise
        if self.feature_augmentation is not None:
            features = self.feature_augmentation(features)
        frames = features.shape[-1]
        if self.train and frames // self.time_reduction < ctc_min_frames(utt.tokens):
            return {"infeasible": f"{utt.manifest}:{utt.line}: too short for its transcript under CTC"}
        return {
            "features": features,
            "length": frames,
            "tokens": torch.tensor(utt.tokens, dtype=torch.long),
            "text": utt.text,
            "id": utt.audio_filepath,
        }

    def featurize(self, index: int) -> Tensor:
        """Decode utterance ``index``, apply the waveform augmentations (training) and featurize it
        -> (F, T). Raises :class:`ManifestError` naming the manifest line when the audio is unreadable."""
        utt = self.utterances[index]
        try:
            waveform = load_audio(utt.audio_filepath, self.sample_rate)
        except AudioError as err:
            raise ManifestError(utt.manifest, utt.line, str(err)) from err
        if self.waveform_augmentation is not None:
            waveform = self.waveform_augmentation(waveform)
        with torch.no_grad():
            features, frames = self.featurizer(waveform[None], torch.tensor([waveform.shape[-1]]))
        return features[0, :, : int(frames)]

    def cache_features(self, num_workers: int = 0) -> None:
        """Featurize every utterance once (in ``num_workers`` DataLoader processes, 0: this one) and
        serve those features from now on; the feature augmentations still apply per item. Needs
        no waveform augmentation: a cached waveform perturbation would be the same every epoch."""
        if self.waveform_augmentation is not None:
            raise ValueError(
                "cache_features needs the waveform augmentations off (speed_prob, pitch_prob, eq_prob, "
                "reverb_prob, noise_prob = 0); use the feature-domain stretch_prob / warp_prob instead"
            )
        loader = DataLoader(_Featurized(self), batch_size=None, num_workers=num_workers)
        self.cached_features = list(loader)


class _Featurized(Dataset):
    """``dataset.featurize(i)``, or the error message for unreadable audio with ``skip_bad``."""

    def __init__(self, dataset: SpeechDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor | str:
        try:
            return self.dataset.featurize(index)
        except ManifestError as error:
            if not self.dataset.skip_bad:
                raise
            return str(error)


def collate_speech(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of :class:`SpeechDataset` items into a batch (see the module docstring).

    Items carrying an ``error`` (undecodable audio, ``skip_bad``) or ``infeasible`` (training
    utterance too short for CTC after augmentation) are left out; their messages are returned
    under ``skipped`` and ``infeasible``.
    """
    good = [item for item in items if "features" in item]
    num_features = good[0]["features"].shape[0] if good else 0
    lengths = torch.tensor([item["length"] for item in good], dtype=torch.long)
    target_lengths = torch.tensor([len(item["tokens"]) for item in good], dtype=torch.long)
    features = torch.zeros(len(good), num_features, int(lengths.max()) if good else 0)
    targets = torch.zeros(len(good), int(target_lengths.max()) if good else 0, dtype=torch.long)
    for i, item in enumerate(good):
        features[i, :, : item["length"]] = item["features"]
        targets[i, : len(item["tokens"])] = item["tokens"]
    return {
        "features": features,
        "feature_lengths": lengths,
        "targets": targets,
        "target_lengths": target_lengths,
        "texts": [item["text"] for item in good],
        "ids": [item["id"] for item in good],
        "skipped": [item["error"] for item in items if "error" in item],
        "infeasible": [item["infeasible"] for item in items if "infeasible" in item],
    }


class SpeechDataLoader(DataLoader):
    """A DataLoader over a :class:`BucketingBatchSampler` that Lightning can resume mid-epoch.

    It counts the batches it has delivered (workers prefetch, so the sampler alone runs ahead)
    and exposes ``state_dict``/``load_state_dict``, which Lightning stores in checkpoints: the
    zoo's one resume rule (:class:`~zoo.datamodules.resumable.ResumePosition`), with the position
    in the sampler's batches, counted as they leave the loader (a batch left empty counts, though
    the trainer never sees it; Lightning does not prefetch from a loader with a length). It
    also collects the messages of utterances skipped with ``skip_bad`` (and, in training, those
    too short for CTC) and never delivers a batch left empty by them.
    """

    batch_sampler: BucketingBatchSampler

    def __init__(self, dataset: SpeechDataset, batch_sampler: BucketingBatchSampler, **kwargs: Any):
        # A private generator for the workers' base seed (see __iter__), not the global RNG.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate_speech, **kwargs)
        self.position = ResumePosition()  # the batches delivered (the sampler keeps the epoch and the skip)
        self.skipped: list[str] = []
        self.infeasible = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Seeded by (seed, epoch): a resumed epoch gets the same worker seeds, and creating the iterator
        # lazily (after ResumableRNG restored the global RNG on resume) draws nothing from the global RNG.
        self.generator.manual_seed(1_000_003 * self.batch_sampler.seed + self.batch_sampler.epoch)
        self._follow_sampler()
        self.position.begin()  # the batches the sampler will skip count as delivered
        for batch in self.position.track(super().__iter__()):
            self.skipped += batch.pop("skipped")
            self.infeasible += len(batch.pop("infeasible"))
            if batch["ids"]:
                yield batch

    def _follow_sampler(self) -> None:
        """Take the sampler's epoch and pending skip (the sampler applies it)."""
        self.position.restore(self.batch_sampler.epoch, self.batch_sampler.start_batch)

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict(batches_done=self.position.consumed())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)
        self._follow_sampler()


class SpeechDataModule(pl.LightningDataModule):
    """Speech manifests (or the embedded synthetic corpus) -> padded CTC batches.

    Args:
        train_manifests, val_manifests, test_manifests, predict_manifests: NeMo JSON-lines
            manifests per split (several are concatenated).
        corpus: the synthetic espeak-ng corpus to build and use when no manifests are given
            (``None``: its default configuration).
        featurizer, tokenizer, augmentation: see ``zoo.speech`` (instances or dicts of their
            fields); augmentation is applied in training only.
        time_reduction: the encoder's output-frame stride (for the CTC length rule). ``zoo fit`` sets it
            from the model's encoder (``ZooCLI`` links it): recipes do not state it.
        batch_size: utterances per batch; ``max_batch_frames``: bucket by padded frames instead.
        num_workers: DataLoader worker processes (features are computed there).
        min_duration, max_duration: training length filter in seconds.
        skip_bad: skip defective manifest lines and unreadable audio (counted and reported)
            instead of raising.
        cache_features: featurize every utterance once (in the main process, at the first use of
            a split) and keep the features in memory, so that the workers only batch them and
            apply the feature-domain augmentations (time stretch, frequency warp, SpecAugment):
            data loading then costs almost nothing next to training. Needs the waveform
            augmentations off; memory is 4 bytes x features x frames (the embedded corpus: about
            0.3 GB of 64-bin log-mels for its 3 hours of training audio), so not for LibriSpeech.
        seed: batching and shuffling seed (with the epoch).
        audio_check: how manifests' audio is checked when read: ``"header"``, ``"exists"``, ``"none"``.
    """

    def __init__(
        self,
        train_manifests: list[str] | None = None,
        val_manifests: list[str] | None = None,
        test_manifests: list[str] | None = None,
        predict_manifests: list[str] | None = None,
        corpus: SyntheticCorpusConfig | None = None,
        featurizer: FeaturizerConfig | None = None,
        tokenizer: TokenizerConfig | None = None,
        augmentation: AugmentationConfig | None = None,
        time_reduction: int = 1,
        batch_size: int = 16,
        max_batch_frames: int | None = None,
        num_workers: int = 2,
        min_duration: float = 0.0,
        max_duration: float = 30.0,
        skip_bad: bool = False,
        cache_features: bool = False,
        seed: int = 0,
        audio_check: str = "header",
    ):
        super().__init__()
        self.manifests: dict[str, list[str] | None] = {
            "train": train_manifests,
            "val": val_manifests,
            "test": test_manifests,
            "predict": predict_manifests,
        }
        self.corpus = as_config(corpus, SyntheticCorpusConfig)
        self.featurizer_config = as_config(featurizer, FeaturizerConfig) or FeaturizerConfig()
        self.tokenizer_config = as_config(tokenizer, TokenizerConfig) or TokenizerConfig()
        self.augmentation = as_config(augmentation, AugmentationConfig) or AugmentationConfig()
        self.tokenizer = CharTokenizer(self.tokenizer_config)
        self.featurizer = Featurizer(self.featurizer_config)  # frame arithmetic in the main process
        if time_reduction < 1:
            raise ValueError(f"time_reduction must be >= 1, got {time_reduction}")
        self.time_reduction = time_reduction
        self.batch_size = batch_size
        self.max_batch_frames = max_batch_frames
        self.num_workers = num_workers
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.skip_bad = skip_bad
        self.cache_features = cache_features
        self._feature_cache: dict[str, list[Tensor | str]] = {}
        self.seed = seed
        self.audio_check = audio_check
        #: Epochs iterated in increasing length before shuffled buckets; set by the SortaGrad callback.
        self.sorted_epochs = 0
        self.data: dict[str, ManifestData] = {}
        self._loaders: list[SpeechDataLoader] = []

    # ------------------------------------------------------------ manifests
    def uses_corpus(self, split: str) -> bool:
        """Whether ``split`` comes from the synthetic corpus: it has no manifests (prediction: nor
        test manifests) and either ``corpus`` is set or no manifests are given at all."""
        own = self.manifests[split] or (self.manifests["test"] if split == "predict" else None)
        return not own and (self.corpus is not None or not any(self.manifests.values()))

    def _build_corpus(self) -> CorpusManifests:
        return build_corpus(self.corpus if self.corpus is not None else SyntheticCorpusConfig())

    def manifest_paths(self, split: str) -> list[str]:
        """The manifests of ``split`` (``predict`` falls back to ``test``); builds the corpus if needed."""
        if self.uses_corpus(split):
            built = self._build_corpus()
            return [str(getattr(built, "test" if split == "predict" else split))]
        paths = self.manifests[split] or (self.manifests["test"] if split == "predict" else None)
        if not paths:
            raise ValueError(f"SpeechDataModule: no {split}_manifests given (and no corpus)")
        return [paths] if isinstance(paths, str) else list(paths)

    def prepare_data(self) -> None:
        """Build the synthetic corpus once (rank 0) when a split uses it."""
        if any(self.uses_corpus(split) for split in SPLITS):
            self._build_corpus()

    def setup(self, stage: str | None = None) -> None:
        """Read (and check) the manifests the stage needs; ``None``: every split that has some."""
        available = [
            s for s in SPLITS if self.uses_corpus(s) or self.manifests[s] or (s == "predict" and self.manifests["test"])
        ]
        # fit without validation data is allowed (validation is then requested only if the model has a validation_step)
        splits = available if stage is None else [s for s in STAGE_SPLITS[stage] if s in available or s != "val"]
        for split in splits:
            if split not in self.data:
                self.data[split] = self._read(split)

    def _read(self, split: str) -> ManifestData:
        paths = self.manifest_paths(split)
        data = read_manifests(
            paths,
            self.tokenizer,
            skip_bad=self.skip_bad,
            require_text=split != "predict",
            audio_check=self.audio_check,
        )
        if not data.utterances:
            raise ValueError(
                f"the {split} set is empty: {', '.join(paths)} hold no usable utterance"
                + (f" ({len(data.skipped)} skipped as bad)" if data.skipped else "")
            )
        if split == "train":
            data = self._filter_train(data)
        return data

    def _filter_train(self, data: ManifestData) -> ManifestData:
        """Length filter and the CTC feasibility rule (see the module docstring)."""
        aug = self.augmentation
        fastest = 1.0
        if aug.enabled and WaveformAugmentation.active(aug) and aug.speed_prob > 0:
            fastest *= max(aug.speed_max, 1.0)
        if aug.enabled and aug.stretch_prob > 0:
            fastest *= max(aug.stretch_max, 1.0)
        kept, too_long, too_short, infeasible = [], 0, 0, 0
        for utt in data.utterances:
            if utt.duration > self.max_duration:
                too_long += 1
            elif utt.duration < self.min_duration:
                too_short += 1
            elif self.output_frames(utt.duration / fastest) < ctc_min_frames(utt.tokens):
                infeasible += 1
            else:
                kept.append(utt)
        if too_long or too_short or infeasible:
            rank_zero_info(
                f"training set: kept {len(kept)} of {len(data.utterances)} utterances; dropped {too_long} longer "
                f"than {self.max_duration} s, {too_short} shorter than {self.min_duration} s, {infeasible} too short "
                f"for their transcript under CTC (time reduction {self.time_reduction})"
            )
        if not kept:
            raise ValueError("the training set is empty after length filtering and the CTC length rule")
        return ManifestData(utterances=kept, skipped=data.skipped)

    def output_frames(self, duration: float) -> int:
        """Encoder output frames for ``duration`` seconds of audio (a lower bound: floor division)."""
        samples = math.floor(duration * self.featurizer_config.sample_rate)
        return int(self.featurizer.num_frames(samples)) // self.time_reduction

    def frame_lengths(self, split: str) -> list[int]:
        """Feature frames per utterance of ``split`` (from the manifest durations)."""
        rate = self.featurizer_config.sample_rate
        return [int(self.featurizer.num_frames(math.floor(u.duration * rate))) for u in self.data[split].utterances]

    # ------------------------------------------------------------ loaders
    def _loader(self, split: str) -> SpeechDataLoader:
        if split not in self.data:
            self.data[split] = self._read(split)
        train = split == "train"
        dataset = SpeechDataset(
            self.data[split].utterances,
            self.featurizer_config,
            train=train,
            augmentation=self.augmentation if train else None,
            time_reduction=self.time_reduction,
            skip_bad=self.skip_bad,
        )
        if self.cache_features:
            if split not in self._feature_cache:
                rank_zero_info(f"caching the {split} features ({len(dataset)} utterances)")
                dataset.cache_features(self.num_workers)
                self._feature_cache[split] = dataset.cached_features
            dataset.cached_features = self._feature_cache[split]
        sampler = BucketingBatchSampler(
            self.frame_lengths(split),
            batch_size=self.batch_size,
            max_batch_frames=self.max_batch_frames,
            shuffle=train,
            sorted_epochs=self.sorted_epochs,
            pad_replicas=train,
            seed=self.seed,
        )
        loader = SpeechDataLoader(
            dataset,
            sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        self._loaders.append(loader)
        return loader

    def train_dataloader(self) -> SpeechDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> SpeechDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> SpeechDataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """A plain DataLoader in manifest order: Lightning re-wraps prediction loaders to track
        indices (and shards them with its DistributedSampler). Utterances skipped with
        ``skip_bad`` are listed under the batch's ``skipped`` key."""
        if "predict" not in self.data:
            self.data["predict"] = self._read("predict")
        dataset = SpeechDataset(self.data["predict"].utterances, self.featurizer_config, skip_bad=self.skip_bad)
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_speech, num_workers=self.num_workers)

    def teardown(self, stage: str | None = None) -> None:
        """Report the utterances skipped while loading (bad audio; training audio shorter than its
        manifest duration promised, or shortened by augmentation, so that CTC would be infeasible)."""
        skipped = [msg for loader in self._loaders for msg in loader.skipped]
        infeasible = sum(loader.infeasible for loader in self._loaders)
        if skipped:
            report_skipped(skipped, what="utterance(s) whose audio could not be decoded")
            rank_zero_warn(f"skipped {len(skipped)} utterance(s) whose audio could not be decoded (skip_bad)")
        if infeasible:
            rank_zero_warn(
                f"dropped {infeasible} training utterance(s) whose (augmented) audio was too short for the "
                "transcript under CTC; check the manifest durations if this is frequent"
            )
        for loader in self._loaders:
            loader.skipped.clear()
            loader.infeasible = 0
