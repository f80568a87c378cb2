"""``ssd-bench``: throughput, latency and per-stage times of SSD artifacts, side by side.

    ssd-bench --engine export/ssd300.onnx --engine int8=export/ssd300_int8.onnx --batch 1,8 \\
              --iterations 20 --json out/bench.json --csv out/bench.csv --plot out/bench.png

Every ``--engine`` (``.onnx`` -> ONNX Runtime, ``.plan`` -> TensorRT, ``.pth``/``.pt`` -> PyTorch
eager) is loaded into a :class:`~ssd_deploy.runtime.Detector` and timed end to end on real photos,
all engines interleaved round by round. The library part lives in :mod:`ssd_deploy.benchmark`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..benchmark.report import (
    DEFAULT_CV_THRESHOLD,
    build_report,
    check_writable,
    load_average,
    render,
    require_matplotlib,
    write_csv,
    write_json,
    write_markdown,
    write_plot,
)
from ..benchmark.runner import (
    BenchError,
    Settings,
    Subject,
    check_batches,
    open_subject,
    parse_engine,
    run_benchmark,
    unique_labels,
)
from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-bench",
        "Benchmark SSD artifacts end to end (preprocess, network, decode + NMS), several engines "
        "interleaved in one run with ratios against a baseline. Metric definitions follow trtexec.",
    )
    p.add_argument(
        "--engine",
        "-e",
        action="append",
        required=True,
        metavar="[LABEL=]PATH",
        help=".onnx, .plan or .pth/.pt; repeat to compare (the first is the baseline by default)",
    )
    p.add_argument(
        "--batch",
        "-b",
        type=common.int_list(1, "1,8,32"),
        default=(1,),
        metavar="N[,N...]",
        help="batch sizes, e.g. 1,8,32 (default 1)",
    )
    p.add_argument(
        "--warmup",
        type=common.non_negative_int,
        default=2,
        metavar="N",
        help="unmeasured rounds per batch size (default 2)",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--iterations",
        "-n",
        type=common.positive_int,
        default=None,
        metavar="N",
        help="measured rounds per batch size (default 20)",
    )
    amount.add_argument(
        "--duration",
        "-d",
        type=common.finite_float,
        default=None,
        metavar="S",
        help="measure about S seconds per engine and batch size instead (at least 3 rounds)",
    )
    p.add_argument(
        "--clients",
        "-c",
        type=common.positive_int,
        default=1,
        metavar="N",
        help="concurrent client threads sharing one Detector per engine (default 1)",
    )
    p.add_argument(
        "--block",
        type=common.positive_int,
        default=1,
        metavar="N",
        help="calls per client thread in each interleaved slot (default 1)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=common.positive_int,
        default=None,
        metavar="N",
        help="threads inside one inference (ONNX Runtime intra-op / torch); default: the library's",
    )
    common.add_device(p)
    common.add_precision(p)
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="TensorRT engines: replay CUDA graphs (captured per batch size after one warm run)",
    )
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="folder of input photos (default: the sample photos bundled with scikit-image)",
    )
    p.add_argument(
        "--from-files",
        action="store_true",
        help="pass file paths to detect, so preprocess includes reading and decoding the files",
    )
    p.add_argument("--baseline", default=None, metavar="NAME", help="engine label the ratios refer to")
    p.add_argument(
        "--cv-threshold",
        type=common.finite_float,
        default=DEFAULT_CV_THRESHOLD,
        metavar="PCT",
        help=f"flag results whose latency CV exceeds this (default {DEFAULT_CV_THRESHOLD:g} %%)",
    )
    p.add_argument(
        "--json", default=None, metavar="PATH", help="write the full report (with raw samples) as JSON"
    )
    p.add_argument("--csv", default=None, metavar="PATH", help="write one row per engine and batch size")
    p.add_argument(
        "--markdown",
        "--md",
        default=None,
        metavar="PATH",
        help="write the header and tables as Markdown (for results files and READMEs)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="latency distribution and throughput vs batch (needs matplotlib: ssd_deploy[bench])",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or tables")
    return p


def load_inputs(folder: str | None, as_files: bool) -> tuple[list[Any], dict[str, Any]]:
    """Input photos (decoded RGB arrays, or paths with ``as_files``) and a description for the report."""
    from ..samples import SamplesUnavailable, list_images, sample_images

    try:
        paths = list_images(folder) if folder else sample_images()
    except (FileNotFoundError, SamplesUnavailable) as e:
        raise BenchError(str(e)) from None
    desc: dict[str, Any] = {
        "source": folder or "scikit-image sample photos", "count": len(paths),
        "files": [p.name for p in paths], "decoded_before_timing": not as_files,
    }  # fmt: skip
    if as_files:
        return [str(p) for p in paths], desc
    from PIL import Image, ImageOps, UnidentifiedImageError

    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        except (OSError, UnidentifiedImageError) as e:
            raise BenchError(f"{p}: cannot read the image ({e})") from None
    desc["sizes"] = [f"{a.shape[1]}x{a.shape[0]}" for a in arrays]
    return arrays, desc


def _progress(quiet: bool, settings: Settings, n_engines: int) -> tuple[Any, Any]:
    """A rich progress bar on stderr and the callback the runner reports slots to."""
    if quiet:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)  # fmt: skip
    tasks: dict[int, Any] = {}
    per_batch = (
        (settings.warmup + settings.iterations) * n_engines if settings.iterations is not None else None
    )

    def report(batch: int, label: str, phase: str, rnd: int, wall: float) -> None:
        if batch not in tasks:
            tasks[batch] = prog.add_task(f"batch {batch}", total=per_batch)
        prog.update(tasks[batch], advance=1, description=f"batch {batch} {phase} round {rnd + 1} {label}")

    return prog, report


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    subjects: list[Subject] = []
    try:
        return _run(args, subjects, ["ssd-bench", *(sys.argv[1:])])
    finally:
        for s in subjects:
            s.detector.backend.close()


def _run(args: argparse.Namespace, subjects: list[Subject], command: list[str]) -> int:
    from rich.console import Console

    iterations = args.iterations if args.iterations is not None or args.duration is not None else 20
    settings = Settings(batches=args.batch, warmup=args.warmup, iterations=iterations, duration=args.duration,
                        threads=args.clients, block=args.block)  # fmt: skip
    settings.validate()
    for path, what in (
        (args.json, "JSON report"),
        (args.csv, "CSV"),
        (args.markdown, "Markdown"),
        (args.plot, "plot"),
    ):
        if path:
            check_writable(path, what)
    if args.plot:
        require_matplotlib()
    specs = [parse_engine(e) for e in args.engine]
    labels = unique_labels([p for _, p in specs], [lab for lab, _ in specs])
    if args.baseline is not None and args.baseline not in labels:
        raise BenchError(f"--baseline {args.baseline!r} is not one of the engines ({', '.join(labels)})")
    for label, (_, path) in zip(labels, specs):
        subjects.append(
            open_subject(
                label,
                path,
                intra_op_threads=args.intra_op_threads,
                device=None if args.device == "auto" else args.device,
                precision=None if args.precision == "auto" else args.precision,
                client_threads=args.clients,
                cuda_graphs=args.cuda_graphs,
            )
        )
    check_batches(subjects, settings.batches)
    images, inputs = load_inputs(args.images, args.from_files)

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = load_average()
    prog, report_slot = _progress(args.quiet, settings, len(subjects))
    if prog is not None:
        with prog:
            measurements = run_benchmark(subjects, images, settings, progress=report_slot)
    else:
        measurements = run_benchmark(subjects, images, settings)
    report = build_report(
        subjects, measurements, settings, baseline=args.baseline, cv_threshold=args.cv_threshold,
        command=command, inputs=inputs, started=started, load_before=load_before,
        load_after=load_average(), intra_op_threads=args.intra_op_threads,
    )  # fmt: skip
    if not args.quiet:
        render(report, Console(highlight=False))
    written = []
    if args.json:
        write_json(report, args.json)
        written.append(args.json)
    if args.csv:
        write_csv(report, args.csv)
        written.append(args.csv)
    if args.markdown:
        write_markdown(report, args.markdown)
        written.append(args.markdown)
    if args.plot:
        write_plot(report, args.plot)
        written.append(args.plot)
    if written and not args.quiet:
        Console(highlight=False).print("wrote " + ", ".join(str(Path(w)) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
