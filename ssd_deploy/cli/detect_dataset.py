"""``ssd-detect --engine ARTIFACT --input DIR|GLOB|LIST --output OUT.parquet|OUT.jsonl [--ray [ADDRESS]]``.

Dataset mode of ``ssd-detect``: every image in, one result row per image out (Parquet or JSON
lines part files), in this process or on Ray Data (docs/batch.md). ``ssd-detect`` hands its
command line here when it contains ``--input``; the flags are also usable on their own as
``python -m ssd_deploy.cli.detect_dataset``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_OK
from . import common


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset-mode flags (``--engine``, ``--output``, ``--min-score``, the Detect overrides and
    ``--device`` are added by the caller's parser or by :func:`build_parser`)."""
    g = p.add_argument_group("dataset mode")
    g.add_argument(
        "--input",
        required=True,
        metavar="DIR|GLOB|LIST",
        help="a folder (searched recursively), a quoted glob such as 'photos/**/*.jpg', one "
        "image, or a text file listing image paths one per line",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data: alone, a private local Ray on 127.0.0.1; with an ADDRESS "
        "(auto, HOST:6379, ray://HOST:10001), that cluster (default: in this process)",
    )
    g.add_argument(
        "--actors",
        type=common.positive_int,
        default=1,
        help="inference actors, each holding one model (one GPU each for .plan) (default: 1)",
    )
    g.add_argument("--batch", type=common.positive_int, default=16, help="images per inference call")
    g.add_argument(
        "--resume",
        action="store_true",
        help="OUTPUT exists from an earlier run: skip the images already in it, add the rest",
    )
    g.add_argument(
        "--rows-per-part",
        type=common.positive_int,
        default=1000,
        help="result rows per part file; an interrupted run keeps every whole part",
    )
    g.add_argument(
        "--gpus-per-actor",
        type=common.finite_float,
        default=None,
        help="GPUs each actor reserves (default: 1 for TensorRT plans, else 0)",
    )
    g.add_argument(
        "--object-store-mb",
        type=common.positive_int,
        default=512,
        help="object store of a locally started Ray, MB (ignored with a cluster ADDRESS)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-detect", "Detect objects in many images; one row per image in Parquet or JSON lines."
    )
    common.add_engine(p)
    p.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT.parquet|OUT.jsonl",
        help="results folder to create (or to add to with --resume); its folder must exist",
    )
    p.add_argument(
        "--min-score", type=common.unit_interval, default=0.3, help="keep detections scoring at least this"
    )
    common.add_detect_overrides(p)
    common.add_device(p)
    add_dataset_arguments(p)
    return p


def _options(args: argparse.Namespace) -> Any:
    from ..batch import RunOptions
    from ..contract import artifact_kind

    device = getattr(args, "device", None)
    backend = (
        {"device": device} if device and device != "auto" and artifact_kind(args.engine) == "onnx" else {}
    )
    return RunOptions(
        engine=args.engine, inputs=args.input, output=args.output,
        use_ray=args.ray is not None, ray_address=None if args.ray in (None, "local") else args.ray,
        actors=args.actors, batch_size=args.batch, resume=args.resume, min_score=args.min_score,
        overrides=common.detect_overrides(args), backend_options=backend,
        gpus_per_actor=args.gpus_per_actor, rows_per_part=args.rows_per_part,
        object_store_bytes=args.object_store_mb * 1024 * 1024,
    )  # fmt: skip


class _Bar:
    """A rich progress bar on stderr with images/s, counting from the first call."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("detect"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self.progress.start()
            self.task = self.progress.add_task("detect", total=total, rate="-")
            self.t0 = time.perf_counter()
        dt = time.perf_counter() - self.t0
        rate = f"{done / dt:.1f}" if dt > 0 and done else "-"
        self.progress.update(self.task, completed=done, total=total, rate=rate)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def execute_dataset(args: argparse.Namespace) -> int:
    """Run dataset mode for parsed ``args`` (the flags of :func:`build_parser`)."""
    from ..batch import run

    opts = _options(args)
    bar = _Bar(enabled=not getattr(args, "quiet", False))
    try:
        s = run(opts, progress=bar)
    finally:
        bar.close()
    skipped = f", {s.skipped} skipped as already done" if s.skipped else ""
    print(f"{s.output}: wrote {s.written} rows ({s.errors} errors{skipped}) in {s.parts} part file(s), "
          f"{s.seconds:.1f} s, {s.images_per_s:.2f} images/s")  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute_dataset, argv)


if __name__ == "__main__":
    sys.exit(main())
