"""The zoo's real task modules with probes for the DDP tests (tests/test_ddp.py): each rank records the
data it trained and validated on and the metrics it logged, and writes them to
``$ZOO_DDP_REPORT_DIR/<name>-rank<r>.json`` at the end of fit. Importable as ``ddp_probes``
(the test puts tests/ on PYTHONPATH for the ``zoo fit`` subprocesses)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from zoo.lightning_modules.ctc_speech_recognizer import CTCSpeechRecognizer
from zoo.lightning_modules.language_model import LanguageModel


def _write(module, name: str, report: dict) -> None:
    report.update(rank=module.global_rank, world_size=module.trainer.world_size)
    folder = Path(os.environ["ZOO_DDP_REPORT_DIR"])
    (folder / f"{name}-rank{module.global_rank}.json").write_text(json.dumps(report))


def _metric(module, key: str) -> float:
    return float(module.trainer.callback_metrics[key])


class SpeechProbe(CTCSpeechRecognizer):
    """Records the utterance ids of every training batch, and per validation utterance its id,
    reference and greedy hypothesis (as the WER metric saw them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_train: list[str] = []
        self.seen_val: list[str] = []
        self.references: list[str] = []
        self.hypotheses: list[str] = []
        self._decoded: list[str] = []

    def greedy_texts(self, log_probs, lengths):
        self._decoded = super().greedy_texts(log_probs, lengths)
        return self._decoded

    def training_step(self, batch, batch_idx):
        self.seen_train += batch["ids"]
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.seen_val += batch["ids"]
        self.references += batch["texts"]
        self.hypotheses += self._decoded

    def on_fit_end(self):
        _write(
            self,
            "speech",
            {
                "seen_train": self.seen_train,
                "seen_val": self.seen_val,
                "references": self.references,
                "hypotheses": self.hypotheses,
                "val_wer": _metric(self, "val/wer"),
                "val_cer": _metric(self, "val/cer"),
            },
        )


class LanguageModelProbe(LanguageModel):
    """Records the token rows of every training batch (in order) and the local validation NLL sum and
    token count; rank 0 also saves the trained network (``lm-net.pt``) for a single-process reference."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_windows: list[list[list[int]]] = []
        self.local_nll, self.local_tokens = 0.0, 0

    def training_step(self, batch, batch_idx):
        self.train_windows.append(batch["inputs"].tolist())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        before = float(self.nll_sum["val"].sum_value)
        super().validation_step(batch, batch_idx)
        self.local_nll += float(self.nll_sum["val"].sum_value) - before
        self.local_tokens += batch["targets"].numel()

    def on_fit_end(self):
        if self.global_rank == 0:
            torch.save(self.net.state_dict(), Path(os.environ["ZOO_DDP_REPORT_DIR"]) / "lm-net.pt")
        _write(
            self,
            "lm",
            {
                "train_windows": self.train_windows,
                "local_nll": self.local_nll,
                "local_tokens": self.local_tokens,
                "vocabulary": self.vocabulary,
                "val_loss": _metric(self, "val_loss"),
                "val_ppl": _metric(self, "val_ppl"),
            },
        )
