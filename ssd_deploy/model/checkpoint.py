"""The one place that turns a checkpoint into an :class:`~ssd_deploy.config.SSDConfig`.

A checkpoint's format decides the facts the file does not store (docs/checkpoints.md): the prior
layout and how it is clipped, the class names, the channel order and mean of the input, and the
Detect post-process. The export CLI, :func:`~ssd_deploy.model.weights.model_from_checkpoint` (and
so ``Detector.load("x.pth")``, the PyTorch backend and ``ssd-check --weights``) all ask
:func:`config_for_checkpoint`; explicit keyword arguments override what the format implies.

* ssd.pytorch files and the ``vgg16_reducedfc`` base: ssd.pytorch's semantics exactly (priors of
  the dataset, all four prior values clipped, RGB mean (123, 117, 104), Detect with 200 candidates
  per class, no per-image cap, no box clipping).
* torchvision ``ssd300_vgg16``: COCO-300 priors with only w/h clipped, torchvision's 91 category-id
  labels ('N/A' for the ten unused ids), RGB with torchvision's mean (0.48235, 0.45882, 0.40784)
  x 255, and its post-process: 400 candidates per class, boxes clipped to the image before NMS,
  dw/dh clamped at log(1000/16), 200 detections per image (:data:`TORCHVISION_DETECT`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..config import PRIOR_CONFIGS, DetectParams, SSDConfig, make_config
from .weights import (
    FORMAT_TORCHVISION,
    FORMAT_VGG_BASE,
    TORCHVISION_COCO_CATEGORIES,
    WeightsError,
    _unwrap,
    detect_format,
    infer_layout,
    load_state_dict,
)

__all__ = [
    "TORCHVISION_DETECT",
    "TORCHVISION_MEAN",
    "TORCHVISION_WH_CLAMP",
    "CheckpointConfig",
    "check_torchvision_heads",
    "config_for_checkpoint",
    "config_for_state_dict",
    "describe_detect",
]

#: torchvision's ``BoxCoder`` default ``bbox_xform_clip``: dw/dh are clamped at this before ``exp``.
TORCHVISION_WH_CLAMP = math.log(1000.0 / 16)
#: torchvision ``SSD`` defaults: score > 0.01, 400 candidates per class, NMS IoU 0.45, 200 per
#: image; boxes clipped to the image before NMS; its ``nms`` keeps a candidate whose IoU is NaN.
TORCHVISION_DETECT = DetectParams(
    conf_thresh=0.01, nms_thresh=0.45, top_k=400, keep_top_k=200,
    clip_boxes=True, wh_clamp=TORCHVISION_WH_CLAMP, nms_nan_suppresses=False,
)  # fmt: skip
#: ``ssd300_vgg16`` normalises 0..1 pixels with mean (0.48235, 0.45882, 0.40784) and std 1/255,
#: which is subtracting this mean from 0..255 pixels.
TORCHVISION_MEAN = (122.99925, 116.9991, 103.9992)
#: Its ``DefaultBoxGenerator`` scales (0.07 .. 1.05) x 300 are the COCO-300 prior sizes.
_TORCHVISION_PRIOR = "coco300"
_TV_HEADS = ("classification_head", "regression_head")


@dataclass(frozen=True)
class CheckpointConfig:
    """What :func:`config_for_state_dict` found: the config, the file's format and its state dict."""

    config: SSDConfig
    format: str
    state_dict: dict[str, Tensor]


def check_torchvision_heads(sd: Mapping[str, Tensor], name: str, size: int = 300) -> int:
    """The class count of a torchvision state dict, after checking all its head tensors.

    Every ``head.{classification,regression}_head.module_list.{k}.{weight,bias}`` must be present
    with ``A_k * classes`` (or ``A_k * 4``) outputs, the same class count at every source. Raises a
    one-line :class:`WeightsError` naming the tensor and its shape otherwise.
    """
    anchors = PRIOR_CONFIGS[f"coco{size}"].boxes_per_location
    key0 = "head.classification_head.module_list.0.weight"
    w0 = sd.get(key0)
    if w0 is None:
        raise WeightsError(f"{name}: torchvision head tensor {key0} is missing")
    if w0.ndim != 4 or w0.shape[0] % anchors[0]:
        raise WeightsError(
            f"{name}: {key0} has shape {tuple(w0.shape)}; its outputs must be {anchors[0]} anchors x classes"
        )
    classes = w0.shape[0] // anchors[0]
    for head in _TV_HEADS:
        per_anchor = classes if head == "classification_head" else 4
        for k, a in enumerate(anchors):
            for part in ("weight", "bias"):
                key = f"head.{head}.module_list.{k}.{part}"
                t = sd.get(key)
                want = a * per_anchor
                if t is None:
                    raise WeightsError(
                        f"{name}: torchvision head tensor {key} is missing (expected {want} outputs)"
                    )
                if t.ndim != (4 if part == "weight" else 1) or t.shape[0] != want:
                    what = f"{classes} classes" if per_anchor == classes else "4 box offsets"
                    raise WeightsError(
                        f"{name}: {key} has shape {tuple(t.shape)}, expected {want} outputs "
                        f"({a} anchors x {what}, as {key0} {tuple(w0.shape)} implies)"
                    )
    return classes


def config_for_state_dict(
    sd: Mapping[str, Tensor],
    name: str = "<state dict>",
    *,
    dataset: str | None = None,
    size: int | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> CheckpointConfig:
    """:func:`config_for_checkpoint` for an already-loaded state dict (``name`` is used in errors)."""
    raw = _unwrap(sd, name)
    fmt = detect_format(raw, name)
    if fmt == FORMAT_VGG_BASE:
        size = 300 if size is None else size
        if num_classes is None:
            num_classes = 21 if dataset in (None, "voc") else 81
    else:
        if fmt == FORMAT_TORCHVISION:
            check_torchvision_heads(raw, name)
        file_size, file_classes = infer_layout(raw, name)
        if size is not None and size != file_size:
            raise WeightsError(f"{name}: the file is SSD{file_size}, size={size} was asked for")
        if num_classes is not None and num_classes != file_classes:
            raise WeightsError(
                f"{name}: the file has {file_classes} classes, num_classes={num_classes} was asked for"
            )
        size, num_classes = file_size, file_classes
    if dataset is None:
        # Only the class counts of the published checkpoints name their dataset (21 VOC; 81 COCO,
        # and ssd.pytorch's 201-class COCO files; torchvision's 91 category ids). Any other count is
        # a custom training set whose priors the file cannot tell (docs/ssd.md, "Priors").
        known = {21: "voc", 81: "coco", 201: "coco", 91: "coco"}
        if num_classes not in known and "prior" not in overrides:
            raise WeightsError(
                f"{name}: a {num_classes}-class checkpoint does not say which prior boxes it was trained "
                "with; pass --config voc|coco (or --prior NAME)"
            )
        dataset = known.get(num_classes, "voc")

    defaults: dict[str, Any] = {}
    if fmt == FORMAT_TORCHVISION:
        defaults = {
            "prior": _TORCHVISION_PRIOR,
            "clip_priors": "wh",
            "channel_order": "RGB",
            "mean": TORCHVISION_MEAN,
            "detect": TORCHVISION_DETECT,
        }
        if num_classes == len(TORCHVISION_COCO_CATEGORIES) and dataset == "coco":
            defaults["class_names"] = TORCHVISION_COCO_CATEGORIES
    given = {k: v for k, v in overrides.items() if v is not None}
    if "channel_order" in given and "mean" not in given:
        # A different channel order without a mean: make_config's default for that order, not
        # the format's mean in the other order.
        defaults.pop("mean", None)
    try:
        config = make_config(size=size, dataset=dataset, num_classes=num_classes, **{**defaults, **given})
    except TypeError as e:
        raise TypeError(f"config_for_checkpoint: {e}") from None
    except ValueError as e:
        raise WeightsError(f"{name}: cannot build a config for this file ({e})") from None
    return CheckpointConfig(config=config, format=fmt, state_dict=raw)


def config_for_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    dataset: str | None = None,
    size: int | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> SSDConfig:
    """The :class:`SSDConfig` a checkpoint (path or state dict) describes.

    Size and class count come from the file (``size``/``num_classes`` must agree when given; a
    base-only file needs them, default 300/21). ``dataset`` defaults to ``"voc"`` for 21 classes and
    ``"coco"`` otherwise (ssd.pytorch's rule). Keyword ``overrides`` (``prior``, ``clip_priors``,
    ``channel_order``, ``mean``, ``class_names``, ``detect``) go to
    :func:`ssd_deploy.config.make_config` and win over the format's defaults; ``None`` means
    "not given". Bad files raise a one-line :class:`WeightsError`.
    """
    if isinstance(source, Mapping):
        sd, name = source, "<state dict>"
    else:
        sd, name = load_state_dict(source), str(source)
    return config_for_state_dict(
        sd, name, dataset=dataset, size=size, num_classes=num_classes, **overrides
    ).config


def describe_detect(params: DetectParams) -> str:
    """One line: the Detect settings an artifact carries and whose semantics they are."""
    cap = "no per-image cap" if params.keep_top_k is None else f"{params.keep_top_k} per image"
    parts = [
        f"score > {params.conf_thresh:g}",
        f"{params.top_k} candidates per class",
        f"NMS IoU > {params.nms_thresh:g}",
        cap,
    ]
    if params.clip_boxes:
        parts.append("boxes clipped to the image")
    if params.wh_clamp is not None:
        parts.append(f"dw/dh clamped at {params.wh_clamp:.4g}")
    torchvision_like = params.clip_boxes or params.wh_clamp is not None
    return ", ".join(parts) + (" (torchvision semantics)" if torchvision_like else " (ssd.pytorch semantics)")
