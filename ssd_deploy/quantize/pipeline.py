"""End-to-end FP16 and INT8 conversion of an ssd_deploy ONNX export (what the CLI runs)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..config import PRECISION_KEY, RECIPE_KEY, ConfigError, SSDConfig
from ..contract import CONF, INPUT, LOC, PRIORS, sha256_file
from ..errors import SSDDeployError
from ..fileio import atomic_write, output_problem
from .calibration import (
    Calibration,
    CalibrationError,
    CalibrationImages,
    calibrate,
    iter_batches,
)
from .fp16 import DEFAULT_MARGIN, Fp16Plan, convert_fp16, fp16_underflow, plan_fp16
from .graph import GraphError, GraphIndex, load_model, set_metadata
from .int8 import TARGETS, Int8Plan, TensorRange, build_int8, plan_int8, share_pool_ranges, tensor_ranges
from .ranges import BINS, METHODS

#: Measured on the seeded SSD300 and the 8 sample photos (docs/precision.md), the 99.99th
#: percentile gave the smallest worst-case head error of the four methods whether calibrated on the
#: evaluation photos or on disjoint images; rerun the comparison with trained weights.
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99


class QuantizeError(SSDDeployError, RuntimeError):
    """The conversion cannot be done; one line, naming the file involved."""


@dataclass
class QuantizeResult:
    """What a conversion produced and the evidence behind it."""

    output: Path
    precision: str
    recipe: dict[str, Any]
    calibration: Calibration
    fp16_plan: Fp16Plan | None = None
    int8_plan: Int8Plan | None = None
    ranges: list[TensorRange] = field(default_factory=list)
    ranges_cached: bool = False
    parity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def default_output(onnx_path: str | os.PathLike[str], precision: str, target: str = "tensorrt") -> Path:
    """``export/ssd300.onnx`` -> ``export/ssd300_fp16.onnx`` / ``_int8.onnx`` / ``_int8_cpu.onnx``."""
    p = Path(onnx_path)
    suffix = precision if precision == "fp16" or target == "tensorrt" else f"{precision}_cpu"
    return p.with_name(f"{p.stem}_{suffix}.onnx")


def default_cache(onnx_path: str | os.PathLike[str]) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.calib.json")


def _load_source(onnx_path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, SSDConfig, str]:
    try:
        model = load_model(onnx_path)
    except GraphError as e:
        raise QuantizeError(str(e)) from None
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        config = SSDConfig.from_metadata(meta, str(onnx_path))
    except ConfigError as e:
        raise QuantizeError(str(e)) from None
    precision = meta.get(PRECISION_KEY, "fp32")
    if precision != "fp32":
        raise QuantizeError(f"{onnx_path}: is already {precision}; convert the FP32 export instead")
    if not model.graph.input or model.graph.input[0].name != INPUT:
        raise QuantizeError(f"{onnx_path}: expected the input '{INPUT}' of an ssd_deploy export")
    return model, config, sha256_file(onnx_path)


def _check_output(source: Path, output: Path) -> None:
    if output.resolve() == source.resolve():
        raise QuantizeError(f"{output}: the output would overwrite the input model")
    problem = output_problem(output)
    if problem:
        raise QuantizeError(problem)


def _save(model: onnx.ModelProto, output: Path) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        raise QuantizeError(
            f"{output}: the converted graph fails the ONNX checker: {str(e).splitlines()[0]}"
        ) from e
    atomic_write(output, model.SerializeToString())


def _parity(source: onnx.ModelProto, converted: onnx.ModelProto, batch: np.ndarray) -> dict[str, float]:
    """Max |converted - FP32| per output on one calibration batch, both on ONNX Runtime CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    outs = {}
    for tag, m in (("fp32", source), ("new", converted)):
        sess = ort.InferenceSession(
            m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        outs[tag] = sess.run([LOC, CONF, PRIORS], {INPUT: batch})
    return {
        name: float(np.max(np.abs(a.astype(np.float64) - b)))
        for name, a, b in zip((LOC, CONF, PRIORS), outs["fp32"], outs["new"])
    }


def _save_cache(cal: Calibration) -> list[str]:
    """Write the calibration cache; a failure costs only the next run's time, so it is a warning."""
    try:
        cal.save()
    except OSError as e:
        return [
            f"{cal.cache_path}: could not write the calibration cache ({e.strerror or e}); use --cache PATH"
        ]
    return []


def _calibration_info(images: CalibrationImages, cal: Calibration) -> dict[str, Any]:
    return {
        "images": len(images),
        "source": images.source,
        "digest": images.digest(),
        "preprocessing": cal.key["preprocessing"],
    }


def _run_calibration(
    model: onnx.ModelProto,
    sha: str,
    images: CalibrationImages,
    config: SSDConfig,
    cache: str | os.PathLike[str] | None,
    console: Any,
) -> Calibration:
    tensors = GraphIndex(model).float_activations()
    try:
        return calibrate(model, sha, images, config, tensors, cache_path=cache, console=console)
    except CalibrationError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT failures: one line
        raise QuantizeError(
            f"calibration run failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def quantize_fp16(
    onnx_path: str | os.PathLike[str],
    images: CalibrationImages,
    *,
    output: str | os.PathLike[str] | None = None,
    margin: float = DEFAULT_MARGIN,
    keep_fp32: Sequence[str] = (),
    cache: str | os.PathLike[str] | None | bool = True,
    console: Any = None,
    verify: bool = True,
) -> QuantizeResult:
    """Write a mixed FP16/FP32 copy of ``onnx_path`` (FP32 I/O). ``cache=True``: next to the model."""
    t0 = time.perf_counter()
    src = Path(onnx_path)
    model, config, sha = _load_source(src)
    out = Path(output) if output else default_output(src, "fp16")
    _check_output(src, out)
    cache_path = default_cache(src) if cache is True else (None if cache is False else cache)
    cal = _run_calibration(model, sha, images, config, cache_path, console)
    try:
        plan = plan_fp16(model, cal.stats, margin=margin, keep_fp32=keep_fp32)
    except (GraphError, ValueError) as e:
        raise QuantizeError(str(e)) from None
    converted = convert_fp16(model, set(plan.fp16))
    from .. import __version__

    recipe = {
        "precision": "fp16",
        "tool": "ssd_deploy.quantize",
        "version": __version__,
        "io": "fp32 (keep_io_types)",
        "margin": margin,
        "limit": plan.limit,
        "fp16_nodes": len(plan.fp16),
        "fp32_nodes": {r.node: r.reason for r in plan.fp32},
        "fp16_underflow": fp16_underflow(model, set(plan.fp16)),
        "source_sha256": sha,
        "calibration": _calibration_info(images, cal),
    }
    set_metadata(converted, {PRECISION_KEY: "fp16", RECIPE_KEY: json.dumps(recipe, sort_keys=True)})
    parity = _parity(model, converted, next(iter_batches(images, config))) if verify else {}
    _save(converted, out)
    warnings = _save_cache(cal) if cal.cache_path is not None and cal.status == "collected" else []
    return QuantizeResult(
        out,
        "fp16",
        recipe,
        cal,
        fp16_plan=plan,
        parity=parity,
        seconds=time.perf_counter() - t0,
        warnings=warnings,
    )


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    images: CalibrationImages,
    *,
    output: str | os.PathLike[str] | None = None,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    exclude: Sequence[str] = (),
    target: str = "tensorrt",
    cache: str | os.PathLike[str] | None | bool = True,
    console: Any = None,
    verify: bool = True,
) -> QuantizeResult:
    """Write a Q/DQ INT8 copy of ``onnx_path`` calibrated on ``images`` (see :mod:`.int8`)."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")
    if not 0.0 < percentile <= 100.0:
        raise QuantizeError(f"--percentile must be in (0, 100], got {percentile}")
    if target not in TARGETS:
        raise QuantizeError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    src = Path(onnx_path)
    model, config, sha = _load_source(src)
    out = Path(output) if output else default_output(src, "int8", target)
    _check_output(src, out)
    try:
        plan = plan_int8(model, exclude)
    except GraphError as e:
        raise QuantizeError(str(e)) from None
    if not plan.quantize:
        raise QuantizeError(f"{src}: nothing left to quantize (every Conv/pooling node is excluded)")
    cache_path = default_cache(src) if cache is True else (None if cache is False else cache)
    cal = _run_calibration(model, sha, images, config, cache_path, console)
    amax, from_cache = cal.amax(plan.activations, method, percentile)
    amax = share_pool_ranges(model, plan, amax)
    rows = tensor_ranges(plan, amax, cal.stats, model)
    converted = build_int8(model, plan, amax, target=target)
    from .. import __version__

    worst = max(rows, key=lambda r: r.saturated)
    recipe = {
        "precision": "int8",
        "tool": "ssd_deploy.quantize",
        "version": __version__,
        "target": target,
        "method": method,
        **({"percentile": percentile} if method == "percentile" else {}),
        "bins": BINS,
        "activations": (
            "int8 symmetric per-tensor, zero point 0"
            if target == "tensorrt"
            else "uint8 on the int8 grid (zero point 0 after ReLU, 128 otherwise); CPU-only flavour"
        ),
        "weights": "int8 symmetric per-channel (axis 0)",
        "bias": "fp32" if target == "tensorrt" else "int32 (scale = input scale x weight scale)",
        "quantized_ops": ["Conv", "MaxPool", "AveragePool"],
        "high_precision": "fp32",
        "quantized_nodes": len(plan.quantize),
        "excluded": {r.node: r.reason for r in plan.excluded},
        "exclude_patterns": list(exclude),
        "saturation": {"max": worst.saturated, "tensor": worst.tensor},
        "source_sha256": sha,
        "calibration": _calibration_info(images, cal),
    }
    set_metadata(converted, {PRECISION_KEY: "int8", RECIPE_KEY: json.dumps(recipe, sort_keys=True)})
    parity = _parity(model, converted, next(iter_batches(images, config))) if verify else {}
    _save(converted, out)
    warnings = []
    if cal.cache_path is not None and (cal.status == "collected" or not from_cache):
        warnings = _save_cache(cal)
    return QuantizeResult(
        out,
        "int8",
        recipe,
        cal,
        int8_plan=plan,
        ranges=rows,
        ranges_cached=from_cache,
        parity=parity,
        seconds=time.perf_counter() - t0,
        warnings=warnings,
    )


def write_report(result: QuantizeResult, path: str | os.PathLike[str]) -> None:
    """The full per-node / per-tensor evidence as JSON (atomic)."""
    doc: dict[str, Any] = {
        "output": str(result.output),
        "precision": result.precision,
        "recipe": result.recipe,
        "calibration": {
            "status": result.calibration.status,
            "detail": result.calibration.detail,
            "seconds": result.calibration.seconds,
        },
        "parity_vs_fp32_ort_cpu": result.parity,
    }
    if result.fp16_plan is not None:
        doc["fp32_nodes"] = [vars(r) for r in result.fp16_plan.fp32]
        doc["observed_max"] = result.fp16_plan.observed
    if result.ranges:
        doc["tensors"] = {r.tensor: r.to_dict() for r in result.ranges}
    atomic_write(path, json.dumps(doc, indent=1, default=float).encode())
