"""End-to-end artifacts: decode + Detect appended to an ssd_deploy ONNX graph (docs/end_to_end.md).

:func:`add_end_to_end` takes an FP32, FP16 or INT8 (Q/DQ) ssd_deploy ONNX file with outputs
``loc``/``conf`` (and ``priors``; without it the config's priors are baked in) and appends, with
standard ONNX ops only (opset >= 13), the numpy
Detect of :mod:`ssd_deploy.postprocess`:

1. decode every prior in FP32, operation by operation as :func:`ssd_deploy.ops.boxes.decode`;
2. per (image, foreground class): scores masked by ``conf > conf_thresh``, ``TopK(top_k)`` (ONNX
   TopK puts equal values in index order, so ties go by prior index as in the numpy Detect);
3. the boxes of those candidates gathered per class;
4. ``NonMaxSuppression`` with image x class folded into its batch axis. It is fed each candidate's
   *rank* (``K - position``), not its score: the candidates are already ordered, and rank scores
   are all distinct, so the runtime's own handling of equal scores never comes into play;
5. optionally the per-image cap ``keep_top_k`` (by score, ties by class then prior index);
6. a fixed-size output ``detections [N, D, 6]`` (x1, y1, x2, y2 normalised, score, class id;
   zero rows after ``num_detections [N]``), rows by class ascending then descending score.

``loc``, ``conf`` and ``priors`` stay outputs. The baked parameters, ``D`` and the row order are
written into the metadata under :data:`ssd_deploy.contract.END_TO_END_KEY`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, DetectParams, SSDConfig
from .contract import (
    CONF,
    DETECTIONS,
    END_TO_END_KEY,
    LOC,
    NUM_DETECTIONS,
    PRIORS,
)
from .errors import optional_import
from .fileio import atomic_output, output_problem
from .runtime.in_graph import EndToEndError, EndToEndSpec, read_end_to_end

__all__ = [
    "MAX_DETECTIONS",
    "MAX_TOP_K",
    "EndToEndError",
    "EndToEndSpec",
    "add_end_to_end",
    "build_end_to_end",
    "check_end_to_end",
    "preflight",
    "read_end_to_end",
]

#: TensorRT's TopK (ITopKLayer) takes K up to 3840; we keep K strictly below it, as issue 16 asks.
MAX_TOP_K = 3839
#: ONNX NonMaxSuppression in TensorRT (INMSLayer) considers at most 5000 boxes per call; a call
#: here sees ``top_k`` boxes, so :data:`MAX_TOP_K` already keeps it under that.
MAX_NMS_BOXES = 5000
#: Largest ``D``: ``detections [N, D, 6]`` at the export's largest batch (4096) stays under 2^31
#: elements (TensorRT's per-tensor volume limit) with D <= 65536.
MAX_DETECTIONS = 65536
#: Default extra candidates for :func:`_stable_top`: makes OpenVINO's unstable TopK exact unless more
#: than this many priors of one class tie at the top_k cut; 0 turns the sub-graph off.
DEFAULT_TIE_MARGIN = 32
_MIN_OPSET = 13
_FLOAT_EXACT = 1 << 24  # integers up to here are exact in float32
_P = "e2e/"  # prefix of every name this module adds


def _foreground(num_classes: int, background: int) -> list[int]:
    return [c for c in range(num_classes) if c != background]


def check_end_to_end(
    config: SSDConfig,
    params: DetectParams | None = None,
    source: str = "artifact",
    num_priors: int | None = None,
    tie_margin: int = DEFAULT_TIE_MARGIN,
) -> EndToEndSpec:
    """The spec an end-to-end graph of ``config`` would bake in; :class:`EndToEndError` when the
    graph cannot support it (``top_k`` or ``keep_top_k`` >= 3840, or ``D`` > 65536).
    ``num_priors`` is the graph's prior count when it is known (default: the config's)."""
    p = params or config.detect
    try:
        p.validate()
    except ConfigError as e:
        raise EndToEndError(f"{source}: {e}") from None
    k = min(p.top_k, num_priors or config.num_priors)
    if tie_margin < 0:
        raise EndToEndError(f"{source}: tie_margin must be >= 0, got {tie_margin}")
    tie_margin = min(tie_margin, max(MAX_TOP_K - k, 0))
    if tie_margin and (k + tie_margin) * (num_priors or config.num_priors) >= _FLOAT_EXACT:
        tie_margin = 0  # the float32 tie key would not be exact: rely on the runtime's TopK order
    if k > MAX_TOP_K:
        raise EndToEndError(
            f"{source}: --end-to-end supports top_k up to {MAX_TOP_K} (TensorRT TopK takes K < 3840), "
            f"got {p.top_k}"
        )
    if p.keep_top_k is not None and p.keep_top_k > MAX_TOP_K:
        raise EndToEndError(
            f"{source}: --end-to-end supports keep_top_k up to {MAX_TOP_K} (TensorRT TopK takes K < 3840), "
            f"got {p.keep_top_k}"
        )
    fg = len(_foreground(config.num_classes, p.background_label))
    d = fg * k
    if p.keep_top_k is not None:
        d = min(d, p.keep_top_k)
    if d > MAX_DETECTIONS:
        raise EndToEndError(
            f"{source}: --end-to-end output would hold D = {fg} classes x top_k {k} = {fg * k} rows "
            "per image; "
            f"the graph supports D <= {MAX_DETECTIONS} (lower top_k or set keep_top_k)"
        )
    return EndToEndSpec(
        conf_thresh=p.conf_thresh, nms_thresh=p.nms_thresh, top_k=k, keep_top_k=p.keep_top_k,
        background_label=p.background_label, num_classes=config.num_classes, max_detections=d,
        tie_margin=tie_margin,
    )  # fmt: skip


class _Builder:
    """Appends nodes and initializers with unique, prefixed names."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{_P}{hint}_{self._n}"

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64, "i")

    def scalar(self, value: int) -> str:
        return self.const(value, np.int64, "s")

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1,
           **attrs: Any) -> Any:  # fmt: skip
        from onnx import helper

        base = self.name(hint or op_type.lower())
        outs = (
            outputs
            if isinstance(outputs, list)
            else [base if i == 0 else f"{base}:{i}" for i in range(outputs)]
        )
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _float_output(b: _Builder, model: Any, name: str) -> str:
    from onnx import TensorProto

    out = next(o for o in model.graph.output if o.name == name)
    if out.type.tensor_type.elem_type == TensorProto.FLOAT:
        return name
    # FP16 graphs: the post-process runs in FP32 whatever the network's precision.
    return b.op("Cast", [name], f"{name}_fp32", to=TensorProto.FLOAT)


def _decode(b: _Builder, loc: str, priors: str, variances: tuple[float, float]) -> str:
    """Corner boxes ``[N, P, 4]``, op for op as :func:`ssd_deploy.ops.boxes.decode`."""
    two, four = b.i64(2), b.i64(4)
    zero, axis = b.i64(0), b.i64(-1)
    l_xy = b.op("Slice", [loc, zero, two, axis], "l_xy")
    l_wh = b.op("Slice", [loc, two, four, axis], "l_wh")
    p_xy = b.op("Slice", [priors, zero, two, axis], "p_xy")
    p_wh = b.op("Slice", [priors, two, four, axis], "p_wh")
    v0 = b.const(variances[0], np.float32, "v0")
    v1 = b.const(variances[1], np.float32, "v1")
    center = b.op("Add", [b.op("Mul", [b.op("Mul", [l_xy, v0]), p_wh]), p_xy], "center")
    wh = b.op("Mul", [p_wh, b.op("Exp", [b.op("Mul", [l_wh, v1])])], "wh")
    mins = b.op("Sub", [center, b.op("Div", [wh, b.const(2.0, np.float32, "two")])], "mins")
    maxs = b.op("Add", [mins, wh], "maxs")
    return b.op("Concat", [mins, maxs], "boxes", axis=-1)


def _stable_top(b: _Builder, val: str, idx: str, k_sel: int, k: int, num_priors: int) -> tuple[str, str]:
    """The ``k`` best of ``k_sel`` TopK results by (score desc, prior index asc), in that order.

    ONNX TopK orders equal values by index, but not every runtime does (OpenVINO's CPU TopK is not
    stable). The values TopK returns are right and sorted; only the indices inside a run of equal
    values may be permuted, and at the cut an arbitrary subset of a tied run may be chosen. So: number
    the runs (a cumulative sum of "value changed"), and take the ``k`` smallest of the float32 key
    ``run * P + index``, all distinct and exact below 2^24 (checked by :func:`check_end_to_end`).
    Exact as long as fewer than ``k_sel - k`` priors tie with the ``k``-th score (docs/end_to_end.md).
    """
    from onnx import TensorProto

    zero, one, last, axis = b.i64(0), b.i64(1), b.i64(k_sel - 1), b.i64(-1)
    prev = b.op("Concat", [b.op("Slice", [val, zero, one, axis]), b.op("Slice", [val, zero, last, axis])],
                "prev", axis=-1)  # fmt: skip
    changed = b.op("Cast", [b.op("Not", [b.op("Equal", [val, prev])])], "changed", to=TensorProto.FLOAT)
    run = b.op("CumSum", [changed, b.scalar(-1)], "run")
    key = b.op("Add", [b.op("Mul", [run, b.const(float(num_priors), np.float32, "P")]),
                       b.op("Cast", [idx], to=TensorProto.FLOAT)], "tie_key")  # fmt: skip
    _, order = b.op("TopK", [key, b.i64(k)], "tie_order", outputs=2, axis=-1, largest=0, sorted=1)
    return (b.op("GatherElements", [val, order], "val_top", axis=-1),
            b.op("GatherElements", [idx, order], "idx_top", axis=-1))  # fmt: skip


def build_end_to_end(model: Any, config: SSDConfig, spec: EndToEndSpec, source: str = "artifact") -> Any:
    """Append the end-to-end outputs to ``model`` (an ``onnx.ModelProto``, modified and returned)."""
    from onnx import TensorProto, helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    if (
        DETECTIONS in outputs
        or NUM_DETECTIONS in outputs
        or any(p.key == END_TO_END_KEY for p in model.metadata_props)
    ):
        raise EndToEndError(f"{source}: already has the end-to-end outputs ({DETECTIONS}, {NUM_DETECTIONS})")
    missing = [n for n in (LOC, CONF) if n not in outputs]
    if missing:
        raise EndToEndError(f"{source}: no output(s) {', '.join(missing)}; expected an ssd_deploy export")
    opset = _opset(model)
    if opset < _MIN_OPSET:
        raise EndToEndError(f"{source}: opset {opset}; --end-to-end needs opset >= {_MIN_OPSET}")

    b = _Builder(graph)
    k, d = spec.top_k, spec.max_detections
    fg = _foreground(config.num_classes, spec.background_label)
    cf = len(fg)
    loc = _float_output(b, model, LOC)
    conf = _float_output(b, model, CONF)
    if PRIORS in outputs:
        priors = _float_output(b, model, PRIORS)
    else:  # exports without a priors output: the config's priors, as the numpy runtime uses
        from .priors import prior_boxes

        priors = b.const(prior_boxes(config.prior), np.float32, "priors_table")
    boxes = _decode(b, loc, priors, config.variances)  # [N, P, 4]

    # Shapes known only at run time: N (batch) and P from conf.
    shape = b.op("Shape", [conf], "conf_shape")
    n = b.op("Gather", [shape, b.i64(0)], "n", axis=0)  # [1]
    p = b.op("Gather", [shape, b.i64(1)], "p", axis=0)  # [1]

    # 2. per (image, foreground class) top_k over scores masked by conf > thresh.
    scores = b.op("Transpose", [conf], "scores_cm", perm=[0, 2, 1])  # [N, C, P]
    if cf != config.num_classes:
        scores = b.op("Gather", [scores, b.const(fg, np.int64, "fg")], "scores_fg", axis=1)  # [N, C', P]
    thresh = b.const(spec.conf_thresh, np.float32, "conf_thresh")
    above = b.op("Greater", [scores, thresh], "above")
    masked = b.op("Where", [above, scores, b.const(-1.0, np.float32, "minus1")], "masked")
    num_priors = _num_priors(model) or config.num_priors
    k_sel = min(k + spec.tie_margin, num_priors) if spec.tie_margin else k
    top_val, top_idx = b.op("TopK", [masked, b.i64(k_sel)], "topk", outputs=2, axis=-1, largest=1, sorted=1)
    if spec.tie_margin:
        top_val, top_idx = _stable_top(b, top_val, top_idx, k_sel, k, num_priors)
    valid = b.op("Greater", [top_val, thresh], "valid")  # [N, C', K]: real candidates come first

    # 3. boxes of the candidates: flat index image * P + prior into [N * P, 4].
    n_scalar, p_scalar = b.op("Squeeze", [n, b.i64(0)]), b.op("Squeeze", [p, b.i64(0)])
    images = b.op("Range", [b.const(0, np.int64, "r0"), n_scalar, b.const(1, np.int64, "r1")], "img")
    img_offset = b.op("Mul", [images, p_scalar], "img_offset")
    img_offset = b.op("Reshape", [img_offset, b.i64(-1, 1, 1)])
    flat_prior = b.op("Add", [top_idx, img_offset], "flat_prior")  # [N, C', K]
    boxes_flat = b.op("Reshape", [boxes, b.i64(-1, 4)], "boxes_flat")
    cand_boxes = b.op("Gather", [boxes_flat, b.op("Reshape", [flat_prior, b.i64(-1)])], "cand_boxes", axis=0)

    # 4. NMS with image x class as its batch axis, fed descending ranks: rank order = TopK order.
    nms_boxes = b.op("Reshape", [cand_boxes, b.i64(-1, k, 4)], "nms_boxes")  # [N*C', K, 4]
    ranks = b.const(np.arange(k, 0, -1), np.float32, "ranks")  # K .. 1
    rank_scores = b.op("Where", [valid, ranks, b.const(0.0, np.float32, "zero")], "rank_scores")
    nms_scores = b.op("Reshape", [rank_scores, b.i64(-1, 1, k)], "nms_scores")  # [N*C', 1, K]
    selected = b.op(
        "NonMaxSuppression",
        [nms_boxes, nms_scores, b.i64(k), b.const([spec.nms_thresh], np.float32, "iou"),
         b.const([0.5], np.float32, "score_floor")],
        "nms",
    )  # fmt: skip  # [M, 3]: (image*C' + class, 0, position)
    sel_batch = b.op("Gather", [selected, b.scalar(0)], "sel_batch", axis=1)
    sel_pos = b.op("Gather", [selected, b.scalar(2)], "sel_pos", axis=1)
    sel_flat = b.op("Add", [b.op("Mul", [sel_batch, b.i64(k)]), sel_pos], "sel_flat")  # [M]
    total = b.op("Mul", [n, b.i64(cf * k)], "total")
    zeros = b.op(
        "ConstantOfShape", [total], "kept0", value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])
    )
    ones = b.op("Expand", [b.const([1.0], np.float32, "one"), b.op("Shape", [sel_flat])], "ones")
    kept = b.op("ScatterElements", [zeros, sel_flat, ones], "kept", axis=0)  # [N*C'*K] 0/1
    kept = b.op("Reshape", [kept, b.i64(-1, cf * k)], "kept2d")  # [N, C'*K], class-major

    cand_scores = b.op("Reshape", [top_val, b.i64(-1, cf * k)], "cand_scores")
    if spec.keep_top_k is not None and spec.keep_top_k < cf * k:
        # 5. per-image cap: the keep_top_k best kept entries by score; TopK's ties go by index,
        # i.e. by class then prior rank, as in the numpy Detect.
        kept_bool = b.op("Greater", [kept, b.const(0.5, np.float32, "half")])
        cap_in = b.op("Where", [kept_bool, cand_scores, b.const(-1.0, np.float32, "minus1b")], "cap_in")
        cap_val, cap_idx = b.op("TopK", [cap_in, b.i64(spec.keep_top_k)], "cap", outputs=2, axis=1)
        cap_ok = b.op(
            "Cast", [b.op("Greater", [cap_val, b.const(-0.5, np.float32, "mhalf")])], to=TensorProto.FLOAT
        )
        kept = b.op("ScatterElements", [b.op("Mul", [kept, b.const(0.0, np.float32, "z0")]), cap_idx, cap_ok],
                    "kept_cap", axis=1)  # fmt: skip

    # 6. compaction: kept entries in class-major order go to rows 0..count-1 of their image.
    kept_i = b.op("Cast", [kept], "kept_i", to=TensorProto.INT64)
    dest = b.op("Sub", [b.op("CumSum", [kept_i, b.i64(1)]), kept_i], "dest")  # exclusive prefix sum
    count = b.op("ReduceSum", [kept_i, b.i64(1)], "count", keepdims=0)  # [N]
    where = b.op("Transpose", [b.op("NonZero", [b.op("Cast", [kept], to=TensorProto.BOOL)])], perm=[1, 0])
    row_img = b.op("Gather", [where, b.scalar(0)], "row_img", axis=1)  # [T]
    row_src = b.op("Gather", [where, b.scalar(1)], "row_src", axis=1)  # [T] position in C'*K
    src_flat = b.op("Add", [b.op("Mul", [row_img, b.i64(cf * k)]), row_src], "src_flat")
    row_dest = b.op("Gather", [b.op("Reshape", [dest, b.i64(-1)]), src_flat], "row_dest", axis=0)
    row_box = b.op("Gather", [cand_boxes, src_flat], "row_box", axis=0)  # [T, 4]
    row_score = b.op("Gather", [b.op("Reshape", [cand_scores, b.i64(-1)]), src_flat], "row_score", axis=0)
    class_of = b.const(np.repeat(np.asarray(fg, np.float32), k), np.float32, "class_of")  # [C'*K]
    row_class = b.op("Gather", [class_of, row_src], "row_class", axis=0)
    row = b.op("Concat", [row_box, b.op("Unsqueeze", [row_score, b.i64(1)]),
                          b.op("Unsqueeze", [row_class, b.i64(1)])], "row", axis=1)  # fmt: skip
    index = b.op("Concat", [b.op("Unsqueeze", [row_img, b.i64(1)]), b.op("Unsqueeze", [row_dest, b.i64(1)])],
                 "index", axis=1)  # fmt: skip
    out_shape = b.op("Concat", [n, b.i64(d, 6)], "out_shape", axis=0)
    blank = b.op(
        "ConstantOfShape", [out_shape], "blank", value=helper.make_tensor("z6", TensorProto.FLOAT, [1], [0.0])
    )
    b.op("ScatterND", [blank, index, row], outputs=[DETECTIONS])
    b.op("Cast", [count], outputs=[NUM_DETECTIONS], to=TensorProto.INT32)

    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim: Any = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else "batch")
    graph.output.append(helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, [batch_dim, d, 6]))
    graph.output.append(helper.make_tensor_value_info(NUM_DETECTIONS, TensorProto.INT32, [batch_dim]))
    entry = model.metadata_props.add()
    entry.key, entry.value = END_TO_END_KEY, spec.to_json()
    return model


def _load(path: Path) -> Any:
    onnx = optional_import("onnx", extra="export", purpose="--end-to-end")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise EndToEndError(f"{path}: cannot read it as ONNX: {type(e).__name__}") from None


def _conf_dim(model: Any, axis: int) -> int | None:
    """P (``axis`` 1) or C (``axis`` 2) from the static shape of ``conf [N, P, C]``; ``None`` if unknown."""
    out = next((o for o in model.graph.output if o.name == CONF), None)
    dims = out.type.tensor_type.shape.dim if out is not None else []
    return int(dims[axis].dim_value) if len(dims) == 3 and dims[axis].HasField("dim_value") else None


def _num_priors(model: Any) -> int | None:
    return _conf_dim(model, 1)


def _config_of(model: Any, source: str) -> SSDConfig:
    meta = {p.key: p.value for p in model.metadata_props}
    return SSDConfig.from_metadata(meta, source)


def _graph_config(model: Any, source: str) -> SSDConfig:
    """The metadata config, with the class count the graph's ``conf`` really has when it is static:
    the in-graph Detect, like the numpy one, post-processes what the network outputs."""
    config = _config_of(model, source)
    c = _conf_dim(model, 2)
    if c is None or c == config.num_classes:
        return config
    if c < 2:
        raise EndToEndError(f"{source}: conf has {c} class(es); expected background + at least one class")
    names = tuple(config.class_names[:c]) + tuple(f"class_{i}" for i in range(len(config.class_names), c))
    return config.replace(num_classes=c, class_names=names)


def add_end_to_end(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    params: DetectParams | None = None,
    tie_margin: int = DEFAULT_TIE_MARGIN,
) -> EndToEndSpec:
    """Write an end-to-end copy of ``in_path`` to ``out_path`` (default: in place), atomically.

    ``params`` overrides the Detect parameters to bake in (default: the artifact's config);
    ``tie_margin`` extra candidates are ranked by (score, prior index) in the graph (see
    :func:`_stable_top`; 0 relies on the runtime's TopK being stable, as ONNX specifies). Raises
    :class:`EndToEndError` (nothing written) for an artifact that already has the outputs, or whose
    ``top_k``/class count would exceed the limits of :func:`check_end_to_end`.
    """
    onnx = optional_import("onnx", extra="export", purpose="--end-to-end")
    src = Path(in_path)
    dst = Path(out_path) if out_path is not None else src
    if not src.is_file():
        raise EndToEndError(f"{src}: no such file")
    problem = output_problem(dst)
    if problem:
        raise EndToEndError(problem)
    model = _load(src)
    config = _graph_config(model, str(src))
    spec = check_end_to_end(config, params, str(src), _num_priors(model), tie_margin)
    build_end_to_end(model, config, spec, str(src))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EndToEndError(
            f"{src}: the end-to-end graph fails the ONNX checker: {e}".splitlines()[0]
        ) from None
    with atomic_output(dst) as tmp:
        onnx.save_model(model, str(tmp))
    return spec


def preflight(in_path: str | os.PathLike[str], params: DetectParams | None = None) -> EndToEndSpec:
    """The checks of :func:`add_end_to_end` that need no output: call before expensive work."""
    src = Path(in_path)
    model = _load(src)
    if any(o.name in (DETECTIONS, NUM_DETECTIONS) for o in model.graph.output) or any(
        p.key == END_TO_END_KEY for p in model.metadata_props
    ):
        raise EndToEndError(f"{src}: already has the end-to-end outputs ({DETECTIONS}, {NUM_DETECTIONS})")
    return check_end_to_end(_graph_config(model, str(src)), params, str(src), _num_priors(model))
