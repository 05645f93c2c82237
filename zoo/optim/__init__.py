"""Optimizers and learning-rate schedules (pure torch)."""

from zoo.optim.lars import LARS
from zoo.optim.novograd import NovoGrad
from zoo.optim.schedules import WarmupCosineLR, WarmupPolynomialLR

__all__ = ["LARS", "NovoGrad", "WarmupCosineLR", "WarmupPolynomialLR"]
