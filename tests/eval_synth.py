"""Synthetic detection datasets for the ssd-eval tests: the same scenes in VOC and COCO layouts.

A scene is a few axis-aligned objects (integer pixel boxes ``x, y, w, h``, 0-based) on a smooth
background, drawn as filled rectangles so a model sees something. Objects can be "difficult"
(VOC ``<difficult>1``; COCO ``iscrowd: 1``); scenes can be empty. Boxes are written as the formats
define them: VOC XML ``xmin = x + 1, xmax = x + w`` (1-based, inclusive), COCO ``[x, y, w, h]``.
Test-only code: the library never writes datasets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ssd_deploy.config import VOC_CLASSES


@dataclass
class Obj:
    name: str
    box: tuple[int, int, int, int]  # x, y, w, h (0-based pixels)
    difficult: bool = False


@dataclass
class Scene:
    image_id: str  # VOC id string; the COCO id is int(image_id)
    width: int
    height: int
    objects: list[Obj] = field(default_factory=list)


def random_scenes(
    n: int,
    seed: int = 0,
    classes: Sequence[str] = ("person", "car", "dog", "cat"),
    size: tuple[int, int] = (160, 120),
    scale: tuple[float, float] = (0.25, 0.5),
    per_image: int = 3,
) -> list[Scene]:
    """``n`` scenes with 1..``per_image`` objects each, sides a ``scale`` fraction of the image's
    (every 4th scene empty, every 5th object difficult)."""
    rng = np.random.default_rng(seed)
    w, h = size
    scenes = []
    for i in range(n):
        objs = []
        if i % 4 != 3:
            for k in range(int(rng.integers(1, per_image + 1))):
                bw = int(rng.integers(int(w * scale[0]), int(w * scale[1])))
                bh = int(rng.integers(int(h * scale[0]), int(h * scale[1])))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                objs.append(Obj(str(rng.choice(list(classes))), (x, y, bw, bh), difficult=(i + k) % 5 == 4))
        scenes.append(Scene(f"{i + 1:06d}", w, h, objs))
    return scenes


def render(scene: Scene, seed: int = 0) -> np.ndarray:
    """An RGB image of the scene: a gradient background and one filled rectangle per object."""
    h, w = scene.height, scene.width
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 90)], axis=2)
    img = img.astype(np.uint8)
    for o in scene.objects:
        x, y, bw, bh = o.box
        colour = [(40 * (VOC_CLASSES.index(o.name) + 1) + 30 * c) % 256 for c in range(3)]
        img[y : y + bh, x : x + bw] = colour
    return img


def write_voc(base: Path, scenes: Sequence[Scene], split: str = "test", year: str = "2007") -> Path:
    """``base/VOC<year>`` with Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt."""
    root = Path(base) / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for s in scenes:
        Image.fromarray(render(s)).save(root / "JPEGImages" / f"{s.image_id}.jpg", quality=95)
        objs = "".join(
            f"<object><name>{o.name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(o.difficult)}</difficult><bndbox><xmin>{o.box[0] + 1}</xmin>"
            f"<ymin>{o.box[1] + 1}</ymin><xmax>{o.box[0] + o.box[2]}</xmax><ymax>{o.box[1] + o.box[3]}</ymax>"
            "</bndbox></object>"
            for o in s.objects
        )
        (root / "Annotations" / f"{s.image_id}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{s.image_id}.jpg</filename><size>"
            f"<width>{s.width}</width><height>{s.height}</height><depth>3</depth></size>{objs}</annotation>"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s.image_id}\n" for s in scenes))
    return root


def write_coco(
    base: Path, scenes: Sequence[Scene], categories: Sequence[str] = VOC_CLASSES
) -> tuple[Path, Path]:
    """``base/annotations.json`` and ``base/images/``; category ids 1..len(categories) in that order."""
    base = Path(base)
    img_dir = base / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for s in scenes:
        Image.fromarray(render(s)).save(img_dir / f"{s.image_id}.jpg", quality=95)
        images.append(
            {"id": int(s.image_id), "file_name": f"{s.image_id}.jpg", "width": s.width, "height": s.height}
        )
        for o in s.objects:
            x, y, w, h = o.box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(s.image_id),
                    "category_id": categories.index(o.name) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(o.difficult),
                }
            )
    ann = base / "annotations.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
            }
        )
    )
    return ann, img_dir


def voc_perfect(o: Obj) -> list[float]:
    """The COCO-format bbox of a detection that lands exactly on ``o`` in the VOC devkit frame
    (the evaluator adds 1 to every corner: docs/evaluation.md)."""
    x, y, w, h = o.box
    return [float(x), float(y), float(w - 1), float(h - 1)]


def perturbed_detections(scenes: Sequence[Scene], seed: int = 0, voc: bool = True) -> list[dict]:
    """Detections from the ground truth with shifted boxes, duplicates, misses, false positives,
    wrong classes and tied scores, as a COCO results list (VOC ids/classes when ``voc``)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in scenes:
        iid = s.image_id if voc else int(s.image_id)
        for o in s.objects:
            r = rng.random()
            if r < 0.15:
                continue  # missed
            x, y, w, h = o.box
            dx, dy = rng.integers(-w // 4, w // 4 + 1), rng.integers(-h // 4, h // 4 + 1)
            cat = VOC_CLASSES.index(o.name) + 1
            if r < 0.25:
                cat = cat % 20 + 1  # wrong class
            score = round(float(rng.choice([0.9, 0.7, 0.5, rng.random()])), 3)  # many ties
            out.append(
                {
                    "image_id": iid,
                    "category_id": cat,
                    "bbox": [float(x + dx), float(y + dy), float(w), float(h)],
                    "score": score,
                }
            )
            if r > 0.8:  # duplicate
                out.append(
                    {
                        "image_id": iid,
                        "category_id": cat,
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "score": score * 0.5,
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # false positives
            out.append(
                {
                    "image_id": iid,
                    "category_id": int(rng.integers(1, 21)),
                    "bbox": [
                        float(rng.integers(0, s.width // 2)),
                        float(rng.integers(0, s.height // 2)),
                        20.0,
                        15.0,
                    ],
                    "score": round(float(rng.random()), 3),
                }
            )
    return out
