"""``ssd-triton`` (also ``python -m ssd_deploy.triton``): write a Triton model repository for an ssd_deploy
engine (the generator is :mod:`ssd_deploy.triton`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..triton.check import check_repository
from ..triton.configs import RepoOptions
from ..triton.layout import ONNX_BACKENDS
from ..triton.repository import generate
from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-triton",
        "Write a Triton model repository (engine + Python pre/post-processing + ensemble) for an "
        "ssd_deploy .plan or .onnx, or check one with --check.",
    )
    p.add_argument("--engine", help="TensorRT .plan (with its .plan.json manifest) or .onnx")
    p.add_argument(
        "--output", "-o", default="model_repository", help="repository folder (default model_repository)"
    )
    p.add_argument("--check", metavar="REPO", help="only check an existing repository")
    p.add_argument("--name", default="ssd", help="ensemble name; other models get it as prefix (default ssd)")
    p.add_argument(
        "--max-batch",
        type=common.positive_int,
        default=None,
        help="max_batch_size (default: the plan profile's largest batch; 8 for .onnx)",
    )
    p.add_argument(
        "--instances", type=common.positive_int, default=1, help="engine instances per GPU (default 1)"
    )
    p.add_argument(
        "--gpus",
        type=common.int_list(0, "0,1"),
        default=None,
        help="GPUs for the engine, e.g. 0,1 (default: all)",
    )
    p.add_argument(
        "--kind",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="where the engine runs (plans: gpu; .onnx default: Triton decides)",
    )
    p.add_argument(
        "--python-instances",
        type=common.positive_int,
        default=2,
        help="instances of each Python model (default 2)",
    )
    p.add_argument(
        "--queue-delay-us",
        type=common.non_negative_int,
        default=500,
        help="dynamic batcher delay (default 500 us)",
    )
    p.add_argument(
        "--max-megapixels",
        type=common.finite_float,
        default=40.0,
        help="largest image the preprocess model decodes",
    )
    common.add_detect_overrides(p)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--backend",
        choices=ONNX_BACKENDS,
        default="onnxruntime",
        help=".onnx engines: Triton's ONNX Runtime platform or its OpenVINO backend (CPU)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="--backend openvino: bf16 sets the backend's HINT_BF16 (auto, fp32: no hint)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    if args.check:
        models = check_repository(args.check)
        print(f"{args.check}: {len(models)} model configs parse with Triton's schema and the ensembles "
              f"are wired consistently: {', '.join(models)}")  # fmt: skip
        return 0
    if not args.engine:
        raise InputError("--engine is required (or --check REPO)")
    if args.max_megapixels <= 0:
        raise InputError(f"--max-megapixels {args.max_megapixels}: must be > 0")
    overrides = common.detect_overrides(args)
    opts = RepoOptions(
        name=args.name, instances=args.instances, gpus=args.gpus, kind=args.kind,
        python_instances=args.python_instances, queue_delay_us=args.queue_delay_us,
        max_pixels=int(args.max_megapixels * 1e6),
        detect_overrides={k: v for k, v in overrides.items() if v is not None or k == "keep_top_k"},
        onnx_backend=args.backend, bf16=args.precision == "bf16",
    )  # fmt: skip
    report = generate(args.engine, args.output, opts, max_batch=args.max_batch, force=args.force)
    f = report.facts
    print(f"wrote {report.output}/ for {f.path.name} ({f.config.name}, {f.precision}, {f.platform}, "
          f"max batch {f.max_batch}): {', '.join(report.models)}")  # fmt: skip
    for note in f.notes:
        print(f"  note: {note}")
    if report.validated:
        print("  every config.pbtxt parses with Triton's model-config schema; ensemble wiring checked")
    else:
        print("  not checked against Triton's schema (pip install tritonclient to check)")
    gpus = "--gpus all " if f.platform == "tensorrt_plan" or opts.kind == "gpu" else ""
    print(
        "  run it in a Triton image that has ssd_deploy installed (docs/serving.md, 'Triton'):\n"
        f"    docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -v {Path(report.output).resolve()}:/models "
        "IMAGE tritonserver --model-repository=/models"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
