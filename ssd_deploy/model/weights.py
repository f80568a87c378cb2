"""Checkpoint loading: ssd.pytorch files, the ``vgg16_reducedfc.pth`` base and torchvision's
``ssd300_vgg16`` state dict (docs/ssd.md ("Checkpoints")), all mapped onto the ssd.pytorch key layout.

Files are read only with ``torch.load(..., weights_only=True)``: a pickle that needs arbitrary Python
objects is refused, never executed. Every failure is a :class:`WeightsError` whose one-line message
names the file and the problem.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import COCO_CLASSES, PRIOR_CONFIGS, SSDConfig
from ..errors import InputError
from .ssd import SSD, VGG_LEN, init_weights, warn_untrained

__all__ = [
    "WeightsError",
    "LoadReport",
    "FORMAT_SSD_PYTORCH",
    "FORMAT_VGG_BASE",
    "FORMAT_TORCHVISION",
    "TORCHVISION_COCO_CATEGORIES",
    "load_state_dict",
    "detect_format",
    "to_ssd_layout",
    "infer_layout",
    "load_weights",
    "model_from_checkpoint",
]

FORMAT_SSD_PYTORCH = "ssd.pytorch"
FORMAT_VGG_BASE = "vgg16_reducedfc"
FORMAT_TORCHVISION = "torchvision"

# Keys under which training scripts commonly nest the weights.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_EXTRAS_BY_SIZE = {8: 300, 10: 512}

# torchvision numbers COCO classes by category id: 1..90 with ten unused ids ("N/A").
_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


def _coco_category_names() -> tuple[str, ...]:
    names = iter(COCO_CLASSES)
    return ("background",) + tuple("N/A" if cid in _COCO_UNUSED_IDS else next(names) for cid in range(1, 91))


#: Class names by torchvision label index (91 entries, background first, "N/A" for unused ids).
TORCHVISION_COCO_CATEGORIES: tuple[str, ...] = _coco_category_names()

_TORCHVISION_NOTES = (
    "torchvision ssd300_vgg16: labels are COCO category ids (91 slots, 'N/A' for the 10 unused ids)",
    "torchvision input is RGB; its (x - (0.48235, 0.45882, 0.40784))/(1/255) normalisation of 0-1 "
    "pixels equals subtracting mean (122.99925, 116.9991, 103.9992) from 0-255 pixels",
    "torchvision priors are the coco300 priors with only w/h clipped to [0, 1]: the config uses "
    "clip='wh' (ssd.pytorch clips all four values, which would move the centres of the 10x10 "
    "layer's last row/column from 1.0133 to 1.0)",
    "torchvision's own post-process takes 400 candidates per class, clips boxes to the image, "
    "clamps dw/dh at log(1000/16) and keeps 200 per image: config.detect records all of it",
)
_SSD_PYTORCH_NOTE = (
    "channel order is not recorded in ssd.pytorch files: natively trained weights expect RGB with "
    "mean (123, 117, 104), caffe-converted ones BGR with mean (104, 117, 123)"
)


class WeightsError(InputError):
    """A checkpoint cannot be read, is not an SSD checkpoint, or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    format: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Input channel order the weights expect when the format says so (torchvision: RGB), else None.
    channel_order: str | None = None


# -- reading ---------------------------------------------------------------------------------------
def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "").rstrip(".")


def _is_zip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _describe_load_error(e: BaseException, is_zip: bool = False) -> str:
    msg = str(e)
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", msg)
        if m:
            return (
                f"refused: the pickle needs the Python object {m.group(1)}, which weights_only loading "
                "does not allow (only tensors and plain containers load)"
            )
        m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", msg) or re.search(
            r"\n\s*([^\n]*Unsupported[^\n]*)", msg
        )
        detail = m.group(1).strip() if m else _first_line(msg)
        return f"not a checkpoint that weights_only loading can read ({detail})"
    if isinstance(e, EOFError):
        return "empty or truncated file"
    detail = _first_line(msg)
    if isinstance(e, RuntimeError) and "zip archive" in msg:
        m = re.search(r"zip archive: ([^.]+)", msg)
        return f"corrupt or truncated checkpoint ({m.group(1) if m else 'bad zip archive'})"
    if is_zip:
        # A torch.save zip whose members cannot be read (torch reports e.g. OSError EINVAL).
        return f"corrupt or truncated checkpoint ({type(e).__name__}{': ' + detail if detail else ''})"
    return f"not a PyTorch checkpoint ({type(e).__name__}{': ' + detail if detail else ''})"


def _unwrap(obj: Any, name: str) -> dict[str, Tensor]:
    """The state dict inside ``obj`` (raw, or under a common wrapper key), ``module.`` stripped."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise WeightsError(f"{name}: the state dict is empty")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(
            f"{name}: not a state dict: {len(bad)} entries are not named tensors (first: {bad[0]!r})"
        )
    # nn.DataParallel / DistributedDataParallel save their wrapped module under "module.".
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint with ``weights_only=True`` and return its state dict (on the CPU).

    Accepts a raw state dict or one nested under ``state_dict``/``model``/``model_state_dict``/
    ``net``/``weights``; strips a ``module.`` prefix. Raises :class:`WeightsError` otherwise.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise WeightsError(f"{name}: no such file")
    if not p.is_file():
        raise WeightsError(f"{name}: not a file")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it merely might not support; the load result decides.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise WeightsError(f"{name}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # torch.load raises many unrelated types for a bad file
        raise WeightsError(f"{name}: {_describe_load_error(e, _is_zip(p))}") from None
    return _unwrap(obj, name)


# -- formats ---------------------------------------------------------------------------------------
_BASE_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


def detect_format(sd: Mapping[str, Tensor], name: str = "<state dict>") -> str:
    """``"ssd.pytorch"``, ``"vgg16_reducedfc"`` (base only) or ``"torchvision"``."""
    keys = list(sd)
    if any(k.startswith(("backbone.", "head.")) for k in keys):
        return FORMAT_TORCHVISION
    if "L2Norm.weight" in sd or any(k.startswith(("vgg.", "extras.", "loc.", "conf.")) for k in keys):
        return FORMAT_SSD_PYTORCH
    if keys and all(_BASE_KEY.match(k) for k in keys):
        return FORMAT_VGG_BASE
    shown = ", ".join(keys[:4])
    raise WeightsError(f"{name}: not an SSD checkpoint I know (first keys: {shown})")


_TV_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    # conv1_1 .. conv4_3 keep their indices (features stops after the ReLU of conv4_3, index 22).
    (re.compile(r"^backbone\.features\.(\d+)\.(weight|bias)$"),
     lambda m: f"vgg.{m[1]}.{m[2]}" if int(m[1]) <= 22 else None),
    # extra.0 = pool4, conv5_1/5_2/5_3 at .1/.3/.5, then (pool5, conv6, ReLU, conv7) at .7.
    (re.compile(r"^backbone\.extra\.0\.([135])\.(weight|bias)$"),
     lambda m: f"vgg.{23 + int(m[1])}.{m[2]}"),
    (re.compile(r"^backbone\.extra\.0\.7\.([13])\.(weight|bias)$"),
     lambda m: f"vgg.{30 + int(m[1])}.{m[2]}"),
    (re.compile(r"^backbone\.extra\.([1-9]\d*)\.([02])\.(weight|bias)$"),
     lambda m: f"extras.{2 * (int(m[1]) - 1) + int(m[2]) // 2}.{m[3]}"),
    (re.compile(r"^backbone\.scale_weight$"), lambda m: "L2Norm.weight"),
    (re.compile(r"^head\.regression_head\.module_list\.(\d+)\.(weight|bias)$"),
     lambda m: f"loc.{m[1]}.{m[2]}"),
    (re.compile(r"^head\.classification_head\.module_list\.(\d+)\.(weight|bias)$"),
     lambda m: f"conf.{m[1]}.{m[2]}"),
)  # fmt: skip


def _torchvision_name(key: str) -> str:
    """The torchvision name of an ssd.pytorch key (the inverse of :data:`_TV_RULES`), so that errors
    about a torchvision file name its own tensors; ``key`` itself when it has none."""
    m = re.match(r"^(vgg|extras|loc|conf)\.(\d+)\.(weight|bias)$", key)
    if key == "L2Norm.weight":
        return "backbone.scale_weight"
    if not m:
        return key
    kind, i, part = m[1], int(m[2]), m[3]
    if kind == "vgg":
        if i <= 22:
            return f"backbone.features.{i}.{part}"
        return f"backbone.extra.0.{i - 23}.{part}" if i < 30 else f"backbone.extra.0.7.{i - 30}.{part}"
    if kind == "extras":
        return f"backbone.extra.{i // 2 + 1}.{2 * (i % 2)}.{part}"
    head = "regression_head" if kind == "loc" else "classification_head"
    return f"head.{head}.module_list.{i}.{part}"


def _torchvision_key(key: str) -> str | None:
    for pattern, target in _TV_RULES:
        m = pattern.match(key)
        if m:
            return target(m)
    return None


def to_ssd_layout(sd: Mapping[str, Tensor], fmt: str, name: str = "<state dict>") -> dict[str, Tensor]:
    """``sd`` renamed to ssd.pytorch keys. Keys a format does not map keep their names, so they show
    up as *unexpected* when loaded (and fail a strict load)."""
    if fmt == FORMAT_SSD_PYTORCH:
        return dict(sd)
    if fmt == FORMAT_VGG_BASE:
        return {f"vgg.{k}": v for k, v in sd.items()}
    if fmt == FORMAT_TORCHVISION:
        out: dict[str, Tensor] = {}
        for k, v in sd.items():
            new = _torchvision_key(k) or k
            if new in out:
                raise WeightsError(f"{name}: two torchvision keys map onto {new}")
            out[new] = v
        return out
    raise WeightsError(f"{name}: unknown checkpoint format {fmt!r}")


def infer_layout(sd: Mapping[str, Tensor], name: str = "<state dict>") -> tuple[int, int]:
    """``(size, num_classes)`` of an SSD state dict (any format :func:`detect_format` knows).

    Size from the number of extras convs (8 -> 300, 10 -> 512); classes from ``conf.0`` output
    channels / anchors at source 0 (``loc.0`` must agree with SSD's 4). A base-only file has neither
    and raises :class:`WeightsError`.
    """
    sd = to_ssd_layout(sd, detect_format(sd, name), name)
    extras = {int(m[1]) for k in sd if (m := re.match(r"^extras\.(\d+)\.weight$", k))}
    if not extras:
        raise WeightsError(f"{name}: no extras layers (a base-only file?), cannot tell SSD300 from SSD512")
    if len(extras) not in _EXTRAS_BY_SIZE:
        raise WeightsError(f"{name}: {len(extras)} extras convs; SSD300 has 8, SSD512 has 10")
    size = _EXTRAS_BY_SIZE[len(extras)]
    loc0, conf0 = sd.get("loc.0.weight"), sd.get("conf.0.weight")
    if loc0 is None or conf0 is None:
        raise WeightsError(f"{name}: no loc.0/conf.0 head weights, cannot infer the class count")
    a0_expected = PRIOR_CONFIGS[f"voc{size}"].boxes_per_location[0]
    if loc0.shape[0] != 4 * a0_expected:
        raise WeightsError(
            f"{name}: loc.0.weight has {loc0.shape[0]} outputs, SSD{size} expects "
            f"{4 * a0_expected} ({a0_expected} anchors x 4)"
        )
    if conf0.shape[0] % a0_expected:
        raise WeightsError(
            f"{name}: conf.0.weight has {conf0.shape[0]} outputs, not a multiple of {a0_expected} anchors"
        )
    return size, conf0.shape[0] // a0_expected


# -- loading into a model ----------------------------------------------------------------------------
def _shape_hint(key: str, got: tuple[int, ...], want: tuple[int, ...], model: SSD) -> str:
    m = re.match(r"^(loc|conf)\.(\d+)\.", key)
    if m and got[1:] == want[1:]:
        k = int(m[2])
        anchors = model.anchors_per_location[k] if k < len(model.anchors_per_location) else None
        if m[1] == "conf" and anchors and got[0] % anchors == 0:
            return f" — the file implies {got[0] // anchors} classes, the model has {model.num_classes}"
        if m[1] == "loc" and got[0] % 4 == 0:
            return f" — the file has {got[0] // 4} anchors per cell at source {k}, the model {want[0] // 4}"
    return ""


def _summarise(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _apply(model: SSD, raw: Mapping[str, Tensor], name: str, strict: bool) -> LoadReport:
    fmt = detect_format(raw, name)
    sd = to_ssd_layout(raw, fmt, name)
    target = model.state_dict()
    if fmt != FORMAT_VGG_BASE:
        # A file for the other input size fails on many tensors; say that once instead.
        try:
            file_size, file_classes = infer_layout(sd, name)
        except WeightsError:
            file_size, file_classes = model.size, model.num_classes
        if file_size != model.size:
            raise WeightsError(
                f"{name}: the file is SSD{file_size} ({file_classes} classes), "
                f"the model is SSD{model.size} ({model.num_classes} classes)"
            )
    for key, value in sd.items():
        if key in target and tuple(value.shape) != tuple(target[key].shape):
            got, want = tuple(value.shape), tuple(target[key].shape)
            raise WeightsError(
                f"{name}: {_torchvision_name(key) if fmt == FORMAT_TORCHVISION else key} has shape {got}, "
                f"model expects {want}{_shape_hint(key, got, want, model)}"
            )
    unexpected = [k for k in sd if k not in target]
    missing = [k for k in target if k not in sd]
    report = LoadReport(format=fmt, unexpected=unexpected)
    if fmt == FORMAT_VGG_BASE:
        # A base file is expected to lack everything past the VGG base.
        report.missing = [k for k in missing if k.startswith("vgg.")]
        left = len(missing) - len(report.missing)
        report.notes.append(
            f"base-only file: loaded the VGG base ({VGG_LEN} modules); L2Norm, extras and heads "
            f"({left} tensors) keep their initialisation and must be trained"
        )
    else:
        report.missing = missing
    if fmt == FORMAT_TORCHVISION:
        report.notes.extend(_TORCHVISION_NOTES)
        report.channel_order = "RGB"
    elif fmt == FORMAT_SSD_PYTORCH:
        report.notes.append(_SSD_PYTORCH_NOTE)

    if strict and (report.missing or report.unexpected):
        parts = []
        if report.missing:
            # A torchvision file's missing tensors under the names that file uses.
            shown = (
                [_torchvision_name(k) for k in report.missing]
                if fmt == FORMAT_TORCHVISION
                else report.missing
            )
            parts.append(f"{len(report.missing)} missing ({_summarise(shown)})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected ({_summarise(report.unexpected)})")
        raise WeightsError(f"{name}: {fmt} weights do not fit the model: {'; '.join(parts)}")

    usable = {k: v for k, v in sd.items() if k in target}
    model_dtype = target["L2Norm.weight"].dtype
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in usable.values() if v.dtype != model_dtype})
    if dtypes:
        report.notes.append(
            f"converted {'/'.join(dtypes)} tensors to the model's {str(model_dtype).replace('torch.', '')}"
        )
    with torch.no_grad():
        model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if report.missing and not strict:
        report.notes.append(f"{len(report.missing)} model tensors were not in the file and keep their init")
    if fmt == FORMAT_VGG_BASE:
        warn_untrained(f"SSD{model.size} loaded from the base-only file {name}")
    return report


def load_weights(model: SSD, source: str | Path | Mapping[str, Tensor], *, strict: bool = True) -> LoadReport:
    """Load an ssd.pytorch, ``vgg16_reducedfc`` or torchvision ``ssd300_vgg16`` checkpoint into ``model``.

    ``source`` is a path or an already-loaded state dict. Shape mismatches always raise; with
    ``strict`` missing or unexpected tensors raise too (a base-only file may lack everything past the
    VGG base). Returns a :class:`LoadReport`; it is also stored as ``model.load_report``.
    """
    if isinstance(source, Mapping):
        name, raw = "<state dict>", _unwrap(source, "<state dict>")
    else:
        name, raw = str(source), load_state_dict(source)
    report = _apply(model, raw, name, strict)
    model.load_report = report
    return report


def model_from_checkpoint(
    path: str | Path,
    *,
    phase: str = "train",
    dataset: str | None = None,
    size: int | None = None,
    num_classes: int | None = None,
    strict: bool = True,
    seed: int = 0,
    **config_overrides: Any,
) -> tuple[SSD, SSDConfig]:
    """Build the SSD a checkpoint describes and load it: ``(model, config)``.

    Size and class count come from the file (``size``/``num_classes`` must agree if given; a
    base-only file needs them, default 300/21). ``dataset`` defaults to ``"voc"`` for 21 classes and
    ``"coco"`` otherwise, ssd.pytorch's rule, so its 201-class COCO files get COCO priors and names
    ``class_81`` .. ``class_200`` for the unused outputs. The config comes from
    :func:`ssd_deploy.model.checkpoint.config_for_checkpoint` (torchvision files: its priors,
    labels, mean and post-process). Other keywords (``channel_order``, ``mean``, ``class_names``,
    ``detect``, ``prior``, ``clip_priors``) win over the format's defaults. The load report is
    ``model.load_report``.
    """
    from .checkpoint import config_for_state_dict  # the one place a checkpoint becomes a config

    name = str(path)
    found = config_for_state_dict(
        load_state_dict(path), name, dataset=dataset, size=size, num_classes=num_classes, **config_overrides
    )
    config, raw = found.config, found.state_dict
    model = init_weights(SSD(phase, config), seed)
    report = _apply(model, raw, name, strict)
    model.load_report = report
    if phase == "test":
        model.eval()
    return model, config
