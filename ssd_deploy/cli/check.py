"""``ssd-check --engine ARTIFACT``: the deployed path against the PyTorch reference
(:mod:`ssd_deploy.check`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..check import CheckReport, check_artifact
from . import common


def print_report(report: CheckReport, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"ssd-check {report.artifact} ({report.precision}) vs {report.reference}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("limit", justify="right")
    lim = report.thresholds
    t.add_row("loc max abs err", f"{report.heads['loc']['max_abs']:.3g}", f"{lim['loc_max']:.3g}")
    t.add_row("loc mean abs err", f"{report.heads['loc']['mean_abs']:.3g}", "")
    t.add_row("conf max abs err", f"{report.heads['conf']['max_abs']:.3g}", f"{lim['conf_max']:.3g}")
    t.add_row("conf mean abs err", f"{report.heads['conf']['mean_abs']:.3g}", "")
    d = report.detections
    t.add_row(
        f"detections (score >= {report.min_score}) ref / artifact", f"{d['reference']} / {d['artifact']}", ""
    )
    t.add_row("matched / missing / extra", f"{d['matched']} / {d['missing']} / {d['extra']}", "")
    t.add_row("recall", f"{d['recall']:.4f}", f">= {lim['recall']}")
    t.add_row("precision", f"{d['precision']:.4f}", f">= {lim['precision']}")
    t.add_row(
        "score delta p95 / max",
        f"{d['p95_score_delta']:.3g} / {d['max_score_delta']:.3g}",
        f"p95 {lim['score_delta']:.3g}",
    )
    s = report.input_size
    t.add_row(
        f"box delta, {s}x{s} input px, p95 / max",
        f"{d['p95_box_delta_input_px']:.3g} / {d['max_box_delta_input_px']:.3g}",
        f"p95 {lim['box_px']:.3g}",
    )
    t.add_row(
        "box delta, image px, p95 / max", f"{d['p95_box_delta_px']:.3g} / {d['max_box_delta_px']:.3g}", ""
    )
    console.print(t)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]: " + "; ".join(report.failures)
    console.print(f"{len(report.images)} images, {report.seconds:.1f} s: {verdict}")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-check",
        "Compare an SSD artifact with the PyTorch reference on the same photos; "
        "exit 0 pass, 1 fail, 2 bad input.",
    )
    common.add_engine(p)
    p.add_argument(
        "--weights",
        default=None,
        help="PyTorch checkpoint of the reference (default: what the artifact's metadata records)",
    )
    p.add_argument("--images", default=None, help="folder of images (default: bundled sample photos)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument(
        "--min-score", type=common.unit_interval, default=0.1, help="compare detections scoring at least this"
    )
    p.add_argument("--batch", type=common.positive_int, default=4, help="images per inference call")
    common.add_device(p)
    common.add_precision(p)
    return p


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import InputError
    from ..fileio import atomic_write
    from ..samples import list_images

    if args.min_score <= 0:
        raise InputError("--min-score must be > 0: a check must compare actual detections")
    if args.json:
        common.output_file(args.json, suffixes=(".json",))
    images = list_images(args.images) if args.images else None
    report = check_artifact(
        args.engine,
        weights=args.weights,
        images=images,
        min_score=args.min_score,
        batch=args.batch,
        backend_options=common.backend_options(args, args.engine),
    )
    print_report(report, Console(highlight=False))
    if args.json:
        atomic_write(args.json, json.dumps(report.to_dict(), indent=1).encode())
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
