"""``python -m ssd_deploy.export`` (``ssd-export``): SSD300/SSD512 to ONNX with priors, dynamic batch
and the config in the metadata (the library is :mod:`ssd_deploy.export`)."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..config import make_config
from ..export import (
    DEFAULT_OPSET,
    ExportError,
    _require_torch,
    check_finite_weights,
    default_output,
    export_onnx,
    load_model,
    weights_info,
)
from . import common

#: Opsets the exporter is checked with; below 18 torch's exporter down-converts (and may fail).
OPSETS = range(17, 24)
#: More classes than any detection dataset; a guard against a typo allocating gigabytes of head weights.
MAX_CLASSES = 2000


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-export",
        "Export SSD300/SSD512 (VGG16) to ONNX with priors, dynamic batch and the config in metadata.",
    )
    p.add_argument("--size", type=int, choices=(300, 512), default=300, help="input size")
    p.add_argument(
        "--config",
        choices=("voc", "coco"),
        default=None,
        help="dataset preset: class names and prior boxes (default: what --weights implies, else voc)",
    )
    p.add_argument(
        "--num-classes",
        type=common.positive_int,
        default=None,
        help="classes including background (default: from --weights, else 21 voc / 81 coco)",
    )
    p.add_argument(
        "--prior",
        default=None,
        help="prior config by name (voc300, coco300, voc512, coco512) when it must differ from --config; "
        "ssd.pytorch used coco priors for every class count other than 21",
    )
    p.add_argument(
        "--weights", default=None, help="ssd.pytorch, vgg16_reducedfc or torchvision ssd300_vgg16 checkpoint"
    )
    p.add_argument(
        "--channel-order",
        choices=("RGB", "BGR"),
        default=None,
        help="input channel order the weights expect (ssd.pytorch: RGB; caffe-converted: BGR)",
    )
    p.add_argument(
        "--mean",
        type=common.finite_float,
        nargs=3,
        default=None,
        metavar=("C0", "C1", "C2"),
        help="per-channel mean in the model's channel order",
    )
    p.add_argument("--output", "-o", default=None, help="output path (default export/ssd<size>.onnx)")
    p.add_argument(
        "--opset",
        type=int,
        choices=OPSETS,
        metavar=f"{OPSETS[0]}-{OPSETS[-1]}",
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights used when no --weights is given"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument(
        "--end-to-end",
        action="store_true",
        help="also put decode + Detect in the graph: outputs detections [N,D,6] and "
        "num_detections [N] (docs/end_to_end.md)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    if args.num_classes is not None and not 2 <= args.num_classes <= MAX_CLASSES:
        raise ExportError(
            f"--num-classes {args.num_classes}: expected 2..{MAX_CLASSES} (background included)"
        )
    out = common.output_file(args.output or default_output(args.size), suffixes=(".onnx",))
    if args.weights is not None and not Path(args.weights).is_file():
        raise ExportError(f"{args.weights}: no such file")
    _require_torch()
    from ..model import load_state_dict
    from ..model.checkpoint import config_for_state_dict, describe_detect

    size = args.size
    if args.weights is not None:
        # The checkpoint's format decides priors, names, channel order, mean and Detect
        # (docs/checkpoints.md); flags given explicitly override it.
        sd = load_state_dict(args.weights)
        config = config_for_state_dict(
            sd, str(args.weights), dataset=args.config, size=size, num_classes=args.num_classes,
            prior=args.prior, channel_order=args.channel_order, mean=args.mean,
        ).config  # fmt: skip
    else:
        # Priors and names follow the dataset, never the class count (docs/ssd.md, "Priors").
        config = make_config(
            size=size, dataset=args.config or "voc", num_classes=args.num_classes, prior=args.prior,
            channel_order=args.channel_order, mean=args.mean,
        )  # fmt: skip
    if args.end_to_end:  # limits checked before the (slow) export, so bad input writes nothing
        from ..endtoend import check_end_to_end

        check_end_to_end(config, source=str(out))
    con.print(
        f"[bold]ssd_deploy export[/bold] {config.name}: size {size}, {config.num_classes} classes, "
        f"priors {config.prior.name}, {config.channel_order} mean {config.mean}"
    )
    con.print(f"  Detect: {describe_detect(config.detect)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.weights, config, seed=args.seed)
    check_finite_weights(model, args.weights or "seeded weights")
    for w in caught:
        con.print(f"[yellow]warning:[/yellow] {w.message}")
    report = export_onnx(
        model, config, out, opset=args.opset, weights=weights_info(args.weights, args.seed),
        verify=not args.no_verify, log=lambda m: con.print(f"  {m}"),
    )  # fmt: skip
    if report.max_abs_diff:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in report.max_abs_diff.items())
        con.print(f"  ONNX Runtime vs PyTorch max abs diff: {diffs}  [green]ok[/green]")
    if args.end_to_end:
        from ..endtoend import add_end_to_end

        spec = add_end_to_end(out, out)
        con.print(
            f"  end-to-end: detections [N, {spec.max_detections}, 6] + num_detections [N] "
            f"(conf > {spec.conf_thresh}, top_k {spec.top_k}, NMS IoU > {spec.nms_thresh}"
            f"{', keep_top_k ' + str(spec.keep_top_k) if spec.keep_top_k else ''})"
        )
    mb = out.stat().st_size / 1e6
    con.print(f"wrote {out} ({mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0
