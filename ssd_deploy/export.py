"""Export SSD to ONNX: ``python -m ssd_deploy.export --size 300``.

The file holds the network heads (``loc``, softmax ``conf``) plus the constant ``priors``, a dynamic
batch dimension, and the full :class:`~ssd_deploy.config.SSDConfig` in its metadata so that a runtime
needs nothing else. The export checks the file with the ONNX checker and runs it once in ONNX Runtime
against PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import SSDDeployError
from .config import METADATA_KEY, PRECISION_KEY, RECIPE_KEY, VERSION_KEY, WEIGHTS_KEY, ConfigError, SSDConfig, make_config
from .fileio import atomic_output, output_problem

#: Metadata keys written next to the config.

INPUT_NAME = "images"
OUTPUT_NAMES = ("loc", "conf", "priors")
DEFAULT_OPSET = 18  # the lowest opset torch's exporter implements natively
#: Parity tolerance of the FP32 export: max |ort - torch| <= ATOL + RTOL * max |torch|.
ATOL, RTOL = 1e-4, 1e-4


class ExportError(SSDDeployError, RuntimeError):
    """The export could not be completed; one line, naming the file involved."""


@dataclass
class ExportReport:
    path: Path
    config: SSDConfig
    seconds: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ExportError(
            "PyTorch is not installed; export needs it: pip install 'ssd_deploy[export]' "
            "(CPU: add -c constraints/cpu.txt)"
        ) from None
    return torch


def build_export_module(model: Any) -> Any:
    """Wrap an ``SSD`` so its forward returns ``(loc, softmax(conf) in FP32, priors)``."""
    torch = _require_torch()

    class SSDHeads(torch.nn.Module):
        def __init__(self, ssd: Any) -> None:
            super().__init__()
            self.ssd = ssd

        def forward(self, images: Any) -> tuple[Any, Any, Any]:
            loc, logits = self.ssd.forward_heads(images)
            # Softmax stays FP32 whatever the graph's precision later becomes (SPEC section 6).
            conf = torch.softmax(logits.float(), dim=-1)
            return loc, conf, self.ssd.priors

    return SSDHeads(model).eval()


def weights_info(path: str | os.PathLike[str] | None, seed: int) -> dict[str, Any]:
    """What the exported weights were, so ``ssd-check`` can rebuild the same reference."""
    if path is None:
        return {"source": "seeded-init", "seed": seed}
    p = Path(path)
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"source": "checkpoint", "path": str(p.resolve()), "sha256": h.hexdigest()}


def load_model(
    weights: str | os.PathLike[str] | None,
    config: SSDConfig,
    seed: int = 0,
) -> Any:
    """The reference SSD in phase ``"train"`` (heads + priors), weights loaded or seeded."""
    from .model import SSD, init_weights, load_weights, warn_untrained

    model = SSD("train", config)
    init_weights(model, seed=seed)
    if weights is None:
        warn_untrained("the exported SSD (no --weights given; the export is still valid for testing the pipeline)")
    else:
        load_weights(model, weights)
    return model.eval()


def _postprocess_graph(proto: Any, config: SSDConfig, meta: dict[str, str]) -> Any:
    """Name the I/O as documented, make ``priors`` a node output, and attach metadata."""
    from onnx import helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    out_priors = graph.output[2]
    if out_priors.name in inits:
        # An initializer that is also a graph output is legal ONNX but trips some consumers
        # (TensorRT's parser among them); route it through an Identity node.
        inits[out_priors.name].name = "priors_table"
        graph.node.append(helper.make_node("Identity", ["priors_table"], ["priors"], name="priors_out"))
        out_priors.name = "priors"
    if [o.name for o in graph.output] != list(OUTPUT_NAMES):
        raise ExportError(f"exported outputs are {[o.name for o in graph.output]}, expected {list(OUTPUT_NAMES)}")
    for out in graph.output[:2]:
        out.type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    helper.set_model_props(proto, meta)
    proto.doc_string = f"ssd_deploy export of {config.name}: inputs images[N,3,{config.size},{config.size}]"
    return proto


def export_onnx(
    model: Any,
    config: SSDConfig,
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    weights: dict[str, Any] | None = None,
    verify: bool = True,
    verify_batch: int = 2,
    log: Any = None,
) -> ExportReport:
    """Export ``model`` (an ``SSD``) to ``output``; written atomically, checked, verified.

    ``log`` is a callable taking one string (progress messages); ``None`` is silent.
    """
    torch = _require_torch()
    import onnx

    say = log or (lambda msg: None)
    out = Path(output)
    t0 = time.perf_counter()
    problem = output_problem(out)
    if problem:
        raise ExportError(problem)

    module = build_export_module(model)
    size = config.size
    example = torch.zeros(verify_batch, 3, size, size)
    meta = {
        METADATA_KEY: config.to_json(),
        PRECISION_KEY: "fp32",
        RECIPE_KEY: json.dumps({"precision": "fp32"}),
        WEIGHTS_KEY: json.dumps(weights or {}),
        VERSION_KEY: _version(),
    }

    say(f"tracing {config.name} ({config.num_classes} classes, {config.num_priors} priors, opset {opset})")
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_output(out, make_parents=False) as tmp:
        sink = io.StringIO()
        # The exporter prints step banners and warnings of its own; keep our output readable and
        # surface them only if it fails.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_logging():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    module,
                    (example,),
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes={"images": {0: batch}},
                    external_data=False,
                    verbose=False,
                )
            except Exception as e:  # noqa: BLE001 - the exporter raises many types
                raise ExportError(f"{out}: torch.onnx.export failed: {type(e).__name__}: {_first_line(e)}") from e
        proto = _postprocess_graph(program.model_proto, config, meta)
        say("checking the graph (onnx.checker)")
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{out}: exported graph fails the ONNX checker: {_first_line(e)}") from e
        onnx.save_model(proto, str(tmp))
        report = ExportReport(path=out, config=config, seconds=0.0, weights=weights or {})
        if verify:
            say(f"verifying with ONNX Runtime (CPU) against PyTorch at batch {verify_batch}")
            report.max_abs_diff = verify_export(module, tmp, config, batch=verify_batch)
    report.seconds = time.perf_counter() - t0
    return report


def verify_export(module: Any, onnx_path: str | os.PathLike[str], config: SSDConfig, batch: int = 2) -> dict[str, float]:
    """Run the ONNX file and the PyTorch module on the same seeded input; max abs diff per output.

    Raises :class:`ExportError` when any output differs by more than ``ATOL + RTOL * max|ref|``.
    """
    torch = _require_torch()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    # Inputs in the range real preprocessed images have (0..255 minus a ~115 mean).
    x = rng.uniform(-125.0, 130.0, size=(batch, 3, config.size, config.size)).astype(np.float32)
    with torch.inference_mode():
        ref = [t.numpy() for t in module(torch.from_numpy(x))]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    diffs: dict[str, float] = {}
    for name, r, g in zip(OUTPUT_NAMES, ref, got):
        if r.shape != g.shape:
            raise ExportError(f"{onnx_path}: output {name} has shape {g.shape}, PyTorch gives {r.shape}")
        d = float(np.max(np.abs(r.astype(np.float64) - g)))
        diffs[name] = d
        limit = ATOL + RTOL * float(np.max(np.abs(r)))
        if not d <= limit:
            raise ExportError(f"{onnx_path}: output {name} differs from PyTorch by {d:.3g} (limit {limit:.3g})")
    return diffs


@contextlib.contextmanager
def _quiet_logging() -> Any:
    """Mute library log records below ERROR (torch's exporter logs per-op notes) for the block."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _version() -> str:
    from . import __version__

    return __version__


def default_output(size: int, directory: str | os.PathLike[str] = "export") -> Path:
    return Path(directory) / f"ssd{size}.onnx"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ssd_deploy.export",
        description="Export SSD300/SSD512 (VGG16) to ONNX with priors, dynamic batch and the config in metadata.",
    )
    p.add_argument("--size", type=int, choices=(300, 512), default=300, help="input size (default 300)")
    p.add_argument("--config", choices=("voc", "coco"), default=None,
                   help="dataset preset: class names and prior boxes (default: voc for 21 classes, else coco)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes including background (default: from --weights, else 21 voc / 81 coco)")
    p.add_argument("--prior", default=None,
                   help="prior config by name (voc300, coco300, voc512, coco512) when it must differ from --config; "
                        "ssd.pytorch used coco priors for every class count other than 21")
    p.add_argument("--weights", default=None, help="ssd.pytorch, vgg16_reducedfc or torchvision ssd300_vgg16 checkpoint")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default=None,
                   help="input channel order the weights expect (ssd.pytorch: RGB; caffe-converted: BGR)")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("C0", "C1", "C2"),
                   help="per-channel mean in the model's channel order")
    p.add_argument("--output", "-o", default=None, help="output path (default export/ssd<size>.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights used when no --weights is given")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--end-to-end", action="store_true",
                   help="also put decode + Detect in the graph: outputs detections [N,D,6] and "
                        "num_detections [N] (docs/end_to_end.md)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    args = _parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    con = Console(highlight=False, soft_wrap=True)
    try:
        return _run(args, con)
    except _input_errors() as e:
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        return 2


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (one line, exit 2) rather than a bug (traceback)."""
    from .errors import InputError

    errors: list[type[BaseException]] = [ExportError, ConfigError, OSError, InputError]
    try:
        from .model.weights import WeightsError
    except ImportError:  # no torch: _run reports that as an ExportError
        pass
    else:
        errors.append(WeightsError)
    return tuple(errors)


def _run(args: argparse.Namespace, con: Any) -> int:
    t0 = time.perf_counter()
    _require_torch()
    from .model import infer_layout, load_state_dict

    num_classes = args.num_classes
    size = args.size
    if args.weights is not None:
        sd = load_state_dict(args.weights)
        w_size, w_classes = infer_layout(sd)
        if w_size != size:
            raise ExportError(f"{args.weights}: the checkpoint is an SSD{w_size}, --size is {size}")
        if num_classes is not None and num_classes != w_classes:
            raise ExportError(
                f"{args.weights}: the checkpoint has {w_classes} classes, --num-classes says {num_classes}"
            )
        num_classes = w_classes
    dataset = args.config or ("voc" if num_classes in (None, 21) else "coco")
    config = make_config(
        size=size, dataset=dataset, num_classes=num_classes, prior=args.prior,
        channel_order=args.channel_order, mean=args.mean,
    )  # fmt: skip
    out = Path(args.output) if args.output else default_output(size)
    if args.end_to_end:  # limits checked before the (slow) export, so bad input writes nothing
        from .endtoend import check_end_to_end

        check_end_to_end(config, source=str(out))
    con.print(f"[bold]ssd_deploy export[/bold] {config.name}: size {size}, {config.num_classes} classes, "
              f"priors {config.prior.name}, {config.channel_order} mean {config.mean}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(args.weights, config, seed=args.seed)
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
        from .endtoend import add_end_to_end

        spec = add_end_to_end(out, out)
        con.print(f"  end-to-end: detections [N, {spec.max_detections}, 6] + num_detections [N] "
                  f"(conf > {spec.conf_thresh}, top_k {spec.top_k}, NMS IoU > {spec.nms_thresh}"
                  f"{', keep_top_k ' + str(spec.keep_top_k) if spec.keep_top_k else ''})")
    mb = out.stat().st_size / 1e6
    con.print(f"wrote {out} ({mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
