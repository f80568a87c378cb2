"""Export SSD to ONNX (the library; the command ``python -m ssd_deploy.export`` is
:mod:`ssd_deploy.cli.export`).

The file holds the network heads (``loc``, softmax ``conf``) plus the constant ``priors``, a dynamic
batch dimension, and the full :class:`~ssd_deploy.config.SSDConfig` in its metadata so that a runtime
needs nothing else. The export checks the file with the ONNX checker and runs it once in ONNX Runtime
against PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import SSDConfig
from .contract import (
    CONF,
    CONFIG_KEY,
    INPUT,
    LOC,
    PRECISION_KEY,
    PRIORS,
    RECIPE_KEY,
    VERSION_KEY,
    WEIGHTS_KEY,
    sha256_file,
)
from .errors import SSDDeployError, one_line
from .fileio import atomic_output, output_problem

INPUT_NAME = INPUT
OUTPUT_NAMES = (LOC, CONF, PRIORS)
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
            # Softmax stays FP32 whatever the graph's precision later becomes (docs/precision.md).
            conf = torch.softmax(logits.float(), dim=-1)
            return loc, conf, self.ssd.priors

    return SSDHeads(model).eval()


def weights_info(path: str | os.PathLike[str] | None, seed: int) -> dict[str, Any]:
    """What the exported weights were, so ``ssd-check`` can rebuild the same reference."""
    if path is None:
        return {"source": "seeded-init", "seed": seed}
    p = Path(path)
    return {"source": "checkpoint", "path": str(p.resolve()), "sha256": sha256_file(p)}


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
        warn_untrained(
            "the exported SSD (no --weights given; the export is still valid for testing the pipeline)"
        )
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
        graph.node.append(helper.make_node("Identity", ["priors_table"], [PRIORS], name="priors_out"))
        out_priors.name = PRIORS
    if [o.name for o in graph.output] != list(OUTPUT_NAMES):
        raise ExportError(
            f"exported outputs are {[o.name for o in graph.output]}, expected {list(OUTPUT_NAMES)}"
        )
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
        CONFIG_KEY: config.to_json(),
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
                    dynamic_shapes={INPUT: {0: batch}},
                    external_data=False,
                    verbose=False,
                )
            except Exception as e:  # noqa: BLE001 - the exporter raises many types
                raise ExportError(
                    f"{out}: torch.onnx.export failed: {type(e).__name__}: {one_line(e)}"
                ) from e
        proto = _postprocess_graph(program.model_proto, config, meta)
        say("checking the graph (onnx.checker)")
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{out}: exported graph fails the ONNX checker: {one_line(e)}") from e
        onnx.save_model(proto, str(tmp))
        report = ExportReport(path=out, config=config, seconds=0.0, weights=weights or {})
        if verify:
            say(f"verifying with ONNX Runtime (CPU) against PyTorch at batch {verify_batch}")
            report.max_abs_diff = verify_export(module, tmp, config, batch=verify_batch)
    report.seconds = time.perf_counter() - t0
    return report


def verify_export(
    module: Any, onnx_path: str | os.PathLike[str], config: SSDConfig, batch: int = 2
) -> dict[str, float]:
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
            raise ExportError(
                f"{onnx_path}: output {name} differs from PyTorch by {d:.3g} (limit {limit:.3g})"
            )
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


def _version() -> str:
    from . import __version__

    return __version__


def default_output(size: int, directory: str | os.PathLike[str] = "export") -> Path:
    return Path(directory) / f"ssd{size}.onnx"


def check_finite_weights(model: Any, source: str) -> None:
    """Refuse weights with NaN or inf: they export fine and then detect nothing, silently."""
    torch = _require_torch()
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportError(f"{source}: tensor {name} has non-finite values (NaN or inf)")


if __name__ == "__main__":  # python -m ssd_deploy.export: the command lives in ssd_deploy.cli.export
    from .cli.export import main

    sys.exit(main())
