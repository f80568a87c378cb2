"""The one source of SSD facts: sizes, classes, prior boxes, preprocessing and Detect defaults.

An :class:`SSDConfig` is written into every artifact's metadata at export (see
:func:`SSDConfig.to_json`) and read back by every consumer, so no other module hard-codes 300, 8732,
the channel mean or the NMS threshold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .contract import CONFIG_KEY, PRECISION_KEY, RECIPE_KEY, VERSION_KEY, WEIGHTS_KEY  # noqa: F401
from .errors import InputError

#: The metadata keys every artifact carries are defined in :mod:`ssd_deploy.contract`; the config is
#: stored under ``CONFIG_KEY`` (``METADATA_KEY`` here, its older name).
METADATA_KEY = CONFIG_KEY
#: Version of the serialised layout; bumped on incompatible changes.
SCHEMA_VERSION = 1

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


CLIP_MODES = ("all", "wh", "none")
#: Largest ``top_k`` (NMS candidates per class) accepted anywhere. The classic output array is
#: ``[B, classes, top_k, 5]`` float32, so the cap bounds it (21 classes: 4.2 MB per image) where
#: ``top_k=10**9`` would ask for hundreds of GiB; no SSD layout has this many priors per class worth
#: keeping (SSD512 has 24,564 priors in all).
MAX_TOP_K = 10_000


class ConfigError(InputError):
    """An SSD configuration (or its serialised form) is invalid."""


@dataclass(frozen=True)
class PriorConfig:
    """Prior (default) box layout, in the terms of docs/ssd.md ("Priors")."""

    name: str
    min_dim: int
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]
    #: "all": clip cx, cy, w, h to [0, 1] (ssd.pytorch); "wh": only w and h (torchvision);
    #: "none". Booleans are accepted: True = "all", False = "none".
    clip: str = "all"

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool):
            object.__setattr__(self, "clip", "all" if self.clip else "none")
        if self.clip not in CLIP_MODES:
            raise ConfigError(
                f"prior config {self.name!r}: clip must be one of {CLIP_MODES}, got {self.clip!r}"
            )
        n = len(self.feature_maps)
        for attr in ("steps", "min_sizes", "max_sizes", "aspect_ratios"):
            if len(getattr(self, attr)) != n:
                raise ConfigError(
                    f"prior config {self.name!r}: {attr} has {len(getattr(self, attr))} entries, "
                    f"feature_maps has {n}"
                )

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Anchors per feature-map cell for each source (A_k): 2 + 2 per aspect ratio."""
        return tuple(2 + 2 * len(ar) for ar in self.aspect_ratios)

    @property
    def num_priors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_maps, self.boxes_per_location))


@dataclass(frozen=True)
class DetectParams:
    """Detect defaults (docs/checkpoints.md). ``keep_top_k=None`` keeps ssd.pytorch's uncapped output;
    caffe SSD and torchvision cap at 200 detections per image.

    The last three fields exist for torchvision's post-process and default to ssd.pytorch's
    behaviour, so artifacts written before they existed read unchanged: ``clip_boxes`` clips
    decoded boxes to the image before NMS; ``wh_clamp`` caps the scaled log-size offset
    ``loc_wh * variance[1]`` before ``exp`` (torchvision: log(1000/16)); ``nms_nan_suppresses``
    says whether a candidate whose IoU with a kept box is NaN (two empty boxes, 0/0) is dropped
    (ssd.pytorch's ``IoU.le(overlap)`` filter drops it, torchvision's ``nms`` keeps it).
    """

    conf_thresh: float = 0.01
    nms_thresh: float = 0.45
    top_k: int = 200
    keep_top_k: int | None = None
    background_label: int = 0
    clip_boxes: bool = False
    wh_clamp: float | None = None
    nms_nan_suppresses: bool = True

    def replace(self, **changes: Any) -> DetectParams:
        """A copy with ``changes`` applied; ``None`` values mean 'keep the current value'
        except for ``keep_top_k`` where it means 'no cap' only when passed explicitly."""
        clean = {k: v for k, v in changes.items() if v is not None or k == "keep_top_k"}
        out = dataclasses.replace(self, **clean)
        out.validate()
        return out

    def validate(self) -> None:
        for name in ("conf_thresh", "nms_thresh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        for name in ("top_k", "keep_top_k"):
            v = getattr(self, name)
            if (v is not None or name == "top_k") and (
                isinstance(v, bool) or not isinstance(v, numbers.Integral)
            ):
                raise ConfigError(
                    f"{name} must be an integer{' or None' if name == 'keep_top_k' else ''}, got {v!r}"
                )
        if not 0.0 <= self.conf_thresh < 1.0:
            raise ConfigError(f"conf_thresh must be in [0, 1), got {self.conf_thresh}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ConfigError(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be in [1, {MAX_TOP_K}], got {self.top_k}")
        if self.keep_top_k is not None and self.keep_top_k < 1:
            raise ConfigError(f"keep_top_k must be >= 1 or None, got {self.keep_top_k}")
        if self.wh_clamp is not None and not (math.isfinite(self.wh_clamp) and self.wh_clamp > 0):
            raise ConfigError(f"wh_clamp must be a finite number > 0 or None, got {self.wh_clamp}")


VOC300 = PriorConfig(
    name="voc300", min_dim=300, feature_maps=(38, 19, 10, 5, 3, 1), steps=(8, 16, 32, 64, 100, 300),
    min_sizes=(30, 60, 111, 162, 213, 264), max_sizes=(60, 111, 162, 213, 264, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)  # fmt: skip
COCO300 = dataclasses.replace(
    VOC300, name="coco300",
    min_sizes=(21, 45, 99, 153, 207, 261), max_sizes=(45, 99, 153, 207, 261, 315),
)  # fmt: skip
VOC512 = PriorConfig(
    name="voc512", min_dim=512, feature_maps=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
    max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)  # fmt: skip
COCO512 = dataclasses.replace(
    VOC512, name="coco512",
    min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
    max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
)  # fmt: skip

PRIOR_CONFIGS: dict[str, PriorConfig] = {p.name: p for p in (VOC300, COCO300, VOC512, COCO512)}


@dataclass(frozen=True)
class SSDConfig:
    """Everything a consumer needs to run and post-process an SSD artifact."""

    size: int
    num_classes: int
    class_names: tuple[str, ...]
    prior: PriorConfig
    variances: tuple[float, float] = (0.1, 0.2)
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (123.0, 117.0, 104.0)
    detect: DetectParams = field(default_factory=DetectParams)
    name: str = "ssd"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.size not in (300, 512):
            raise ConfigError(f"size must be 300 or 512, got {self.size}")
        if self.prior.min_dim != self.size:
            raise ConfigError(
                f"prior config {self.prior.name!r} is for {self.prior.min_dim}, model size is {self.size}"
            )
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (background + 1), got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names for {self.num_classes} classes "
                "(the list includes the background at index 0)"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or not all(
            isinstance(m, (int, float)) and math.isfinite(m) for m in self.mean
        ):
            raise ConfigError(f"mean must be 3 finite values, got {self.mean!r}")
        self.detect.validate()

    @property
    def num_priors(self) -> int:
        return self.prior.num_priors

    @property
    def num_sources(self) -> int:
        return len(self.prior.feature_maps)

    def replace(self, **changes: Any) -> SSDConfig:
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSDConfig:
        try:
            schema = d.get("schema", SCHEMA_VERSION)
            if schema != SCHEMA_VERSION:
                raise ConfigError(f"config schema {schema} is not supported (expected {SCHEMA_VERSION})")
            p = d["prior"]
            prior = PriorConfig(
                name=str(p["name"]), min_dim=int(p["min_dim"]),
                feature_maps=tuple(int(v) for v in p["feature_maps"]),
                steps=tuple(float(v) for v in p["steps"]),
                min_sizes=tuple(float(v) for v in p["min_sizes"]),
                max_sizes=tuple(float(v) for v in p["max_sizes"]),
                aspect_ratios=tuple(tuple(int(a) for a in ar) for ar in p["aspect_ratios"]),
                clip=p.get("clip", "all"),
            )  # fmt: skip
            det_d = dict(d.get("detect", {}))
            if det_d.get("wh_clamp") is not None:
                det_d["wh_clamp"] = float(det_d["wh_clamp"])
            det = DetectParams(**det_d)
            return cls(
                size=int(d["size"]), num_classes=int(d["num_classes"]),
                class_names=tuple(str(c) for c in d["class_names"]), prior=prior,
                variances=(float(d["variances"][0]), float(d["variances"][1])),
                channel_order=str(d["channel_order"]),
                mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                detect=det, name=str(d.get("name", "ssd")),
            )  # fmt: skip
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"malformed SSD config: {type(e).__name__}: {e}") from None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str) -> SSDConfig:
        """The config stored under :data:`METADATA_KEY` in an artifact's metadata.

        Raises :class:`ConfigError` naming ``source`` (the file) when it is missing or malformed.
        """
        if METADATA_KEY not in meta:
            raise ConfigError(
                f"{source}: no '{METADATA_KEY}' in its metadata; export it with python -m ssd_deploy.export"
            )
        try:
            return cls.from_json(meta[METADATA_KEY])
        except ConfigError as e:
            raise ConfigError(f"{source}: bad '{METADATA_KEY}' metadata: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> SSDConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"SSD config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError("SSD config JSON must be an object")
        return cls.from_dict(d)


def default_class_names(dataset: str, num_classes: int) -> tuple[str, ...]:
    """Background plus the dataset's names when the count matches, else generic names.

    COCO checkpoints from ssd.pytorch declare 201 classes (docs/ssd.md ("Priors")); the first 81 get the
    COCO names and the rest ``class_81`` ... so the old files still load and say what they are.
    """
    names = ("background",) + (VOC_CLASSES if dataset == "voc" else COCO_CLASSES)
    if num_classes == len(names):
        return names
    if num_classes > len(names):
        return names + tuple(f"class_{i}" for i in range(len(names), num_classes))
    return ("background",) + tuple(f"class_{i}" for i in range(1, num_classes))


def make_config(
    size: int = 300,
    dataset: str = "voc",
    num_classes: int | None = None,
    prior: str | PriorConfig | None = None,
    channel_order: str | None = None,
    mean: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    detect: DetectParams | None = None,
    clip_priors: bool | str = "all",
) -> SSDConfig:
    """Build a config from a preset name (``voc``/``coco``) and explicit overrides.

    The prior layout follows ``dataset`` (or ``prior``) and never the class count: ssd.pytorch's
    rule "COCO priors for any class count other than 21" is available only by asking for
    ``prior="coco300"`` explicitly. Natively trained ssd.pytorch weights use RGB with mean
    (123, 117, 104) (the default); caffe-converted weights want ``channel_order="BGR"`` and
    ``mean=(104, 117, 123)``.
    """
    if dataset not in ("voc", "coco"):
        raise ConfigError(f"dataset must be 'voc' or 'coco', got {dataset!r}")
    if size not in (300, 512):
        raise ConfigError(f"size must be 300 or 512, got {size}")
    if num_classes is None:
        num_classes = 21 if dataset == "voc" else 81
    if isinstance(prior, PriorConfig):
        pc = prior
    else:
        key = prior or f"{dataset}{size}"
        if key not in PRIOR_CONFIGS:
            raise ConfigError(f"unknown prior config {key!r}; known: {', '.join(PRIOR_CONFIGS)}")
        pc = PRIOR_CONFIGS[key]
    if clip_priors != pc.clip:
        pc = dataclasses.replace(pc, clip=clip_priors)
    order = channel_order or "RGB"
    if mean is None:
        mean = (123.0, 117.0, 104.0) if order == "RGB" else (104.0, 117.0, 123.0)
    names = tuple(class_names) if class_names is not None else default_class_names(dataset, num_classes)
    return SSDConfig(
        size=size, num_classes=num_classes, class_names=names, prior=pc,
        channel_order=order, mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
        detect=detect or DetectParams(), name=f"ssd{size}_{dataset}",
    )  # fmt: skip


PRESETS = ("voc300", "coco300", "voc512", "coco512")


def preset(name: str, **overrides: Any) -> SSDConfig:
    """``preset("voc300")`` etc.; keyword overrides go to :func:`make_config`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return make_config(size=int(name[-3:]), dataset=name[:-3], **overrides)
