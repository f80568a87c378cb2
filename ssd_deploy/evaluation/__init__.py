"""Detection accuracy of artifacts on VOC and COCO data (``ssd-eval``), beside their PyTorch reference.

The runtime stays torch-free: the reference (PyTorch) is only imported when asked for.
"""

from .datasets import (
    COCO_CATEGORY_IDS,
    DatasetError,
    DetectionSet,
    EvalDataset,
    ImageRecord,
    label_map,
    load_coco,
    load_dataset,
    load_voc,
    read_detections,
    write_detections,
)
from .voc import METRIC_TITLES, VOC_METRICS, MetricResult, evaluate_voc, voc_ap

__all__ = [
    "COCO_CATEGORY_IDS",
    "METRIC_TITLES",
    "VOC_METRICS",
    "DatasetError",
    "DetectionSet",
    "EvalDataset",
    "ImageRecord",
    "MetricResult",
    "evaluate_voc",
    "label_map",
    "load_coco",
    "load_dataset",
    "load_voc",
    "read_detections",
    "voc_ap",
    "write_detections",
]
