"""Mismatch gallery: the images where an artifact and its reference disagree most, side by side.

Disagreement per image is counted on detections scoring at least ``min_score``, paired per class
greedily at IoU >= 0.5 (the matcher ``ssd-check`` uses): images rank by missing + extra detections,
then by the sum of score differences of the matched pairs. Each PNG shows reference | artifact with
the ground truth drawn in white on both (difficult/crowd boxes grey); ``index.html`` lists them.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from ..fileio import parent_problem
from ..runtime import ImageDetections
from .datasets import DetectionSet, EvalDataset

#: Panels narrower than this are enlarged by an integer factor.
_MIN_PANEL_WIDTH = 480


@dataclass
class ImageDiff:
    index: int
    matched: int
    missing: int  # reference detections the artifact lacks
    extra: int  # artifact detections the reference lacks
    score_delta_sum: float
    score_delta_max: float

    @property
    def rank_key(self) -> tuple[int, float]:
        return (self.missing + self.extra, self.score_delta_sum)


def gallery_problem(folder: str | os.PathLike[str]) -> str | None:
    """A one-line reason why ``folder`` cannot receive a gallery (it must be new or empty)."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        return f"{d}: exists and is not a folder"
    if d.is_dir() and any(d.iterdir()):
        return f"{d}: the gallery folder exists and is not empty"
    return parent_problem(d)


def compare_images(
    dataset: EvalDataset, ref: DetectionSet, art: DetectionSet, min_score: float = 0.3
) -> list[ImageDiff]:
    """Per-image agreement of ``art`` with ``ref`` (detections scoring >= ``min_score``)."""
    from ..check import match_detections

    ref = ref.select(ref.scores >= min_score)
    art = art.select(art.scores >= min_score)
    out = []
    r_order, a_order = np.argsort(ref.image_index, kind="stable"), np.argsort(art.image_index, kind="stable")
    r_bounds = np.searchsorted(ref.image_index[r_order], np.arange(len(dataset.images) + 1))
    a_bounds = np.searchsorted(art.image_index[a_order], np.arange(len(dataset.images) + 1))
    for i in range(len(dataset.images)):
        r = ref.select(r_order[r_bounds[i] : r_bounds[i + 1]])
        a = art.select(a_order[a_bounds[i] : a_bounds[i + 1]])
        if not len(r) and not len(a):
            continue
        tot = ImageDiff(i, 0, 0, 0, 0.0, 0.0)
        for label in np.union1d(r.labels, a.labels):  # a report, not a hot path: classes present only
            rs, as_ = r.labels == label, a.labels == label
            m, miss, extra, sd, _ = match_detections(r.boxes[rs], r.scores[rs], a.boxes[as_], a.scores[as_])
            tot.matched += m
            tot.missing += miss
            tot.extra += extra
            tot.score_delta_sum += float(sd.sum())
            tot.score_delta_max = max(tot.score_delta_max, float(sd.max()) if sd.size else 0.0)
        out.append(tot)
    out.sort(key=lambda d: d.rank_key, reverse=True)
    return out


def _image_detections(dets: DetectionSet, dataset: EvalDataset, size: tuple[int, int]) -> ImageDetections:
    names = tuple(dataset.categories.get(int(c), str(c)) for c in dets.labels)
    order = np.argsort(-dets.scores, kind="stable")
    return ImageDetections(
        dets.boxes[order].astype(np.float32),
        dets.scores[order].astype(np.float32),
        dets.labels[order].astype(np.int64),
        tuple(names[i] for i in order),
        size,
    )


def _panel(
    rgb: np.ndarray, dets: ImageDetections, gt_boxes: np.ndarray, gt_difficult: np.ndarray, title: str
) -> Image.Image:
    from ..draw import draw_detections

    im = draw_detections(rgb, dets)
    draw = ImageDraw.Draw(im)
    for box, diff in zip(gt_boxes, gt_difficult):
        draw.rectangle([float(v) for v in box], outline=(150, 150, 150) if diff else (255, 255, 255), width=1)
    canvas = Image.new("RGB", (im.width, im.height + 18), (0, 0, 0))
    canvas.paste(im, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(255, 255, 255))
    return canvas


def write_gallery(
    folder: str | os.PathLike[str], dataset: EvalDataset,
    pairs: Sequence[tuple[str, DetectionSet, str, DetectionSet]],
    *, top: int = 20, min_score: float = 0.3,
) -> Path:  # fmt: skip
    """Write ``top`` PNGs per ``(artifact name, artifact dets, reference name, reference dets)`` pair and
    an ``index.html`` into ``folder`` (new or empty), all at once: on any error nothing stays."""
    from ..preprocess import load_image

    dst = Path(folder)
    problem = gallery_problem(dst)
    if problem:
        raise InputError(problem)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent if str(dst.parent) else "."))
    try:
        rows = []
        for k, (art_name, art, ref_name, ref) in enumerate(pairs):
            for diff in compare_images(dataset, ref, art, min_score)[:top]:
                rec = dataset.images[diff.index]
                rgb = load_image(rec.path)
                size = (int(rgb.shape[1]), int(rgb.shape[0]))
                # small images are enlarged so that labels stay readable (boxes scaled alike)
                zoom = max(1, int(np.ceil(_MIN_PANEL_WIDTH / size[0])))
                view = rgb.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else rgb
                gt = (rec.boxes - (1.0 if dataset.kind == "voc" else 0.0)) * zoom  # devkit frame -> pixels
                panels = []
                for dets, title in ((ref, f"reference: {ref_name}"), (art, f"artifact: {art_name}")):
                    d = dets.for_image(diff.index)
                    d = d.select(d.scores >= min_score)
                    d = DetectionSet(d.image_index, d.labels, d.scores, d.boxes * zoom)
                    shown = _image_detections(d, dataset, (view.shape[1], view.shape[0]))
                    panels.append(_panel(view, shown, gt, rec.difficult, title))
                left, right = panels
                both = Image.new("RGB", (left.width + right.width + 6, left.height), (40, 40, 40))
                both.paste(left, (0, 0))
                both.paste(right, (left.width + 6, 0))
                png = f"{k:02d}_{diff.index:06d}.png"
                both.save(tmp / png)
                rows.append((art_name, ref_name, rec.image_id, diff, png))
        (tmp / "index.html").write_text(_index_html(rows, min_score), encoding="utf-8")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        if dst.is_dir():
            dst.rmdir()  # empty (checked above)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _index_html(rows: list[tuple[str, str, object, ImageDiff, str]], min_score: float) -> str:
    e = html.escape
    body = "\n".join(
        f"<tr><td>{e(a)}</td><td>{e(r)}</td><td>{e(str(i))}</td><td>{d.missing}</td><td>{d.extra}</td>"
        f"<td>{d.matched}</td><td>{d.score_delta_max:.4f}</td><td>{d.score_delta_sum:.4f}</td>"
        f'<td><a href="{e(p)}"><img src="{e(p)}" height="160"></a></td></tr>'
        for a, r, i, d, p in rows
    )
    return (
        '<!doctype html><meta charset="utf-8"><title>ssd-eval mismatch gallery</title>\n'
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ccc}</style>\n"
        f"<h1>ssd-eval mismatch gallery</h1><p>Detections scoring &ge; {min_score}, paired per class at "
        "IoU &ge; 0.5. Missing: in the reference, not in the artifact; extra: the other way round. "
        "Left panel reference, right panel artifact; ground truth in white (difficult/crowd grey).</p>\n"
        "<table><tr><th>artifact</th><th>reference</th><th>image</th><th>missing</th><th>extra</th>"
        "<th>matched</th><th>max score &Delta;</th><th>sum score &Delta;</th><th>image</th></tr>\n"
        f"{body}\n</table>\n"
    )
