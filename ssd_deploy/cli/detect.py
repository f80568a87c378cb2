"""``ssd-detect --engine ARTIFACT IMAGE|DIR... [--output DIR]``: detections as JSON and annotated PNGs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_output, atomic_write
from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-detect", "Run an SSD artifact on images; write <image>.json and an annotated <image>.png."
    )
    p.epilog = (
        "Many images to Parquet or JSON lines, optionally on Ray: ssd-detect --engine A --input DIR "
        "--output OUT.parquet [--ray] (see ssd-detect --input X --help, docs/batch.md)"
    )
    common.add_engine(p)
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument(
        "--samples", action="store_true", help="also run on the bundled sample photos (scikit-image)"
    )
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="folder for <image>.json and <image>.png (default: print JSON to stdout)",
    )
    p.add_argument(
        "--min-score",
        type=common.unit_interval,
        default=0.3,
        help="report and draw detections scoring at least this",
    )
    common.add_device(p)
    common.add_precision(p)
    common.add_detect_overrides(p)
    return p


def collect_images(items: Sequence[str], samples: bool) -> list[Path]:
    """Files named on the command line, the images inside named folders, and the sample photos."""
    from ..samples import list_images, sample_images

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(list_images(p))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if samples:
        files.extend(sample_images())
    if not files:
        raise InputError("no images given: pass image files or folders, or --samples")
    return files


def output_stems(files: Sequence[Path]) -> list[str]:
    """One output name per input; inputs that share a stem get ``_2``, ``_3``... so none overwrites
    another.
    """
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        stems.append(f.stem if n == 1 else f"{f.stem}_{n}")
    return stems


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..preprocess import load_image

    files = collect_images(args.images, args.samples)
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    overrides = common.detect_overrides(args)
    det = common.open_detector(args)
    images = [load_image(f) for f in files]  # every input decodes before any output is written
    # Pipes and CI logs get a fixed, wide table instead of rich's 80-column fallback.
    con = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    untrained = " - UNTRAINED seeded weights: boxes are meaningless" if det.untrained else ""
    table = Table(title=f"{det.config.name} on {det.backend.name} ({det.backend.precision}){untrained}")
    for col in ("image", "size", f"n >= {args.min_score}", "best", "ms"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    records, shown_all = [], []
    for f, rgb in zip(files, images):
        t0 = time.perf_counter()
        res = det.detect(rgb, **overrides)
        ms = (time.perf_counter() - t0) * 1e3
        shown = res.above(args.min_score)
        top = f"{shown.class_names[0]} {shown.scores[0]:.2f}" if len(shown) else "-"
        table.add_row(f.name, f"{rgb.shape[1]}x{rgb.shape[0]}", str(len(shown)), top, f"{ms:.1f}")
        records.append({"image": str(f), **shown.to_dict()})
        shown_all.append(shown)
    con.print(table)
    if out is None:
        con.print_json(json.dumps(records))
        return 0
    _write_outputs(out, files, images, records, shown_all, UNTRAINED_BANNER if det.untrained else None)
    con.print(f"wrote {len(files)} JSON + PNG pairs to {out}/")
    return 0


UNTRAINED_BANNER = "UNTRAINED MODEL (seeded weights): these boxes are meaningless"


def _write_outputs(
    out: Path, files: Sequence[Path], images: Sequence, records: list, shown: list, banner: str | None
) -> None:
    """All outputs or none: files written before a failure or an interrupt are removed again."""
    from ..draw import draw_detections

    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for stem, rgb, record, dets in zip(output_stems(files), images, records, shown):
            written.append(atomic_write(out / f"{stem}.json", json.dumps(record, indent=1).encode()))
            with atomic_output(out / f"{stem}.png") as tmp:
                draw_detections(rgb, dets, banner=banner).save(tmp, format="PNG")
            written.append(out / f"{stem}.png")
    except BaseException:
        for w in written:
            w.unlink(missing_ok=True)
        if created_dir:
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def main(argv: Sequence[str] | None = None) -> int:
    # Dataset mode has its own flags (and --output means a results folder there): docs/batch.md.
    words = list(sys.argv[1:] if argv is None else argv)
    if any(w == "--input" or w.startswith("--input=") for w in words):
        from .detect_dataset import main as dataset_main

        return dataset_main(words)
    return common.run(build_parser, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
