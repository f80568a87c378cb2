"""One result row per image, shared by the Ray pipeline and the in-process path.

Columns (:data:`SCHEMA`): ``path``; ``width`` and ``height`` of the original image (null when it
could not be read); ``boxes`` ``[[x1, y1, x2, y2], ...]`` in that image's pixels, best first;
``scores``; ``class_ids`` (1..C-1, 0 is background); ``class_names``; ``error`` (null, or one line
saying why the image has no detections: unreadable, corrupt, too large). Both paths build rows with
the same functions, so a row is the same whichever path made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import DetectParams, SSDConfig
from ..errors import optional_import
from ..preprocess import ImageError, preprocess

COLUMNS = ("path", "width", "height", "boxes", "scores", "class_ids", "class_names", "error")


def _pa() -> Any:
    return optional_import("pyarrow", extra="batch")


def schema() -> Any:
    """The pyarrow schema of a result row."""
    pa = _pa()
    return pa.schema([
        ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))), ("scores", pa.list_(pa.float32())),
        ("class_ids", pa.list_(pa.int32())), ("class_names", pa.list_(pa.string())),
        ("error", pa.string()),
    ])  # fmt: skip


def load_one(path: str, config: SSDConfig) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None]:
    """Read and preprocess one image: ``(image [3,S,S] float32, (width, height), None)``, or
    ``(None, None, message)`` when it is not a usable image (one line naming the file)."""
    try:
        batch, sizes = preprocess([path], config)
    except ImageError as e:
        return None, None, str(e).splitlines()[0]
    return batch[0], sizes[0], None


def detect_rows(
    detector: Any,
    params: DetectParams,
    min_score: float,
    paths: Sequence[str],
    images: np.ndarray | None,
    sizes: Sequence[tuple[int, int] | None],
    errors: Sequence[str | None],
) -> Any:
    """Run ``detector`` on the readable images of a batch and return its rows as a pyarrow Table.

    ``images`` is ``[N, 3, S, S]`` aligned with ``paths`` (rows with an error may hold anything);
    results come from :meth:`Detector.infer` and :meth:`Detector.postprocess`, exactly as
    :meth:`Detector.detect` computes them, then keep scores of at least ``min_score``.
    """
    ok = np.array([e is None for e in errors], dtype=bool)
    dets: list[Any] = [None] * len(paths)
    if ok.any():
        assert images is not None
        idx = np.flatnonzero(ok)
        batch = images if ok.all() else images[idx]
        loc, conf = detector.infer(batch)
        found = detector.postprocess(loc, conf, [sizes[i] for i in idx], params)
        for i, d in zip(idx, found):
            dets[i] = d.above(min_score) if min_score > 0 else d
    return make_table(paths, sizes, dets, errors)


def make_table(
    paths: Sequence[str],
    sizes: Sequence[tuple[int, int] | None],
    dets: Sequence[Any],
    errors: Sequence[str | None],
) -> Any:
    """Rows from per-image :class:`ImageDetections` (None for an error row), built column-wise."""
    pa = _pa()
    counts = np.array([len(d) if d is not None else 0 for d in dets], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    present = [d for d in dets if d is not None and len(d)]

    def cat(attr: str, dtype: Any, width: int = 0) -> np.ndarray:
        if not present:
            return np.zeros((0, width) if width else (0,), dtype)
        return np.concatenate([np.asarray(getattr(d, attr), dtype) for d in present])

    flat_boxes = pa.FixedSizeListArray.from_arrays(pa.array(cat("boxes", np.float32, 4).reshape(-1)), 4)
    names: list[str] = [n for d in present for n in d.class_names]
    columns = {
        "path": pa.array([str(p) for p in paths], pa.string()),
        "width": pa.array([s[0] if s else None for s in sizes], pa.int32()),
        "height": pa.array([s[1] if s else None for s in sizes], pa.int32()),
        "boxes": pa.ListArray.from_arrays(offsets, flat_boxes),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(cat("scores", np.float32))),
        "class_ids": pa.ListArray.from_arrays(offsets, pa.array(cat("class_ids", np.int32))),
        "class_names": pa.ListArray.from_arrays(offsets, pa.array(names, pa.string())),
        "error": pa.array(list(errors), pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=schema())
