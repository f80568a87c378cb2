"""PyTorch reference backend: the eager model, for checks and as the benchmark baseline."""

from .backend import TorchBackend

__all__ = ["TorchBackend"]
