"""``ssd-build``: ONNX export -> TensorRT plan + manifest (the builder is :mod:`ssd_deploy.tensorrt.builder`).

Exit codes as for every command: 0 built, 2 bad input, a refused graph or no TensorRT/CUDA/GPU here,
130 interrupted (the partial plan is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..errors import InputError
from ..tensorrt.builder import (
    MAX_OPT_LEVEL,
    BuildOptions,
    LineReporter,
    RichReporter,
    parse_batch_profiles,
    read_onnx_info,
)
from ..tensorrt.manifest import HARDWARE_COMPAT
from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-build",
        "Build a TensorRT plan (and its <plan>.json manifest) from an ssd_deploy ONNX export. "
        "Precision comes from the ONNX graph (FP32, FP16 casts, or INT8 Q/DQ): TensorRT 11 networks "
        "are strongly typed.",
    )
    p.add_argument("--onnx", required=True, type=Path, help="ONNX file from python -m ssd_deploy.export")
    p.add_argument(
        "--batch",
        default="1:8:32",
        metavar="MIN:OPT:MAX[,...]",
        help="batch range(s) of input 'images', one optimization profile each (default 1:8:32)",
    )
    p.add_argument("--output", "-o", type=Path, help="plan path (default engines/<onnx stem>.plan)")
    p.add_argument(
        "--timing-cache",
        type=Path,
        metavar="FILE",
        help="timing cache to reuse and update (default <output folder>/timing.cache)",
    )
    p.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache file")
    p.add_argument(
        "--workspace", type=common.positive_int, metavar="MIB", help="workspace memory pool limit in MiB"
    )
    p.add_argument(
        "--opt-level",
        type=int,
        choices=range(MAX_OPT_LEVEL + 1),
        metavar=f"0-{MAX_OPT_LEVEL}",
        help="builder optimization level (TensorRT default 3; higher builds longer)",
    )
    p.add_argument(
        "--version-compatible",
        action="store_true",
        help="plan runs on later TensorRT releases of the same major version (embeds a lean runtime)",
    )
    p.add_argument(
        "--hardware-compat",
        choices=list(HARDWARE_COMPAT),
        default="none",
        help="none: this GPU architecture only; ampere+: any Ampere or newer GPU; "
        "same-cc: same compute capability",
    )
    p.add_argument(
        "--keep-extra-outputs",
        action="store_true",
        help="keep the export's outputs besides loc and conf (its constant priors) in the engine; "
        "by default they are dropped: the runtime computes priors from the config",
    )
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="keep an end-to-end ONNX's detections/num_detections (Detect in the engine; "
        "docs/end_to_end.md); not verified on a GPU yet",
    )
    p.add_argument(
        "--gpu", type=common.non_negative_int, default=0, help="CUDA device index of the GPU to build for"
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="build progress display (default: a bar on a terminal, log lines otherwise)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the ONNX file and the options, print what would be built, build nothing",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show TensorRT info messages")
    return p  # fmt: skip


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    try:
        profiles = parse_batch_profiles(args.batch)
    except ValueError as e:
        raise InputError(f"--batch: {e}") from None
    opts = BuildOptions(
        onnx=args.onnx, profiles=profiles, output=args.output, workspace_mib=args.workspace,
        opt_level=args.opt_level, version_compatible=args.version_compatible,
        hardware_compat=args.hardware_compat, device=args.gpu, verbose=args.verbose,
        keep_extra_outputs=args.keep_extra_outputs, end_to_end=args.end_to_end,
    )  # fmt: skip
    if not args.no_timing_cache:
        opts.timing_cache = args.timing_cache or opts.plan_path.parent / "timing.cache"

    from ..tensorrt.builder import build_plan

    opts.validate()
    if args.dry_run:
        info = read_onnx_info(opts.onnx)
        print(
            f"{info.path}: {info.config.name} {info.precision}, input {info.input_name} "
            f"[N,{','.join(map(str, info.input_shape))}], outputs {info.output_names}\n"
            f"would build {opts.plan_path} (+ {opts.plan_path.name}.json) with batch profiles "
            f"{', '.join(map(str, profiles))}, timing cache {opts.timing_cache or 'none'}"
        )
        return 0
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    with contextlib.ExitStack() as stack:
        reporter = None
        if mode == "bar":
            reporter = stack.enter_context(RichReporter())
        elif mode == "lines":
            reporter = LineReporter(_log, verbose=args.verbose)
        result = build_plan(opts, reporter=reporter, log=_log)
    m = result.manifest
    print(
        f"built {result.plan} ({result.plan_bytes / 2**20:.1f} MiB) in {result.seconds:.1f} s: "
        f"{m.precision}, TensorRT {m.tensorrt_version}, {m.gpu_name} (sm {m.compute_capability}), "
        f"batch {', '.join(f'{a}:{b}:{c}' for a, b, c in m.profiles)}; manifest {result.manifest_file}"
        + (f"; timing cache {result.timing_cache}" if result.timing_cache else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
