"""Reference decode + Detect in PyTorch: the oracle the numpy runtime and every engine are compared with.

A direct, loop-per-image, loop-per-class transcription of ssd.pytorch's ``Detect`` semantics
(docs/ssd.md ("Detect")), written as a plain function because the original legacy autograd ``Function``
no longer runs on current PyTorch. It is deliberately simple and independent of
:mod:`ssd_deploy.postprocess`; speed is not a goal here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import DetectParams

__all__ = ["decode_reference", "detect_reference", "nms_reference"]

_DEFAULT_PARAMS = DetectParams()  # frozen, so one shared default is safe


def decode_reference(
    loc: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2), wh_clamp: float | None = None
) -> Tensor:
    """Offsets ``loc [P, 4]`` + center-size ``priors [P, 4]`` -> corner boxes ``[P, 4]`` (no clipping).

    ``wh_clamp`` caps ``loc_wh * variances[1]`` before ``exp`` (torchvision's ``bbox_xform_clip``).
    """
    centers = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    log_sizes = loc[:, 2:] * variances[1]
    if wh_clamp is not None:
        log_sizes = log_sizes.clamp(max=wh_clamp)
    sizes = priors[:, 2:] * torch.exp(log_sizes)
    mins = centers - sizes / 2
    return torch.cat((mins, mins + sizes), dim=1)


def nms_reference(
    boxes: Tensor, scores: Tensor, overlap: float, top_k: int, nan_suppresses: bool = True
) -> Tensor:
    """Greedy NMS over the ``top_k`` highest-scoring boxes; indices of the kept boxes, best first.

    A box is dropped when its IoU (no +1 term) with an already kept box is above ``overlap``; a
    NaN IoU (two empty boxes) drops it too when ``nan_suppresses`` (ssd.pytorch keeps only
    ``IoU <= overlap``), and keeps it otherwise (torchvision suppresses only ``IoU > overlap``).
    """
    order = torch.argsort(scores, descending=True)[:top_k]
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    area = (x2 - x1) * (y2 - y1)
    kept = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        kept.append(best)
        inter_w = (torch.minimum(x2[rest], x2[best]) - torch.maximum(x1[rest], x1[best])).clamp(min=0)
        inter_h = (torch.minimum(y2[rest], y2[best]) - torch.maximum(y1[rest], y1[best])).clamp(min=0)
        inter = inter_w * inter_h
        union = (area[rest] - inter) + area[best]
        iou = inter / union
        order = rest[iou <= overlap] if nan_suppresses else rest[~(iou > overlap)]
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    return torch.stack(kept)


def _cap_per_image(rows: Tensor, keep_top_k: int) -> Tensor:
    """Keep the ``keep_top_k`` highest-scoring detections of one image ``[C, top_k, 5]`` across
    classes; the survivors of each class stay in descending order at the top of its rows."""
    num_classes, top_k, _ = rows.shape
    scores = rows[:, :, 0].flatten()
    filled = (scores > 0).nonzero().flatten()
    if filled.numel() <= keep_top_k:
        return rows
    best = filled[torch.argsort(scores[filled], descending=True)[:keep_top_k]]
    chosen = torch.zeros(num_classes * top_k, dtype=torch.bool)
    chosen[best] = True
    chosen = chosen.view(num_classes, top_k)
    capped = torch.zeros_like(rows)
    for cl in range(num_classes):
        survivors = rows[cl][chosen[cl]]  # already in descending order
        capped[cl, : survivors.shape[0]] = survivors
    return capped


@torch.no_grad()
def detect_reference(
    loc: Tensor,
    conf: Tensor,
    priors: Tensor,
    variances: Sequence[float] = (0.1, 0.2),
    params: DetectParams = _DEFAULT_PARAMS,
) -> Tensor:
    """ssd.pytorch Detect: ``loc [B,P,4]``, softmax ``conf [B,P,C]``, ``priors [P,4]``
    -> ``[B, C, top_k, 5]`` rows ``(score, x1, y1, x2, y2)`` by descending score, zero padded.

    The background class stays zero. ``params.keep_top_k=None`` reproduces ssd.pytorch (no
    per-image cap); an int keeps only that many detections per image, by score across classes.
    ``params.wh_clamp`` and ``params.clip_boxes`` (boxes clipped to [0, 1] before NMS) give
    torchvision's post-process.
    """
    loc = loc.detach().float().cpu()
    conf = conf.detach().float().cpu()
    priors = priors.detach().float().cpu()
    batch, _, num_classes = conf.shape
    output = torch.zeros(batch, num_classes, params.top_k, 5)
    for i in range(batch):
        boxes = decode_reference(loc[i], priors, variances, params.wh_clamp)
        if params.clip_boxes:
            boxes = boxes.clamp(min=0.0, max=1.0)
        for cl in range(num_classes):
            if cl == params.background_label:
                continue
            above = conf[i, :, cl] > params.conf_thresh
            scores = conf[i, above, cl]
            if scores.numel() == 0:
                continue
            cls_boxes = boxes[above]
            kept = nms_reference(
                cls_boxes, scores, params.nms_thresh, params.top_k, params.nms_nan_suppresses
            )
            output[i, cl, : kept.numel(), 0] = scores[kept]
            output[i, cl, : kept.numel(), 1:] = cls_boxes[kept]
        if params.keep_top_k is not None:
            output[i] = _cap_per_image(output[i], params.keep_top_k)
    return output
