"""A picture of what a CTC speech model hears: one validation utterance's features with the forced
alignment of its transcript, and the per-frame posteriors, written at every validation run.

``zoo fit --config jasper_demo --trainer.callbacks+=zoo.callbacks.PlotCTCAlignment``
writes ``ctc_alignment-step<N>.png`` into ``output_dir`` (default ``<log dir>/plots``):

* top: the utterance's features (log-mel or spectrogram, feature frames on x), with the output
  frames each transcript character occupies on the best CTC path (Viterbi forced alignment,
  :func:`zoo.speech.alignment.ctc_forced_alignment`) marked (a line where it starts, the character
  above its span);
* bottom: per output frame, the posterior of the blank, of the most likely label (its character
  written above it when it is not the blank) and of the label the alignment puts there.

The utterance comes from the first validation batch (``features``, ``feature_lengths``,
``targets``, ``target_lengths``, ``texts``); the module only needs the speech protocol
``forward(features, lengths) -> (log_probs, out_lengths)`` and a ``tokenizer`` (``labels``,
``blank``). One extra forward pass of one utterance and one figure per validation run, on global rank 0.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from zoo.speech.alignment import AlignedToken, ctc_forced_alignment
from zoo.speech.ctc import ctc_min_frames
from zoo.speech.decoding import greedy_decode

FIGSIZE, DPI = (10.0, 6.0), 100  # -> 1000 x 600 pixels


def _shown(label: str) -> str:
    return "_" if label == " " else label


def plot_ctc_alignment(
    features: Tensor,
    log_probs: Tensor,
    tokens: Tensor,
    labels: list[str],
    path: str | Path,
    blank: int = 0,
    title: str = "",
) -> list[AlignedToken] | None:
    """Draw the figure described in the module docstring into ``path`` (PNG, 1000 x 600).

    Args:
        features: (F, T) one utterance's features (unpadded).
        log_probs: (T', V) its output log-posteriors (unpadded); output frame ``t`` covers feature
            frames ``[t T / T', (t + 1) T / T')``.
        tokens: (L,) its transcript's label ids.
        labels: id -> text of every label.

    Returns:
        the aligned transcript labels, or None when no CTC path exists (too few output frames).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features, log_probs = features.detach().float().cpu(), log_probs.detach().float().cpu()
    num_frames, num_outputs = features.shape[1], log_probs.shape[0]
    scale = num_frames / num_outputs
    aligned, path_labels = None, None
    if log_probs.shape[0] >= ctc_min_frames(tokens):
        path_labels, aligned = ctc_forced_alignment(log_probs, tokens, blank)
    probs = log_probs.exp()
    centres = (torch.arange(num_outputs) + 0.5) * scale

    fig, (top, bottom) = plt.subplots(2, 1, figsize=FIGSIZE, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.imshow(
        features.numpy(),
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        extent=(0, num_frames, 0, features.shape[0]),
    )
    top.set_ylabel("feature bin")
    for token in aligned or []:
        start, end = token.start * scale, token.end * scale
        top.axvline(start, color="white", linewidth=0.6, alpha=0.7)
        top.text(
            (start + end) / 2,
            features.shape[0] * 0.98,
            _shown(labels[token.label]),
            ha="center",
            va="top",
            color="white",
            fontsize=10,
            fontweight="bold",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"},
        )
    top.set_title(title + ("" if aligned is not None else "  (no CTC path: too few output frames)"), fontsize=10)

    best = probs.argmax(dim=1)
    bottom.plot(centres, probs[:, blank], color="0.6", label="blank")
    bottom.plot(centres, probs.max(dim=1).values, color="tab:blue", linewidth=1, label="argmax")
    for t in (best != blank).nonzero().squeeze(1).tolist():
        bottom.text(
            float(centres[t]),
            float(probs[t, best[t]]) + 0.03,
            _shown(labels[int(best[t])]),
            ha="center",
            va="bottom",
            fontsize=7,
            color="tab:blue",
        )
    if path_labels is not None:
        on_path = probs.gather(1, path_labels[:, None]).squeeze(1)
        bottom.step(centres, on_path, where="mid", color="tab:orange", linewidth=1, label="aligned label")
    bottom.set_ylim(0, 1.15)
    bottom.set_xlim(0, num_frames)
    bottom.set_xlabel("feature frame")
    bottom.set_ylabel("posterior")
    bottom.legend(loc="upper right", fontsize=7, ncol=3)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=0.95, hspace=0.06)  # (tight_layout: 3x slower)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return aligned


class PlotCTCAlignment(Callback):
    """Args:
    output_dir: where to write the PNGs (default ``<trainer.log_dir or default_root_dir>/plots``).
    utterance: which utterance of the first validation batch to draw.
    every_n_validations: draw at every n-th validation run.
    """

    def __init__(self, output_dir: str | None = None, utterance: int = 0, every_n_validations: int = 1) -> None:
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.output_dir = output_dir
        self.utterance = utterance
        self.every_n_validations = every_n_validations
        self.validations = 0
        self.paths: list[Path] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "tokenizer"):
            raise TypeError(
                f"PlotCTCAlignment needs a CTC speech module with a `tokenizer`, got {type(pl_module).__name__}"
            )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        self.validations += 1
        if not trainer.is_global_zero or (self.validations - 1) % self.every_n_validations:
            return
        i = min(self.utterance, len(batch["feature_lengths"]) - 1)
        length = batch["feature_lengths"][i : i + 1]
        features = batch["features"][i : i + 1, :, : int(length)]
        log_probs, out_lengths = pl_module(features, length)
        log_probs = log_probs[0, : int(out_lengths[0])]
        tokens = batch["targets"][i, : int(batch["target_lengths"][i])]
        tokenizer = pl_module.tokenizer
        hypothesis = tokenizer.decode(greedy_decode(log_probs[None], out_lengths[:1], tokenizer.blank)[0])
        folder = (
            Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or trainer.default_root_dir) / "plots"
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"ctc_alignment-step{trainer.global_step:06d}.png"
        title = f"step {trainer.global_step}   reference: {batch['texts'][i]!r}   greedy: {hypothesis!r}"
        plot_ctc_alignment(features[0], log_probs, tokens, tokenizer.labels, path, tokenizer.blank, title)
        self.paths.append(path)
        rank_zero_info(f"PlotCTCAlignment: wrote {path}")
