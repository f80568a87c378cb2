"""Real sample photos for demos, checks and calibration, taken from scikit-image's bundled data.

scikit-image ships a handful of photographs inside its wheel (no download at run time); we locate
them on disk without importing scikit-image itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import SSDDeployError

#: Photographs (not textures or drawings) among scikit-image's bundled files; camera.png is
#: grayscale, which exercises that path too.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
#: Further bundled photographs of surfaces, useful only to widen a calibration set.
TEXTURES = ("brick.png", "grass.png", "gravel.png", "color.png", "ihc.png", "coins.png", "moon.png")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SamplesUnavailable(SSDDeployError, FileNotFoundError):
    """The sample photos are not on this machine (scikit-image, their source, is not installed);
    a FileNotFoundError so every CLI reports it as bad input in one line."""


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SamplesUnavailable(
            "sample photos come from scikit-image's bundled data: pip install scikit-image, "
            "or pass your own images"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_images(include_textures: bool = False) -> list[Path]:
    """Paths of the bundled sample photos that exist in this installation."""
    d = sample_dir()
    names = PHOTOS + (TEXTURES if include_textures else ())
    found = [d / n for n in names if (d / n).is_file()]
    if not found:
        raise SamplesUnavailable(f"{d}: no sample photos found in this scikit-image installation")
    return found


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; a clear error when there are none."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{d}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files
