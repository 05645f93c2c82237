"""``LanguageModel``: training and evaluation of every recurrent LM of the zoo.

* Network: a registry preset of :class:`zoo.text.lm.RNNLanguageModel` (``lstm``, ``bnlstm``,
  ``lstmp``, ``flstm``, ``glstm`` cells); ``vocab_size`` comes from the datamodule's vocabulary.
* Truncated BPTT: consecutive batches continue the same rows of text
  (:class:`zoo.datamodules.text.TextDataModule`), so the final hidden state of a batch, detached, is
  the initial state of the next. It is reset to zeros at the first batch of every epoch and of every
  evaluation run, and kept separately for training, validation and test. BN-LSTM statistics are
  indexed by the position within the window (``T_max`` must cover ``bptt``).
* Resuming mid-epoch (``zoo fit --ckpt_path last``): checkpoints hold the carried training state
  (every process's, under DDP) next to the data position saved by the training loader
  (:class:`zoo.datamodules.text.ResumableWindows`), so a resumed run continues exactly as an
  uninterrupted one.
* Loss: full softmax, or in training the **sampled softmax** (log-uniform candidates with the logQ
  correction, accidental hits removed; :mod:`zoo.text.softmax`) with ``num_sampled`` candidates.
  Evaluation always uses the exact full softmax, computed in vocabulary blocks (:func:`chunked_nll`),
  never the full ``tokens × V`` logits.
* Metrics: the summed NLL and the token count are accumulated (torchmetrics ``SumMetric``, synced
  across processes); ``{stage}_loss`` is their ratio (nats per token), ``{stage}_ppl = exp(loss)``,
  ``{stage}_bpc = loss / ln 2`` (bits per character at the char level).
* Gradient clipping: the trainer's ``gradient_clip_val`` (1.0 in the recipes, as the paper).
* Optimizer and schedule from YAML through :mod:`zoo.lightning_modules.optimization`.
* The vocabulary is saved in the checkpoint's hyperparameters (so ``zoo.hub`` rebuilds the module
  from a ``.ckpt`` alone); a checkpoint used with data whose vocabulary differs raises
  :class:`VocabularyMismatchError`.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import SumMetric

from zoo.lightning_modules.attached_data import attached_datamodule
from zoo.lightning_modules.optimization import configure_optimizers
from zoo.registry import create, model_to_dict
from zoo.text.softmax import LogUniformSampler, chunked_nll, sampled_softmax_nll

SOFTMAXES = ("full", "sampled")
STAGES = ("fit", "val", "test")
#: checkpoint entry holding the training state carried to the next batch (resume mid-epoch)
CARRIED_STATE_KEY = "lm_carried_state"


class VocabularyMismatchError(ValueError):
    """The checkpoint's vocabulary is not the data's."""


def vocabulary_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at id {i}: {x!r} vs {y!r}"
    return f"sizes {len(a)} vs {len(b)}"


class LanguageModel(pl.LightningModule):
    """Args:
    network: registry name of an LM preset (``bnlstm-char-small``, ``flstm-1b``, ...).
    network_overrides: config fields to override (``hidden_size``, ``max_length``, ...).
    softmax: ``full`` or ``sampled`` (training only; evaluation is always the full softmax).
    num_sampled: candidates of the sampled softmax (8192 for One Billion Word).
    eval_block_elements: logits computed at once during evaluation (rows × vocabulary block).
    optimizer, lr_scheduler: factories (LightningCLI: ``class_path: torch.optim.Adagrad`` ...).
    vocabulary, level: leave unset for training (taken from the datamodule at ``setup``); they are
        written into the checkpoint's hyperparameters, so a checkpoint rebuilds the network alone.
    """

    def __init__(
        self,
        network: str = "lstm-char-small",
        network_overrides: dict[str, Any] | None = None,
        softmax: str = "full",
        num_sampled: int = 8192,
        eval_block_elements: int = 1 << 24,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        vocabulary: list[str] | None = None,
        level: str = "char",
    ) -> None:
        super().__init__()
        if softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {SOFTMAXES}, got {softmax!r}")
        # the vocabulary goes into checkpoints (on_save_checkpoint), not into the logged hyperparameters
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "vocabulary", "level"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.net = None
        self.vocabulary: list[str] | None = None
        self.level = level
        self.sampler: LogUniformSampler | None = None
        self._state: dict[str, Any] = dict.fromkeys(STAGES)
        self.nll_sum = torch.nn.ModuleDict({s: SumMetric() for s in ("val", "test")})
        self.token_count = torch.nn.ModuleDict({s: SumMetric() for s in ("val", "test")})
        if vocabulary is not None:
            self.attach_vocabulary(vocabulary, "vocabulary argument")

    # -- vocabulary and network -------------------------------------------------------------
    def attach_vocabulary(self, tokens: list[str], source: str) -> None:
        """Build the network for ``tokens`` or check that they are the vocabulary it was built for."""
        tokens = list(tokens)
        if self.vocabulary is None:
            self.vocabulary = tokens
            self.net = create(
                self.hparams.network, **{**(self.hparams.network_overrides or {}), "vocab_size": len(tokens)}
            )
            if self.hparams.softmax == "sampled":
                self.sampler = LogUniformSampler(len(tokens), min(self.hparams.num_sampled, len(tokens)))
        elif tokens != self.vocabulary:
            raise VocabularyMismatchError(
                f"vocabulary mismatch: the model has {len(self.vocabulary)} tokens, the {source} has {len(tokens)} "
                f"({vocabulary_difference(self.vocabulary, tokens)}); use the checkpoint's vocabulary "
                "(data vocab_file) or train a new model"
            )

    def configure_model(self) -> None:
        """Build the network for the DataModule's vocabulary (or check it is the one the network has):
        Lightning's hook for modules sized by the data, called before any callback copies the module
        (``EMAWeightAveraging`` does in its own ``setup``). Idempotent."""
        datamodule = attached_datamodule(self)
        if datamodule is not None and hasattr(datamodule, "vocabulary"):
            self.attach_vocabulary(datamodule.vocabulary, "data")

    def setup(self, stage: str) -> None:
        datamodule = attached_datamodule(self)
        if datamodule is not None and hasattr(datamodule, "vocabulary"):
            datamodule.setup(stage)
            self.configure_model()
            self.level = datamodule.token_level
            config = self.net.config
            if config.cell == "bnlstm" and datamodule.bptt > config.max_length:
                raise ValueError(f"bptt={datamodule.bptt} exceeds the BN-LSTM's max_length={config.max_length} (T_max)")
        if self.net is None:
            raise ValueError(
                "LanguageModel needs a datamodule with a `vocabulary` (or a checkpoint) to build its network"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.setdefault("hyper_parameters", {})
        hparams["vocabulary"] = self.vocabulary
        hparams["level"] = self.level
        state = self._state["fit"]
        if state is not None and self._trainer is not None:
            # every process's carried state (the checkpoint is written by rank 0 only): (world, L, B, H)
            gathered = [self.all_gather(s) if self.trainer.world_size > 1 else s.unsqueeze(0) for s in state]
            checkpoint[CARRIED_STATE_KEY] = [s.cpu() for s in gathered]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.get("hyper_parameters", {})
        if hparams.get("vocabulary") is None:
            raise VocabularyMismatchError("the checkpoint has no vocabulary; it was not written by LanguageModel")
        self.attach_vocabulary(hparams["vocabulary"], "checkpoint")
        self.level = hparams.get("level", self.level)
        self._state["fit"] = None
        saved = checkpoint.get(CARRIED_STATE_KEY)
        if saved is not None and self._trainer is not None:
            if saved[0].shape[0] != self.trainer.world_size:
                rank_zero_warn(
                    f"the checkpoint's carried hidden state is from {saved[0].shape[0]} processes, this run has "
                    f"{self.trainer.world_size}: resuming mid-epoch from a zero state"
                )
            else:
                self._state["fit"] = tuple(s[self.global_rank] for s in saved)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)

    # -- steps ------------------------------------------------------------------------------
    def _carried_state(self, stage: str, batch_idx: int, batch_size: int) -> Any:
        state = self._state[stage]
        if batch_idx == 0 or state is None or state[0].shape[1] != batch_size:
            return None  # zeros: the start of an epoch / evaluation run
        return tuple(s.to(self.device) for s in state)  # (a no-op except after a resume)

    def _nll(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> Tensor:
        inputs, targets = batch["inputs"], batch["targets"]
        hidden, state = self.net(inputs, self._carried_state(stage, batch_idx, inputs.shape[0]))
        self._state[stage] = tuple(s.detach() for s in state)
        h, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        weight, bias = self.net.softmax_weight, self.net.softmax_bias
        if stage != "fit":
            return chunked_nll(h, y, weight, bias, self.hparams.eval_block_elements)
        if self.sampler is not None:
            candidates = self.sampler.sample(device=h.device)
            return sampled_softmax_nll(
                h,
                y,
                weight,
                bias,
                candidates,
                self.sampler.log_expected_count(candidates).to(h.device),
                self.sampler.log_expected_count(y).to(h.device),
            )
        return F.cross_entropy(F.linear(h, weight, bias), y, reduction="none")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nll = self._nll(batch, batch_idx, "fit")
        loss = nll.mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=nll.numel())
        return loss

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        nll = self._nll(batch, batch_idx, stage)
        self.nll_sum[stage].update(nll.sum())
        self.token_count[stage].update(torch.tensor(float(nll.numel()), device=nll.device))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _log_epoch(self, stage: str) -> None:
        count = self.token_count[stage].compute()
        if count == 0:
            return
        loss = self.nll_sum[stage].compute() / count
        self.log_dict(
            {f"{stage}_loss": loss, f"{stage}_ppl": torch.exp(loss), f"{stage}_bpc": loss / math.log(2)}, prog_bar=True
        )
        self.nll_sum[stage].reset()
        self.token_count[stage].reset()

    def on_train_epoch_start(self) -> None:
        self._state["fit"] = None

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- export -----------------------------------------------------------------------------
    def to_pipeline(self):
        """The trained network as a :class:`~zoo.text.pipeline.LanguageModelPipeline` (CPU, eval mode)."""
        from zoo.text.pipeline import LanguageModelPipeline

        pipeline = LanguageModelPipeline(network=model_to_dict(self.net), vocabulary=self.vocabulary, level=self.level)
        pipeline.net.load_state_dict({k: v.detach().cpu() for k, v in self.net.state_dict().items()})
        return pipeline.eval()
