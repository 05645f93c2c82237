"""CTC speech recognition as one LightningModule for every zoo speech encoder.

Any encoder following the zoo speech encoder protocol (Jasper/QuartzNet, DeepSpeech2) plugs in by
registry name or dotted class path. The loss is CTC (Graves et al. 2006) computed in fp32 even under
bf16/fp16 autocast; validation and test log corpus-level WER and CER (torchmetrics); beam search with
a lexicon and an n-gram LM (torchaudio's flashlight decoder) is selectable at test/predict time.

Infeasible alignments: CTC needs ``T' >= L + (number of repeated adjacent labels)`` output frames.
Utterances that cannot align are *filtered* here (counted and logged as ``<stage>/infeasible``; the
training DataModule already drops them, validation/test keep them), and ``zero_infinity=True``
stays on as a safety net so an infinite loss can never put NaN/inf into the gradients. A batch
whose loss is still non-finite is skipped with a warning (``train/skipped_batches``), never stepped on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.text import CharErrorRate, WordErrorRate

from zoo.config import as_config
from zoo.lightning_modules.attached_data import attached_datamodule
from zoo.lightning_modules.optimization import configure_optimizers
from zoo.registry import build_config, model_to_dict
from zoo.speech.ctc import ctc_feasible
from zoo.speech.decoding import BeamSearchConfig, BeamSearchDecoder, greedy_decode
from zoo.speech.features import Featurizer, FeaturizerConfig
from zoo.speech.recognizer import SpeechRecognizer
from zoo.speech.tokenizer import CharTokenizer, TokenizerConfig


def encoder_time_reduction(encoder: str, encoder_overrides: dict[str, Any] | None = None) -> int:
    """Output-frame stride of an encoder (``T' = ceil(T / r)``), read from the module itself: it is built
    on the meta device (no memory, no initialisation), so the rule lives only in the encoder's class."""
    cls, config = build_config(encoder, encoder_overrides)
    with torch.device("meta"):
        return int(cls(config).time_reduction)


class CTCSpeechRecognizer(LightningModule):
    """Speech encoder + CTC loss + greedy/beam decoding + WER/CER.

    Args:
        encoder: registry name (``"jasper-demo"``, ``"quartznet-15x5"``, ...) or dotted class path.
        encoder_overrides: config fields to override; ``in_features`` and ``num_classes`` are set
            from the featurizer and tokenizer (and ``bigram_outputs``, which only encoders with that
            field have, e.g. DeepSpeech2, when the tokenizer has ``bigrams: true``).
        featurizer: feature settings; None adopts the DataModule's in ``setup()`` (then written to
            the hyperparameters, so checkpoints are self-contained).
        tokenizer: tokenizer settings; None adopts the DataModule's likewise.
            With ``bigrams: true`` the labels are DS2's non-overlapping character bigrams (§3.6).
        optimizer: optimizer factory (LightningCLI: ``class_path: zoo.optim.NovoGrad`` ...).
        lr_scheduler: schedule factory stepped every optimizer step, or None.
        beam_search: if set, test logs beam-search WER/CER too (``test/wer_beam``) and
            ``predict_step`` decodes with beam search; None: greedy only.
        skip_bad: drop utterances with non-finite features (counted) instead of raising.
    """

    def __init__(
        self,
        encoder: str = "jasper-demo",
        encoder_overrides: dict[str, Any] | None = None,
        featurizer: FeaturizerConfig | None = None,
        tokenizer: TokenizerConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        beam_search: BeamSearchConfig | None = None,
        skip_bad: bool = False,
    ) -> None:
        super().__init__()
        # beam_search is a decoding-time choice, not a hyperparameter: kept out of checkpoints so that
        # `zoo test --ckpt_path ... --model.init_args.beam_search.lexicon ...` is not overridden by them
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "beam_search"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.featurizer_config: FeaturizerConfig | None = as_config(featurizer, FeaturizerConfig)
        self.tokenizer_config: TokenizerConfig | None = as_config(tokenizer, TokenizerConfig)
        self.beam_search_config: BeamSearchConfig | None = as_config(beam_search, BeamSearchConfig)
        # plain dicts in the checkpoint: loadable with weights_only=True
        for key, value in (("featurizer", self.featurizer_config), ("tokenizer", self.tokenizer_config)):
            self.hparams[key] = dataclasses.asdict(value) if value is not None else None
        self.skip_bad = skip_bad
        self.encoder: torch.nn.Module | None = None
        self.tokenizer: CharTokenizer | None = None
        self._beam: BeamSearchDecoder | None = None
        self.val_wer, self.val_cer = WordErrorRate(), CharErrorRate()
        self.test_wer, self.test_cer = WordErrorRate(), CharErrorRate()
        self.test_wer_beam, self.test_cer_beam = WordErrorRate(), CharErrorRate()
        if self.featurizer_config is not None and self.tokenizer_config is not None:
            self._build()

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        self.tokenizer = CharTokenizer(self.tokenizer_config)
        num_features = Featurizer(self.featurizer_config).num_features
        overrides = dict(self.hparams.encoder_overrides or {})
        from_data: dict[str, Any] = {"in_features": num_features, "num_classes": self.tokenizer.unigram_size}
        _, defaults = build_config(self.hparams.encoder)
        if self.tokenizer_config.bigrams:
            if not hasattr(defaults, "bigram_outputs"):
                raise ValueError(
                    f"tokenizer.bigrams needs an encoder with bigram outputs (e.g. DeepSpeech2); "
                    f"{self.hparams.encoder} has none"
                )
            from_data["bigram_outputs"] = True
        elif hasattr(defaults, "bigram_outputs"):
            from_data["bigram_outputs"] = False
        for key, value in from_data.items():
            if overrides.setdefault(key, value) != value:
                raise ValueError(f"encoder_overrides.{key}={overrides[key]} contradicts the data ({value})")
        cls, config = build_config(self.hparams.encoder, overrides)
        self.encoder = cls(config)
        outputs = getattr(self.encoder, "num_outputs", config.num_classes)
        if outputs != self.tokenizer.vocab_size:
            raise ValueError(
                f"encoder {self.hparams.encoder} has {outputs} outputs, "
                f"the tokenizer {self.tokenizer.vocab_size} labels"
            )

    def configure_model(self) -> None:
        """Build the encoder from the DataModule's featurizer and tokenizer settings when none were given:
        Lightning's hook for modules built from the data, called before any callback copies the module
        (``EMAWeightAveraging`` does in its own ``setup``). Idempotent."""
        dm = attached_datamodule(self)
        if self.encoder is None:
            if dm is None or not hasattr(dm, "featurizer_config") or not hasattr(dm, "tokenizer_config"):
                raise ValueError(
                    "CTCSpeechRecognizer needs `featurizer` and `tokenizer` settings, "
                    "either as init args or from a speech DataModule"
                )
            self.featurizer_config = self.featurizer_config or dm.featurizer_config
            self.tokenizer_config = self.tokenizer_config or dm.tokenizer_config
            self.hparams["featurizer"] = dataclasses.asdict(self.featurizer_config)
            self.hparams["tokenizer"] = dataclasses.asdict(self.tokenizer_config)
            self._build()

    def setup(self, stage: str) -> None:
        self.configure_model()
        dm = attached_datamodule(self)
        reduction = getattr(dm, "time_reduction", None)
        if reduction is not None and reduction != self.encoder.time_reduction:
            raise ValueError(
                f"DataModule time_reduction={reduction} but encoder {self.hparams.encoder} "
                f"reduces time by {self.encoder.time_reduction}; set data.time_reduction accordingly"
            )
        theirs = getattr(dm, "tokenizer_config", None)
        labels = ("alphabet", "bigrams")  # what fixes the target ids
        if theirs is not None and any(getattr(theirs, k) != getattr(self.tokenizer_config, k) for k in labels):
            raise ValueError(
                f"the DataModule's tokenizer (alphabet={theirs.alphabet!r}, bigrams={theirs.bigrams}) "
                f"differs from the model's (alphabet={self.tokenizer_config.alphabet!r}, "
                f"bigrams={self.tokenizer_config.bigrams}): the targets would not match the outputs"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = checkpoint.get("hyper_parameters", {})
        if "encoder" not in hp:
            raise ValueError("checkpoint has no 'encoder' hyperparameter: not a CTCSpeechRecognizer checkpoint")
        mine = (self.hparams.encoder, self.hparams.encoder_overrides or {})
        theirs = (hp["encoder"], hp.get("encoder_overrides") or {})
        strip = ("in_features", "num_classes", "bigram_outputs")
        if (mine[0], {k: v for k, v in mine[1].items() if k not in strip}) != (
            theirs[0],
            {k: v for k, v in theirs[1].items() if k not in strip},
        ):
            raise ValueError(
                f"checkpoint was trained with encoder {theirs[0]} {theirs[1]}, but this module is {mine[0]} {mine[1]}"
            )

    def to_pipeline(self) -> SpeechRecognizer:
        """The exported unit: featurizer settings + a copy of the encoder + tokenizer settings
        (+ the beam-search settings, if any). See :mod:`zoo.hub` for the checkpoint protocol."""
        recognizer = SpeechRecognizer(
            featurizer=dataclasses.asdict(self.featurizer_config),
            encoder=model_to_dict(self.encoder),
            tokenizer=dataclasses.asdict(self.tokenizer_config),
            beam_search=dataclasses.asdict(self.beam_search_config) if self.beam_search_config else None,
        )
        recognizer.encoder.load_state_dict(self.encoder.state_dict())
        if self._trainer is not None:  # trained or tested in this process: the card reports what it measured
            from zoo.checkpoints import card_info_from_trainer

            recognizer.card_info = card_info_from_trainer(self._trainer)
        return recognizer.eval()

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)

    # ------------------------------------------------------------------ decoding
    def set_beam_search(self, config: BeamSearchConfig | dict | None) -> None:
        """Switch beam-search decoding for test/predict (None: greedy only)."""
        self.beam_search_config = as_config(config, BeamSearchConfig)
        self._beam = None

    def beam_decoder(self) -> BeamSearchDecoder | None:
        if self.beam_search_config is not None and self._beam is None:
            self._beam = BeamSearchDecoder(
                self.tokenizer.labels, self.beam_search_config, self.tokenizer.blank, spell=self.tokenizer.segment
            )
        return self._beam

    def greedy_texts(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in greedy_decode(log_probs, lengths, self.tokenizer.blank)]

    # ------------------------------------------------------------------ steps
    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, F, T), lengths (B,) -> fp32 log-probabilities (B, T', V), out_lengths (B,)."""
        logits, out_lengths = self.encoder(features, lengths)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = logits.float().log_softmax(dim=-1)
        return log_probs, out_lengths

    def _drop_bad(self, batch: dict[str, Any], stage: str) -> dict[str, Any] | None:
        finite = torch.isfinite(batch["features"]).flatten(1).all(dim=1)
        if bool(finite.all()):
            return batch
        bad = [batch["ids"][i] for i in (~finite).nonzero().squeeze(1).tolist()]
        if not self.skip_bad:
            raise ValueError(f"non-finite (NaN/inf) features in {bad}; fix the audio or set skip_bad: true")
        rank_zero_warn(f"{stage}: skipping {len(bad)} utterance(s) with non-finite features: {bad}")
        self.log(
            f"{stage}/skipped_utterances",
            float(len(bad)),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            batch_size=len(bad),
        )
        keep = finite.nonzero().squeeze(1)
        if keep.numel() == 0:
            return None
        out = {k: (v[keep] if isinstance(v, Tensor) else [v[i] for i in keep.tolist()]) for k, v in batch.items()}
        return out

    def _common_step(self, batch: dict[str, Any], stage: str) -> tuple[Tensor | None, Tensor, Tensor, dict] | None:
        """Loss (mean over feasible utterances of CTC / target length), log-probs, lengths, batch."""
        batch = self._drop_bad(batch, stage)
        if batch is None:
            return None
        log_probs, out_lengths = self(batch["features"], batch["feature_lengths"])
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),
            targets,
            out_lengths,
            target_lengths,
            blank=self.tokenizer.blank,
            reduction="none",
            zero_infinity=True,
        )
        feasible = ctc_feasible(out_lengths, targets, target_lengths)
        n_bad = int((~feasible).sum())
        if n_bad:
            self.log(
                f"{stage}/infeasible",
                float(n_bad),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                batch_size=len(targets),
            )
        loss = None
        if bool(feasible.any()):
            loss = (losses[feasible] / target_lengths[feasible].clamp(min=1)).mean()
            self.log(
                f"{stage}/loss",
                loss,
                on_step=stage == "train",
                on_epoch=True,
                prog_bar=stage == "train",
                batch_size=int(feasible.sum()),
                sync_dist=stage != "train",
            )
        return loss, log_probs, out_lengths, batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        result = self._common_step(batch, "train")
        loss = None if result is None else result[0]
        if loss is None or not torch.isfinite(loss):
            rank_zero_warn(f"train batch {batch_idx}: no finite loss (non-finite or nothing alignable); step skipped")
            self.log("train/skipped_batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
            return None
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        result = self._common_step(batch, stage)
        if result is None:
            return
        _, log_probs, out_lengths, batch = result
        references = batch["texts"]
        wer, cer = (self.val_wer, self.val_cer) if stage == "val" else (self.test_wer, self.test_cer)
        hypotheses = self.greedy_texts(log_probs, out_lengths)
        wer.update(hypotheses, references)
        cer.update(hypotheses, references)
        self.log(f"{stage}/wer", wer, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(references))
        self.log(f"{stage}/cer", cer, on_step=False, on_epoch=True, batch_size=len(references))
        if stage == "test" and self.beam_decoder() is not None:
            beams = self.beam_decoder()(log_probs, out_lengths)
            self.test_wer_beam.update(beams, references)
            self.test_cer_beam.update(beams, references)
            self.log("test/wer_beam", self.test_wer_beam, on_step=False, on_epoch=True, batch_size=len(references))
            self.log("test/cer_beam", self.test_cer_beam, on_step=False, on_epoch=True, batch_size=len(references))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        """Transcripts of the batch (beam search if configured, else greedy)."""
        batch = self._drop_bad(batch, "predict")
        if batch is None:
            return []
        log_probs, out_lengths = self(batch["features"], batch["feature_lengths"])
        beam = self.beam_decoder()
        return beam(log_probs, out_lengths) if beam is not None else self.greedy_texts(log_probs, out_lengths)

    def on_validation_epoch_end(self) -> None:
        if not self.val_wer.total and self.trainer is not None and not self.trainer.sanity_checking:
            rank_zero_warn("validation set produced no utterances: val/wer not computed")
