"""``ssd-quantize`` (also ``python -m ssd_deploy.quantize``): FP16 or INT8 ONNX from an FP32 export.

Examples::

    python -m ssd_deploy.quantize --onnx export/ssd300.onnx --precision fp16 --calib-images calib/
    python -m ssd_deploy.quantize --onnx export/ssd300.onnx --precision int8 --calib-images calib/ \\
        --method entropy --exclude heads
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..quantize.calibration import RECOMMENDED_IMAGES
from ..quantize.fp16 import DEFAULT_MARGIN
from ..quantize.ranges import METHODS
from . import common


def build_parser() -> argparse.ArgumentParser:
    from ..quantize.int8 import TARGETS
    from ..quantize.pipeline import DEFAULT_METHOD, DEFAULT_PERCENTILE

    p = common.parser(
        "ssd-quantize",
        "Make an FP16 or INT8 (Q/DQ) ONNX for strongly typed TensorRT from an ssd_deploy "
        "FP32 export, calibrated on real images preprocessed exactly as at inference.",
    )
    p.add_argument(
        "--onnx",
        required=True,
        type=common.existing_file,
        help="the FP32 export (python -m ssd_deploy.export)",
    )
    p.add_argument("--precision", required=True, choices=("fp16", "int8"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--calib-images",
        metavar="DIR",
        help="folder of calibration images (JPEG/PNG...), "
        f"representative of deployment; ~{RECOMMENDED_IMAGES} recommended",
    )
    src.add_argument(
        "--calib-samples",
        action="store_true",
        help="use scikit-image's 15 bundled photos/textures (a demo, not a real calibration set)",
    )
    p.add_argument(
        "--calib-count",
        type=common.positive_int,
        default=None,
        metavar="N",
        help="use the first N images (sorted by name); an error if the folder has fewer",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"INT8 range calibration (default {DEFAULT_METHOD})",
    )
    p.add_argument(
        "--percentile",
        type=common.finite_float,
        default=DEFAULT_PERCENTILE,
        help=f"for --method percentile (default {DEFAULT_PERCENTILE})",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="INT8: keep these Conv/pool nodes in FP32: heads, loc-heads, conf-heads, l2norm-heads, "
        "first-conv, a node name, a module scope (ssd.conf.0) or a glob; repeatable or comma-separated",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="tensorrt",
        help="INT8 flavour: tensorrt (symmetric INT8 Q/DQ, default) or onnxruntime "
        "(UINT8 activations on the same grid, fast on ONNX Runtime CPU, not for TensorRT)",
    )
    p.add_argument(
        "--keep-fp32",
        action="append",
        default=[],
        metavar="PATTERN",
        help="FP16: keep these nodes FP32 too (same patterns as --exclude)",
    )
    p.add_argument(
        "--fp16-margin",
        type=common.finite_float,
        default=DEFAULT_MARGIN,
        help="FP16: nodes whose observed |values| exceed 65504/margin stay FP32 "
        f"(default {DEFAULT_MARGIN:g})",
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="output path (default: next to --onnx, <name>_fp16.onnx, <name>_int8.onnx, "
        "<name>_int8_cpu.onnx)",
    )
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache", default=None, help="calibration cache file (default: <onnx name>.calib.json next to it)"
    )
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write a calibration cache")
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="append decode + Detect in FP32 to the output: detections/num_detections (docs/end_to_end.md)",
    )
    p.add_argument("--report", default=None, help="write the per-node / per-tensor report as JSON here")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the ONNX Runtime comparison with the FP32 model"
    )
    return p


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _print_fp16(result: Any, con: Any) -> None:
    from rich import box
    from rich.table import Table

    plan = result.fp16_plan
    t = Table(title="Nodes kept in FP32", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("node", "op", "module", "why", "max |x| seen"):
        t.add_column(col, justify="right" if col.startswith("max") else "left")
    for r in plan.fp32:
        kind, _, text = r.reason.partition(":")
        why = {"rule": f"rule: {text}", "op": f"op type: {text}", "range": f"range check: {text}"}.get(
            kind, r.reason
        )
        t.add_row(r.node, r.op, r.scope, why, _fmt(r.observed_max))
    con.print(t)
    groups = plan.fp32_by_reason()
    parts = ", ".join(f"{k} {len(v)}" for k, v in groups.items())
    con.print(
        f"{len(plan.fp16)} nodes in FP16, {len(plan.fp32)} kept FP32 ({parts}); "
        f"range limit {plan.limit:.5g} = 65504 / margin {plan.margin:g}"
    )
    under = result.recipe.get("fp16_underflow") or {}
    if under:
        n = sum(under.values())
        con.print(
            f"[dim]{n} tiny non-zero weight value(s) in {len(under)} initializer(s) flush to 0 in FP16[/dim]"
        )


def _print_int8(result: Any, con: Any) -> None:
    from rich import box
    from rich.table import Table

    plan = result.int8_plan
    method = result.recipe["method"] + (
        f" {result.recipe['percentile']:g}" if "percentile" in result.recipe else ""
    )
    t = Table(
        title=f"INT8 activation ranges ({method}); saturated = calibration values beyond amax",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("tensor", "read by", "min .. max", "amax", "amax/max", "saturated"):
        t.add_column(col, justify="left" if col in ("tensor", "read by") else "right", no_wrap=True)
    for r in result.ranges:
        reader = r.reader_scopes[0] if r.reader_scopes else ""
        sat = f"{100 * r.saturated:.3f}%"
        if r.saturated > 1e-3:
            sat = f"[yellow]{sat}[/yellow]"
        ratio = r.amax / r.absmax if r.absmax else float("nan")
        t.add_row(
            r.tensor,
            reader + (f" +{len(r.readers) - 1}" if len(r.readers) > 1 else ""),
            f"{_fmt(r.min)} .. {_fmt(r.max)}",
            _fmt(r.amax),
            f"{ratio:.3f}",
            sat,
        )
    con.print(t)
    con.print(
        f"{len(plan.quantize)} Conv/pool nodes quantized, {len(plan.excluded)} excluded; "
        f"ranges {'from the cache' if result.ranges_cached else 'computed'} ({method})"
    )
    for r in plan.excluded:
        con.print(f"  FP32: {r.node} ({r.op}{', ' + r.scope if r.scope else ''}): {r.reason}")


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import InputError
    from ..quantize.calibration import images_from_folder, sample_calibration_images
    from ..quantize.pipeline import default_output, quantize_fp16, quantize_int8, write_report

    con = Console(highlight=False)
    if args.percentile is not None and not 0.0 < args.percentile <= 100.0:
        raise InputError(f"--percentile {args.percentile}: expected a value in (0, 100]")
    if args.fp16_margin < 1.0:
        raise InputError(f"--fp16-margin {args.fp16_margin}: expected a value >= 1")
    out = common.output_file(
        args.output or default_output(args.onnx, args.precision, args.target), suffixes=(".onnx",)
    )
    if args.report:
        common.output_file(args.report)
    if out.resolve() == args.onnx.resolve():
        raise InputError(f"{out}: the output would overwrite the input")
    if args.end_to_end:  # checked before calibration: bad input writes nothing
        from ..endtoend import preflight

        preflight(args.onnx)
    written: list = []
    try:
        if args.calib_samples:
            images = sample_calibration_images(args.calib_count)
        else:
            images = images_from_folder(args.calib_images, args.calib_count)
        con.print(
            f"[bold]ssd_deploy quantize[/bold] {args.onnx} -> {out} ({args.precision}"
            + (f", target {args.target}, method {args.method}" if args.precision == "int8" else "")
            + ")"
        )
        con.print(f"calibration: {len(images)} image(s) from {images.source}")
        if len(images) < RECOMMENDED_IMAGES:
            con.print(
                f"[yellow]warning:[/yellow] {len(images)} calibration image(s); NVIDIA suggests "
                f"~{RECOMMENDED_IMAGES} representative images for CNN calibration; ranges from few images "
                "may not cover deployment data"
            )
        ignored = ["--exclude", "--target"] if args.precision == "fp16" else ["--keep-fp32", "--fp16-margin"]
        given = {
            "--exclude": bool(args.exclude),
            "--target": args.target != "tensorrt",
            "--keep-fp32": bool(args.keep_fp32),
            "--fp16-margin": args.fp16_margin != DEFAULT_MARGIN,
        }
        for flag in ignored:
            if given[flag]:
                con.print(
                    f"[yellow]warning:[/yellow] {flag} does not apply to --precision "
                    f"{args.precision}; ignored"
                )
        cache: Any = False if args.no_cache else (args.cache or True)
        if args.precision == "fp16":
            result = quantize_fp16(
                args.onnx,
                images,
                output=args.output,
                margin=args.fp16_margin,
                keep_fp32=_split(args.keep_fp32),
                cache=cache,
                console=con,
                verify=not args.no_verify,
            )
        else:
            result = quantize_int8(
                args.onnx,
                images,
                output=args.output,
                method=args.method,
                percentile=args.percentile,
                exclude=_split(args.exclude),
                target=args.target,
                cache=cache,
                console=con,
                verify=not args.no_verify,
            )
        written.append(result.output)
        if args.end_to_end:
            from ..endtoend import add_end_to_end

            spec = add_end_to_end(result.output, result.output)
            con.print(
                f"end-to-end: detections [N, {spec.max_detections}, 6] + num_detections [N], "
                "post-process FP32"
            )
        if args.report:
            write_report(result, args.report)
    except BaseException:
        # A report that cannot be written (or an interrupt after the model) must not leave the model.
        for w in written:
            w.unlink(missing_ok=True)
        raise

    cal = result.calibration
    where = f" ({cal.cache_path})" if cal.cache_path else ""
    if cal.status == "reused":
        con.print(f"statistics: reused from the calibration cache{where}")
    else:
        note = "" if cal.detail in ("no cache yet", "cache disabled") else f"; cache {cal.detail}"
        con.print(
            f"statistics: collected in {cal.seconds:.1f} s{note}"
            + (f", cached to {cal.cache_path}" if cal.cache_path and not result.warnings else "")
        )
    if result.precision == "fp16":
        _print_fp16(result, con)
    else:
        _print_int8(result, con)
    if result.parity:
        con.print(
            "ONNX Runtime CPU vs the FP32 model on the first calibration image: max |diff| "
            + ", ".join(f"{k} {v:.3g}" for k, v in result.parity.items() if k != "priors")
            + (
                ""
                if result.parity.get("priors", 0.0) == 0.0
                else f", [red]priors {result.parity['priors']:.3g}[/red]"
            )
        )
    for w in result.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}")
    if args.report:
        con.print(f"report: {args.report}")
    mb = result.output.stat().st_size / 1e6
    con.print(f"wrote {result.output} ({mb:.1f} MB) in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
