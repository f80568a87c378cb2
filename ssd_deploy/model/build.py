"""ssd.pytorch's ``build_ssd``: a network (:mod:`.ssd`) with weights loaded (:mod:`.weights`) or seeded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ..config import SSDConfig, make_config
from .ssd import PHASES, SIZES, SSD, init_weights, warn_untrained
from .weights import load_weights


def build_ssd(
    phase: str,
    size: int | None = None,
    num_classes: int | None = None,
    *,
    dataset: str = "voc",
    config: SSDConfig | None = None,
    weights: str | Path | Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> SSD:
    """ssd.pytorch's ``build_ssd(phase, size=300, num_classes=21)`` with explicit config choices.

    Without ``config`` the model uses ``make_config(size or 300, dataset, num_classes)``: the prior
    layout follows ``dataset`` (``voc``/``coco``), never the class count. With ``config`` it is the
    single source of facts and ``size``/``num_classes``, if given, must agree with it.
    Weights are seeded (:func:`init_weights`); pass ``weights`` (a checkpoint path or state dict) to
    load them, otherwise an :class:`UntrainedWeightsWarning` says the detections are meaningless.
    """
    if phase not in PHASES:
        raise ValueError(f"build_ssd: phase must be 'train' or 'test', got {phase!r}")
    if config is None:
        size = 300 if size is None else size
        if size not in SIZES:
            raise ValueError(f"build_ssd: size must be 300 or 512, got {size!r}")
        config = make_config(size=size, dataset=dataset, num_classes=num_classes)
    else:
        if size is not None and size != config.size:
            raise ValueError(f"build_ssd: size={size} conflicts with config.size={config.size}")
        if num_classes is not None and num_classes != config.num_classes:
            raise ValueError(
                f"build_ssd: num_classes={num_classes} conflicts with config.num_classes={config.num_classes}"
            )
        if config.size not in SIZES:
            raise ValueError(f"build_ssd: size must be 300 or 512, got {config.size!r}")
    model = init_weights(SSD(phase, config), seed)
    if weights is None:
        warn_untrained(f"SSD{config.size} ({config.num_classes} classes)")
    else:
        load_weights(model, weights)
    if phase == "test":
        model.eval()
    return model
