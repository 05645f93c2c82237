"""callbacks of zoo (installed as zoo.callbacks)."""

from zoo.callbacks.ctc_alignment import PlotCTCAlignment
from zoo.callbacks.fastest_precision import FastestPrecision
from zoo.callbacks.layerwise_monitor import LayerwiseMonitor
from zoo.callbacks.loss_scaling import LossScaling
from zoo.callbacks.plots import PlotMetrics
from zoo.callbacks.publish_to_hub import PublishToHub
from zoo.callbacks.resume import AtomicCheckpointIO, ResumableCheckpoint, ResumableRNG
from zoo.callbacks.time_budget import DecayOverTimeBudget

__all__ = [
    "AtomicCheckpointIO",
    "DecayOverTimeBudget",
    "FastestPrecision",
    "LayerwiseMonitor",
    "LossScaling",
    "PlotCTCAlignment",
    "PlotMetrics",
    "PublishToHub",
    "ResumableCheckpoint",
    "ResumableRNG",
]
