"""Draw detections on an image (Pillow only)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from .runtime.detector import ImageDetections


def _color(class_id: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps give neighbouring class ids clearly different colours.
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray, dets: ImageDetections, line_width: int = 2, banner: str | None = None
) -> Image.Image:
    """An RGB copy of ``image`` (H x W x 3 uint8) with boxes and ``name score`` labels, and
    ``banner`` written across the top on a red bar (e.g. that the weights are untrained)."""
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for box, score, cid, name in zip(dets.boxes, dets.scores, dets.class_ids, dets.class_names):
        color = _color(int(cid))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        label = f"{name} {score:.2f}"
        tx, ty = x1 + 2, max(0.0, y1 - 12)
        left, top, right, bottom = draw.textbbox((tx, ty), label)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
        draw.text((tx, ty), label, fill=(0, 0, 0))
    if banner:
        _, _, _, bottom = draw.textbbox((4, 4), banner)
        draw.rectangle([0, 0, im.width, bottom + 4], fill=(200, 0, 0))
        draw.text((4, 4), banner, fill=(255, 255, 255))
    return im
