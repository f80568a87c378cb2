"""VOC and COCO ground truth, the class-id maps between a model and a dataset, and detections files.

Coordinate frames (docs/evaluation.md, "Coordinates"):

* VOC ground truth keeps the annotation XML's values: the VOC devkit's 1-based, inclusive pixel
  indices. Detections are converted into that frame by adding 1 to all four corners, the inverse of
  ssd.pytorch's training transform (``VOCAnnotationTransform`` subtracts 1) and what its
  ``eval.py`` writes into the devkit's results files.
* COCO ground truth and detections are continuous pixel coordinates, no offset.

:class:`DetectionSet` always holds boxes as the model produces them (``x1, y1, x2, y2`` in the
image's pixels) and labels as the dataset numbers its classes (VOC: 1..20 in VOC order; COCO: the
annotation file's category ids).
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import COCO_CLASSES, VOC_CLASSES
from ..errors import InputError
from ..fileio import atomic_write

#: COCO category id of each name in :data:`ssd_deploy.config.COCO_CLASSES` (the standard 80-class
#: label map: ids 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83). ssd.pytorch's class
#: ``i`` (1..80) is category ``COCO_CATEGORY_IDS[i - 1]``; torchvision's label is the id itself.
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES)

DATASET_KINDS = ("voc", "coco")


class DatasetError(InputError):
    """A dataset, annotation or detections file that cannot be used (one line, names the file)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its ground truth (boxes ``[N, 4]`` x1, y1, x2, y2 in the dataset's frame)."""

    image_id: str | int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float64 [N, 4]
    labels: np.ndarray  # int64 [N]: VOC class index 1..20 / COCO category id
    difficult: np.ndarray  # bool [N]: VOC "difficult", COCO "iscrowd"


@dataclass
class EvalDataset:
    """A VOC split or a COCO annotation file with its images."""

    kind: str  # "voc" | "coco"
    source: Path  # VOC year folder or COCO annotation file
    images: list[ImageRecord]
    categories: dict[int, str]  # dataset label -> name
    split: str | None = None
    year: str | None = None
    _index: dict[Any, int] = field(default_factory=dict, repr=False, init=False)

    def __post_init__(self) -> None:
        self._index = {rec.image_id: i for i, rec in enumerate(self.images)}

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self, image_id: Any) -> int | None:
        return self._index.get(image_id)

    def limit(self, n: int | None) -> EvalDataset:
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None or n >= len(self.images):
            return self
        out = replace(self, images=self.images[:n])
        out._index = self._index  # ids past the limit stay known (their detections are dropped, not errors)
        return out

    @property
    def default_metric(self) -> str:
        """VOC2007: the 11-point metric (as the 2007 devkit and ssd.pytorch); later VOC: all-point."""
        if self.kind == "coco":
            return "coco"
        return "voc07" if self.year == "2007" else "voc12"

    def describe(self) -> str:
        what = f"{self.source}" + (f" ({self.split})" if self.split else "")
        n_obj = sum(len(r.labels) for r in self.images)
        return (
            f"{self.kind.upper()} {what}: {len(self.images)} images, {n_obj} objects, "
            f"{len(self.categories)} classes"
        )


# -- parsing the --dataset spec -----------------------------------------------------------------------
def parse_dataset_spec(spec: str) -> tuple[str, Path, str | None]:
    """``voc:ROOT[:SPLIT]`` or ``coco:ANNOTATIONS.json:IMAGE_DIR`` -> ``(kind, path, split_or_image_dir)``."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in DATASET_KINDS or not rest:
        raise DatasetError(
            f"--dataset {spec!r}: expected voc:VOCdevkit/VOC2007[:test] or coco:ANNOTATIONS.json:IMAGE_DIR"
        )
    if kind == "voc":
        root, split = rest, None
        head, sep2, tail = rest.rpartition(":")
        if sep2 and tail and "/" not in tail and os.sep not in tail:
            root, split = head, tail
        return kind, Path(root), split
    at = rest.lower().find(".json:")
    if at < 0:
        raise DatasetError(f"--dataset {spec!r}: expected coco:ANNOTATIONS.json:IMAGE_DIR")
    return kind, Path(rest[: at + 5]), rest[at + 6 :] or None


def load_dataset(spec: str) -> EvalDataset:
    """Open the dataset a ``--dataset`` spec names, checking its layout and that every image exists."""
    kind, path, extra = parse_dataset_spec(spec)
    if kind == "voc":
        return load_voc(path, extra or "test")
    if extra is None:
        raise DatasetError(f"--dataset {spec!r}: the COCO image folder is missing")
    return load_coco(path, Path(extra))


# -- VOC ------------------------------------------------------------------------------------------------
def _xml_int(obj: ET.Element, path: str, xml: Path) -> int:
    el = obj.find(path)
    if el is None or el.text is None:
        raise DatasetError(f"{xml}: missing <{path}>")
    try:
        return int(float(el.text))  # a few VOC2012 files write "273.0"
    except ValueError:
        raise DatasetError(f"{xml}: <{path}> is {el.text!r}, not a number") from None


def _parse_voc_xml(xml: Path, names: dict[str, int]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml}: not a valid annotation XML ({e})") from None
    except OSError as e:
        raise DatasetError(f"{xml}: cannot read ({e.strerror})") from None
    width = _xml_int(root, "size/width", xml) if root.find("size/width") is not None else 0
    height = _xml_int(root, "size/height", xml) if root.find("size/height") is not None else 0
    boxes, labels, diff = [], [], []
    for obj in root.findall("object"):
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in names:
            raise DatasetError(f"{xml}: unknown class {name!r} (VOC classes: {', '.join(names)})")
        d = obj.find("difficult")
        diff.append(d is not None and (d.text or "0").strip() not in ("0", ""))
        boxes.append([_xml_int(obj, f"bndbox/{k}", xml) for k in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(names[name])
    return (
        width,
        height,
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(diff, dtype=bool),
    )


def load_voc(root: str | os.PathLike[str], split: str = "test") -> EvalDataset:
    """A VOC year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected a VOC year folder such as VOCdevkit/VOC2007)")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (root / sub).is_dir():
            hint = ""
            years = sorted(p.name for p in root.glob("VOC20*") if p.is_dir())
            if years:
                hint = f"; did you mean {root / years[0]}?"
            raise DatasetError(f"{root}: not a VOC layout (no {sub}/ folder){hint}")
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DatasetError(f"{listing}: no such split file (splits here: {', '.join(have) or 'none'})")
    try:
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{listing}: cannot read ({e})") from None
    if not ids:
        raise DatasetError(f"{listing}: lists no images")
    names = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
    present = {p.name for p in (root / "JPEGImages").iterdir()}
    images = []
    for image_id in ids:
        if f"{image_id}.jpg" not in present:
            raise DatasetError(
                f"{listing}: image {image_id!r} is listed but {root / 'JPEGImages' / (image_id + '.jpg')} "
                "is missing"
            )
        w, h, boxes, labels, diff = _parse_voc_xml(root / "Annotations" / f"{image_id}.xml", names)
        images.append(
            ImageRecord(image_id, root / "JPEGImages" / f"{image_id}.jpg", w, h, boxes, labels, diff)
        )
    year = root.name[3:] if root.name.startswith("VOC") and root.name[3:].isdigit() else None
    return EvalDataset(
        "voc", root, images, {i + 1: n for i, n in enumerate(VOC_CLASSES)}, split=split, year=year
    )


# -- COCO -----------------------------------------------------------------------------------------------
def load_coco(annotations: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> EvalDataset:
    """A COCO instances file and the folder its ``file_name`` entries are in."""
    ann_path, img_dir = Path(annotations), Path(image_dir)
    if not ann_path.is_file():
        raise DatasetError(f"{ann_path}: no such annotation file")
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: no such image folder")
    try:
        data = json.loads(ann_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(
            f"{ann_path}: not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)"
        )
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        metas = [
            (int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]))
            for im in data["images"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(
            f"{ann_path}: malformed image or category entry ({type(e).__name__}: {e})"
        ) from None
    if not metas:
        raise DatasetError(f"{ann_path}: lists no images")
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {m[0]: [] for m in metas}
    for k, a in enumerate(data["annotations"]):
        try:
            image_id, cat, bbox = int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]]
            crowd = bool(a.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{ann_path}: annotation {k} is malformed ({type(e).__name__}: {e})") from None
        if image_id not in per_image:
            raise DatasetError(f"{ann_path}: annotation {k} names unknown image_id {image_id}")
        if cat not in categories:
            raise DatasetError(f"{ann_path}: annotation {k} names unknown category_id {cat}")
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise DatasetError(f"{ann_path}: annotation {k} has a bad bbox {a['bbox']!r}")
        per_image[image_id].append((bbox, cat, crowd))
    present = {p.name for p in img_dir.rglob("*") if p.is_file()} if metas else set()
    images = []
    for image_id, name, w, h in metas:
        path = img_dir / name
        if Path(name).name not in present or not path.is_file():
            raise DatasetError(f"{ann_path}: image {image_id} is listed but {path} is missing")
        anns = per_image[image_id]
        xywh = np.asarray([b for b, _, _ in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        images.append(
            ImageRecord(
                image_id,
                path,
                w,
                h,
                boxes,
                np.asarray([c for _, c, _ in anns], dtype=np.int64),
                np.asarray([d for _, _, d in anns], dtype=bool),
            )
        )
    return EvalDataset("coco", ann_path, images, categories)


# -- model classes -> dataset labels ----------------------------------------------------------------------
def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def label_map(model_class_names: Sequence[str], dataset: EvalDataset) -> np.ndarray:
    """``[C]`` int64: the dataset label of each model class index (``-1``: background or not in the dataset).

    COCO: torchvision's 91 labels are category ids already; ssd.pytorch's 81 (or 201) class order is
    background + :data:`~ssd_deploy.config.COCO_CLASSES` and maps through :data:`COCO_CATEGORY_IDS`.
    Anything else (and VOC) maps by class name, ignoring case, spaces and punctuation.
    Raises :class:`DatasetError` when no model class is in the dataset.
    """
    names = list(model_class_names)
    out = np.full(len(names), -1, dtype=np.int64)
    if dataset.kind == "coco" and len(names) >= 81 and tuple(names[1:81]) == COCO_CLASSES:
        out[1:81] = COCO_CATEGORY_IDS
    elif (
        dataset.kind == "coco"
        and len(names) == 91
        and all(names[cid] == COCO_CLASSES[i] for i, cid in enumerate(COCO_CATEGORY_IDS))
    ):  # torchvision
        out[list(COCO_CATEGORY_IDS)] = COCO_CATEGORY_IDS
    else:
        by_name = {_norm(n): label for label, n in dataset.categories.items()}
        for i, n in enumerate(names[1:], start=1):
            out[i] = by_name.get(_norm(n), -1)
    out[out >= 0] = np.where(np.isin(out[out >= 0], list(dataset.categories)), out[out >= 0], -1)
    if not (out >= 0).any():
        raise DatasetError(
            f"{dataset.source}: none of the model's classes ({', '.join(names[1:6])}, ...) "
            "is a class of this dataset"
        )
    return out


# -- detections -------------------------------------------------------------------------------------------
@dataclass
class DetectionSet:
    """Flat detections over a dataset: boxes in image pixels (model frame), labels in dataset numbering."""

    image_index: np.ndarray  # int64 [N] into EvalDataset.images
    labels: np.ndarray  # int64 [N]
    scores: np.ndarray  # float64 [N]
    boxes: np.ndarray  # float64 [N, 4] x1, y1, x2, y2

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> DetectionSet:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def concat(cls, parts: Sequence[DetectionSet]) -> DetectionSet:
        if not parts:
            return cls.empty()
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("image_index", "labels", "scores", "boxes")
            )
        )

    def select(self, mask: np.ndarray) -> DetectionSet:
        return DetectionSet(self.image_index[mask], self.labels[mask], self.scores[mask], self.boxes[mask])

    def for_image(self, index: int) -> DetectionSet:
        return self.select(self.image_index == index)


def read_detections(path: str | os.PathLike[str], dataset: EvalDataset) -> DetectionSet:
    """A COCO results file (``[{image_id, category_id, bbox [x, y, w, h], score}, ...]``) for ``dataset``.

    VOC: ``image_id`` is the image's id string, ``category_id`` the class index 1..20. Unknown image or
    category ids, missing keys and non-finite numbers are errors; detections of images beyond a
    ``--limit`` are dropped.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such detections file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of {{image_id, category_id, bbox, score}} objects")
    n = len(data)
    idx = np.empty(n, np.int64)
    labels = np.empty(n, np.int64)
    scores = np.empty(n, np.float64)
    xywh = np.empty((n, 4), np.float64)
    full_index = dataset._index  # ids of the whole dataset: a --limit must not turn ids into "unknown"
    for k, d in enumerate(data):
        try:
            image_id, cat = d["image_id"], d["category_id"]
            bbox, score = d["bbox"], d["score"]
            xywh[k] = bbox
            scores[k] = score
            labels[k] = int(cat)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{p}: detection {k} is malformed ({type(e).__name__}: {e})") from None
        if dataset.kind == "coco" and isinstance(image_id, str) and image_id.isdigit():
            image_id = int(image_id)
        if dataset.kind == "voc" and isinstance(image_id, int):
            image_id = str(image_id)
        i = full_index.get(image_id)
        if i is None:
            raise DatasetError(f"{p}: detection {k} has unknown image_id {image_id!r}")
        if labels[k] not in dataset.categories:
            raise DatasetError(f"{p}: detection {k} has unknown category_id {cat!r}")
        idx[k] = i
    if not (np.isfinite(scores).all() and np.isfinite(xywh).all()):
        bad = int(np.flatnonzero(~(np.isfinite(scores) & np.isfinite(xywh).all(axis=1)))[0])
        raise DatasetError(f"{p}: detection {bad} has a non-finite score or bbox")
    if (xywh[:, 2:] < 0).any():
        bad = int(np.flatnonzero((xywh[:, 2:] < 0).any(axis=1))[0])
        raise DatasetError(f"{p}: detection {bad} has a negative bbox width or height")
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    dets = DetectionSet(idx, labels, scores, boxes)
    return dets.select(dets.image_index < len(dataset.images))


def detections_to_json(dets: DetectionSet, dataset: EvalDataset) -> list[dict[str, Any]]:
    """The COCO results list for ``dets`` (boxes ``[x, y, w, h]``, rounded to 0.01 px, scores to 1e-6)."""
    ids = [rec.image_id for rec in dataset.images]
    xywh = np.concatenate([dets.boxes[:, :2], dets.boxes[:, 2:] - dets.boxes[:, :2]], axis=1)
    xywh = np.round(xywh, 2).tolist()
    scores = np.round(dets.scores, 6).tolist()
    return [
        {"image_id": ids[i], "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(dets.image_index.tolist(), dets.labels.tolist(), xywh, scores)
    ]


def write_detections(path: str | os.PathLike[str], dets: DetectionSet, dataset: EvalDataset) -> Path:
    """Write ``dets`` as a COCO results file, atomically."""
    return atomic_write(path, json.dumps(detections_to_json(dets, dataset), separators=(",", ":")).encode())
