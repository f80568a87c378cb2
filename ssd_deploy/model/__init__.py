"""PyTorch side of ssd_deploy: the SSD network, checkpoint loading and the reference Detect.

Everything here needs torch; the runtime path (``ssd_deploy.runtime``, ``ops``) never imports it.
"""

from .build import build_ssd
from .checkpoint import TORCHVISION_DETECT, config_for_checkpoint
from .ssd import (
    SSD,
    L2Norm,
    UntrainedWeightsWarning,
    count_parameters,
    init_weights,
    warn_untrained,
)
from .weights import (
    LoadReport,
    WeightsError,
    detect_format,
    infer_layout,
    load_state_dict,
    load_weights,
    model_from_checkpoint,
)

__all__ = [
    "SSD",
    "L2Norm",
    "UntrainedWeightsWarning",
    "build_ssd",
    "count_parameters",
    "init_weights",
    "warn_untrained",
    "LoadReport",
    "WeightsError",
    "detect_format",
    "infer_layout",
    "load_state_dict",
    "load_weights",
    "model_from_checkpoint",
    "config_for_checkpoint",
    "TORCHVISION_DETECT",
]
