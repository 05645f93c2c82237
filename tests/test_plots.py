"""PlotMetrics: the recorded curves are the logged values, and a PNG is written."""

import pytorch_lightning as pl
import torch
from zoo_toys import ToyData, ToyModule

from zoo.callbacks import PlotMetrics


class Recorder(pl.Callback):
    """Independent record of what the module logged."""

    def __init__(self):
        self.train, self.val = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((trainer.global_step, float(outputs["loss"])))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(trainer.callback_metrics["val_mse"])))


def test_curves_png_and_history(tmp_path):
    torch.manual_seed(0)
    plots, recorder = PlotMetrics(output_dir=str(tmp_path / "plots")), Recorder()
    pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[recorder, plots],
    ).fit(ToyModule(), ToyData(n=24))
    png = tmp_path / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert plots.history["val_mse"] == recorder.val and len(recorder.val) == 2
    steps, losses = zip(*plots.history["train_loss"])
    assert list(steps) == [s for s, _ in recorder.train]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([v for _, v in recorder.train]))
