"""Calibration images, the statistics pass over them, and its cache.

Images are preprocessed by :func:`ssd_deploy.preprocess.preprocess` with the model's own config,
exactly as at inference. The statistics (per-tensor extrema and ``|x|`` histograms, see
:mod:`.ranges`) are cached in one JSON file in two levels:

* **statistics**, keyed on the model file (SHA-256), the images (name + SHA-256 of each file, in
  order) and the preprocessing (size, channel order, mean, and a fingerprint of the preprocessing
  code). Any change there makes the cache stale and the images are run again.
* **ranges**, additionally keyed on the calibration method and its parameters. A new method reuses
  the statistics and only recomputes ranges (seconds instead of a pass over the images).

Writes are atomic (temporary file + rename), so an interrupted run never leaves a broken cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SSDConfig
from ..contract import INPUT
from ..errors import SSDDeployError
from ..fileio import atomic_write
from .ranges import BINS, METHODS_VERSION, TensorStats, collect_stats, compute_amax

CACHE_FORMAT = "ssd_deploy.calibration/1"
#: NVIDIA's TensorRT guide: "about 500 images are sufficient for calibrating ImageNet classification
#: networks". Fewer work (and are all this machine has) but are warned about.
RECOMMENDED_IMAGES = 500


class CalibrationError(SSDDeployError, RuntimeError):
    """The calibration input is unusable; one line, naming the folder or file."""


# -- images ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationImages:
    """An ordered list of calibration image files with their content hashes."""

    files: tuple[Path, ...]
    digests: tuple[str, ...]
    source: str  # the folder (or "scikit-image samples") they came from

    def __len__(self) -> int:
        return len(self.files)

    def key(self) -> list[dict[str, str]]:
        return [{"name": f.name, "sha256": d} for f, d in zip(self.files, self.digests)]

    def digest(self) -> str:
        """One hash for the whole ordered set (recorded in the artifact's recipe)."""
        h = hashlib.sha256()
        for d in self.digests:
            h.update(d.encode())
        return h.hexdigest()


def _check_readable(path: Path) -> str:
    """SHA-256 of the file, after checking that it opens as an image (header only, no decode)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not data:
        raise CalibrationError(f"{path}: empty file, not an image")
    try:
        import io

        from PIL import Image, UnidentifiedImageError

        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CalibrationError(
            f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return hashlib.sha256(data).hexdigest()


def gather_images(
    files: Sequence[str | os.PathLike[str]], count: int | None = None, source: str = ""
) -> CalibrationImages:
    """Take the first ``count`` of ``files`` (all when ``None``), check each opens, hash them."""
    paths = [Path(f) for f in files]
    where = source or (str(paths[0].parent) if paths else "calibration set")
    if not paths:
        raise CalibrationError(f"{where}: no calibration images")
    if count is not None:
        if count < 1:
            raise CalibrationError(f"--calib-count must be at least 1, got {count}")
        if count > len(paths):
            raise CalibrationError(
                f"{where}: --calib-count {count} but only {len(paths)} image(s) are there; "
                f"add images or lower --calib-count"
            )
        paths = paths[:count]
    digests = tuple(_check_readable(p) for p in paths)
    return CalibrationImages(files=tuple(paths), digests=digests, source=where)


def images_from_folder(folder: str | os.PathLike[str], count: int | None = None) -> CalibrationImages:
    """The image files (JPEG/PNG/...) directly inside ``folder``, sorted by name."""
    from ..samples import IMAGE_SUFFIXES

    d = Path(folder)
    if not d.exists():
        raise CalibrationError(f"{d}: no such folder")
    if not d.is_dir():
        raise CalibrationError(f"{d}: not a folder (pass a folder of calibration images)")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{d}: no images in the folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return gather_images(files, count, source=str(d))


def sample_calibration_images(count: int | None = None) -> CalibrationImages:
    """scikit-image's bundled photos and textures: a demo set (15 images), not a real calibration set."""
    from ..samples import SamplesUnavailable, sample_images

    try:
        files = sample_images(include_textures=True)
    except SamplesUnavailable as e:
        raise CalibrationError(str(e)) from None
    return gather_images(files, count, source="scikit-image sample photos")


def preprocessing_key(config: SSDConfig) -> dict[str, Any]:
    """What determines the network input: the config's preprocessing plus the code that applies it."""
    from .. import preprocess as prep

    try:
        code = hashlib.sha256(inspect.getsource(prep).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        code = "unknown"
    return {
        "size": config.size,
        "channel_order": config.channel_order,
        "mean": [float(v) for v in config.mean],
        "resize": "warp",
        "code": code,
    }


def iter_batches(images: CalibrationImages, config: SSDConfig, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Preprocessed ``[n,3,S,S]`` float32 batches, made exactly as the runtime's ``Detector`` does."""
    from ..preprocess import ImageError, preprocess

    files = list(images.files)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        try:
            batch, _ = preprocess(chunk, config)
        except ImageError as e:
            raise CalibrationError(str(e)) from None
        except OSError as e:
            raise CalibrationError(f"{chunk[0]}: cannot read the image ({e})") from None
        yield np.ascontiguousarray(batch, dtype=np.float32)


# -- cache ----------------------------------------------------------------------------------------


def method_key(method: str, percentile: float) -> str:
    """The ranges' cache key: method, its parameter and the version of the range arithmetic."""
    param = f"p={percentile:g}" if method == "percentile" else f"bins={BINS}"
    return f"{method}:{param}:v{METHODS_VERSION}"


@dataclass
class Calibration:
    """Statistics of a model's activations on a calibration set, and where they came from."""

    stats: dict[str, TensorStats]
    key: dict[str, Any]
    status: str  # "collected" | "reused"
    detail: str  # why (e.g. "stale: the model changed")
    cache_path: Path | None
    seconds: float
    ranges: dict[str, dict[str, float]]  # method key -> tensor -> amax

    def amax(
        self, tensors: Sequence[str], method: str, percentile: float = 99.99
    ) -> tuple[dict[str, float], bool]:
        """Ranges for ``tensors`` by ``method``; the bool says they came from the cache."""
        mk = method_key(method, percentile)
        have = self.ranges.get(mk, {})
        if all(t in have for t in tensors):
            return {t: have[t] for t in tensors}, True
        for t in tensors:
            if t not in self.stats:
                raise CalibrationError(f"no calibration statistics for tensor {t!r}")
        computed = {t: compute_amax(self.stats[t], method, percentile) for t in tensors}
        self.ranges.setdefault(mk, {}).update(computed)
        return computed, False

    def save(self) -> None:
        if self.cache_path is None:
            return
        doc = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "tensors": {name: st.to_dict() for name, st in self.stats.items()},
            "ranges": self.ranges,
        }
        atomic_write(self.cache_path, json.dumps(doc, indent=1, sort_keys=True).encode())


def _diff_key(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    if old.get("model_sha256") != new.get("model_sha256"):
        return "the model changed"
    if old.get("preprocessing") != new.get("preprocessing"):
        return "the preprocessing changed"
    if old.get("images") != new.get("images"):
        a = {(d["name"], d["sha256"]) for d in old.get("images", [])}
        b = {(d["name"], d["sha256"]) for d in new.get("images", [])}
        return f"the images changed ({len(b - a)} new or modified, {len(a - b)} gone)"
    return "the key changed"


def load_cache(path: Path, key: Mapping[str, Any], tensors: Sequence[str]) -> tuple[dict | None, str]:
    """The cached document when it matches ``key`` and holds ``tensors``; else ``None`` and why."""
    if not path.is_file():
        return None, "no cache yet"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"stale: unreadable cache ({type(e).__name__})"
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        return None, "stale: not an ssd_deploy calibration cache of this format"
    if doc.get("key") != key:
        return None, "stale: " + _diff_key(doc.get("key", {}), key)
    missing = [t for t in tensors if t not in doc.get("tensors", {})]
    if missing:
        return None, f"stale: {len(missing)} tensor(s) not in the cache"
    return doc, "valid"


def calibrate(
    model: Any,
    model_sha256: str,
    images: CalibrationImages,
    config: SSDConfig,
    tensors: Sequence[str],
    *,
    cache_path: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    console: Any = None,
    input_name: str = INPUT,
) -> Calibration:
    """Statistics of ``tensors`` over ``images``, from the cache when it is valid.

    ``progress(done, total)`` is called per image; with a rich ``console`` a progress bar with ETA
    is shown instead.
    """
    t0 = time.perf_counter()
    key = {"model_sha256": model_sha256, "images": images.key(), "preprocessing": preprocessing_key(config)}
    cpath = Path(cache_path) if cache_path is not None else None
    detail = "cache disabled"
    if cpath is not None:
        doc, detail = load_cache(cpath, key, tensors)
        if doc is not None:
            try:
                stats = {t: TensorStats.from_dict(t, d) for t, d in doc["tensors"].items()}
                ranges = {k: {t: float(v) for t, v in r.items()} for k, r in doc.get("ranges", {}).items()}
            except (KeyError, TypeError, ValueError) as e:
                detail = f"stale: damaged cache ({type(e).__name__})"
            else:
                return Calibration(stats, key, "reused", "valid", cpath, time.perf_counter() - t0, ranges)

    total = len(images)
    batches = iter_batches(images, config, batch_size=1)
    if console is not None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("calibrating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("calibrating", total=total)
            stats = collect_stats(
                model, batches, tensors, input_name=input_name, on_batch=lambda n: bar.advance(task, n)
            )
    else:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        stats = collect_stats(model, batches, tensors, input_name=input_name, on_batch=step)
    bad = [t for t, s in stats.items() if s.nonfinite]
    if bad:
        raise CalibrationError(
            f"the FP32 model produced inf/NaN in {len(bad)} tensor(s) (first: {bad[0]}) on the calibration "
            "images; fix the model or the images before quantizing"
        )
    return Calibration(stats, key, "collected", detail, cpath, time.perf_counter() - t0, {})
