"""ONNX graph helpers for the precision passes: indexing, pattern finding, topological order.

The SSD hazards are found by structure first (a channel L2 normalisation is ``x / sqrt(sum x^2)``
however the exporter names its nodes) and by the torch module scope the exporter records in each
node's ``metadata_props`` second, so a renamed or re-exported graph is still handled.
"""

from __future__ import annotations

import fnmatch
import heapq
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import NodeProto, TensorProto, numpy_helper

from ..contract import CONF, LOC
from ..errors import InputError

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16

#: Ops that only move or select data; a head's Conv is found by walking back through them.
LAYOUT_OPS = frozenset(
    {
        "Transpose",
        "Reshape",
        "Flatten",
        "Concat",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Cast",
        "Softmax",
        "LogSoftmax",
        "Sigmoid",
        "Slice",
        "Split",
    }
)
#: Ops whose output is non-negative whenever their data inputs are (used for the CPU INT8 flavour).
_SIGN_PRESERVING = frozenset(
    {
        "MaxPool",
        "Concat",
        "Reshape",
        "Transpose",
        "Flatten",
        "Identity",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Split",
        "AveragePool",
        "GlobalAveragePool",
    }
)


class GraphError(InputError):
    """The graph does not have the structure a precision pass needs."""


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file with its weights; one-line errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"{p}: no such file")
    try:
        return onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise GraphError(f"{p}: not a readable ONNX file ({type(e).__name__})") from None


def ensure_node_names(graph: onnx.GraphProto) -> None:
    """Give every node a unique name (reports and exclusion lists refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (stable: keeps the original order where it can)."""
    available = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    nodes = list(graph.node)
    waiting_on: dict[str, list[int]] = defaultdict(list)
    missing = [{t for t in node.input if t not in available} for node in nodes]
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    for idx, need in enumerate(missing):
        for t in need:
            if t not in produced_by:
                raise GraphError(f"node {nodes[idx].name} reads {t!r}, which nothing produces")
            waiting_on[t].append(idx)
    ready = [i for i, need in enumerate(missing) if not need]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for t in nodes[i].output:
            for j in waiting_on.pop(t, ()):
                missing[j].discard(t)
                if not missing[j]:
                    heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise GraphError("the graph has a cycle")
    del graph.node[:]
    graph.node.extend(order)


def module_scope(node: NodeProto) -> str:
    """The torch module path recorded by the exporter (``ssd.vgg.21``), or ``""``."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            # "<root>: Cls/ssd.vgg.21: torch.nn.Conv2d/conv2d_9: aten.conv2d" -> innermost module path
            parts = [p.split(":", 1)[0].strip() for p in prop.value.split("/")]
            mods = [p for p in parts[:-1] if p and "." in p and not p.startswith("<")]
            return mods[-1] if mods else ""
    return ""


def module_classes(node: NodeProto) -> tuple[str, ...]:
    """Class names of the enclosing torch modules (``('SSDHeads', 'L2Norm')``), innermost last."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.class_hierarchy":
            names = re.findall(r"'([^']+)'", prop.value)
            return tuple(n.rsplit(".", 1)[-1] for n in names)
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return tuple(
                seg.split(":", 1)[1].strip().rsplit(".", 1)[-1] for seg in prop.value.split("/") if ":" in seg
            )
    return ()


class GraphIndex:
    """Producers, consumers, initializers and element types of one model's main graph.

    Unnamed nodes are given names in place (reports and ``--exclude`` refer to nodes by name).
    """

    def __init__(self, model: onnx.ModelProto, infer_types: bool = True) -> None:
        self.model = model
        self.graph = model.graph
        ensure_node_names(self.graph)
        self.initializers: dict[str, TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        self.nodes: dict[str, NodeProto] = {}
        for node in self.graph.node:
            self.nodes[node.name] = node
            for t in node.output:
                self.producer[t] = node
            for t in node.input:
                if t:
                    self.consumers[t].append(node)
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in self.graph.output]
        self.types: dict[str, int] = {}
        self._collect_types(infer_types)
        self._constant: dict[str, bool] = {}

    def _collect_types(self, infer: bool) -> None:
        value_infos = list(self.graph.value_info)
        if infer:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=False)
                value_infos = list(inferred.graph.value_info) + value_infos
            except Exception:  # noqa: BLE001 - fall back on what the file declares
                pass
        for vi in list(self.graph.input) + list(self.graph.output) + value_infos:
            et = vi.type.tensor_type.elem_type
            if et:
                self.types.setdefault(vi.name, et)
        for name, t in self.initializers.items():
            self.types[name] = t.data_type
        for node in self.graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.types[node.output[0]] = a.t.data_type

    def elem_type(self, tensor: str) -> int | None:
        return self.types.get(tensor)

    def is_float(self, tensor: str) -> bool:
        return self.types.get(tensor) == FLOAT

    def is_constant(self, tensor: str) -> bool:
        """True when ``tensor`` is computed from initializers/Constants only (no graph input)."""
        if tensor in self._constant:
            return self._constant[tensor]
        if tensor in self.initializers:
            result = True
        elif tensor in self.graph_inputs or tensor not in self.producer:
            result = False
        else:
            node = self.producer[tensor]
            result = all(self.is_constant(t) for t in node.input if t)
        self._constant[tensor] = result
        return result

    def node_is_constant(self, node: NodeProto) -> bool:
        return all(self.is_constant(t) for t in node.input if t)

    def array(self, name: str):  # -> np.ndarray
        return numpy_helper.to_array(self.initializers[name])

    def scalar_constant(self, tensor: str) -> float | None:
        """The value of a one-element constant tensor, else ``None``."""
        if tensor in self.initializers:
            a = self.array(tensor)
        elif tensor in self.producer and self.producer[tensor].op_type == "Constant":
            attrs = {a.name: a for a in self.producer[tensor].attribute}
            if "value" not in attrs:
                return None
            a = numpy_helper.to_array(attrs["value"].t)
        else:
            return None
        return float(a.reshape(-1)[0]) if a.size == 1 else None

    def float_activations(self) -> list[str]:
        """Float tensors that vary with the input: graph inputs and non-constant node outputs."""
        out = [t for t in self.graph_inputs if self.is_float(t)]
        for node in self.graph.node:
            if self.node_is_constant(node):
                continue
            out.extend(t for t in node.output if t and self.is_float(t))
        return out

    def describe(self, node: NodeProto) -> str:
        scope = module_scope(node)
        return f"{node.name} ({node.op_type}{', ' + scope if scope else ''})"

    def nonnegative(self, tensor: str, _depth: int = 0) -> bool:
        """Structurally non-negative: a ReLU output, possibly pooled/reshaped/concatenated."""
        node = self.producer.get(tensor)
        if node is None or _depth > 32:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type in _SIGN_PRESERVING:
            data = [t for t in node.input[:1]] if node.op_type not in ("Concat",) else list(node.input)
            return all(self.nonnegative(t, _depth + 1) for t in data if t)
        return False


# -- SSD hazards ----------------------------------------------------------------------------------


def name_allocator(idx: GraphIndex) -> Callable[[str], str]:
    """A function returning tensor names unused in ``idx``'s graph (``base``, ``base_1``, ...)."""
    taken = set(idx.producer) | set(idx.initializers) | set(idx.graph_inputs)

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    return fresh


@dataclass
class L2NormMatch:
    """One channel L2 normalisation: its nodes, the normalised input and the final output."""

    nodes: list[str]
    input: str
    output: str
    found_by: str  # "pattern", "scope" or "pattern+scope"
    sum_of_squares: str | None = None  # the tensor that overflows FP16 first


def _single_consumer(idx: GraphIndex, tensor: str, ops: Iterable[str]) -> NodeProto | None:
    cons = idx.consumers.get(tensor, [])
    ops = set(ops)
    hits = [c for c in cons if c.op_type in ops]
    return hits[0] if len(hits) == 1 else None


def _is_square_of(idx: GraphIndex, node: NodeProto) -> str | None:
    """If ``node`` computes ``x*x`` (Pow(x, 2) or Mul(x, x)), return ``x``."""
    if node.op_type == "Pow" and len(node.input) == 2 and idx.scalar_constant(node.input[1]) == 2.0:
        return node.input[0]
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _norm_tail(idx: GraphIndex, x: str, norm: str, nodes: list[str]) -> tuple[str, list[str]] | None:
    """From ``norm`` (a tensor holding sqrt(sum x^2)) follow eps-add / Div(x, .) / Mul(weight)."""
    cur = norm
    for _ in range(2):  # optional "+ eps" or "max(., eps)" / Clip before the division
        nxt = _single_consumer(idx, cur, ("Add", "Max", "Clip"))
        if nxt is None or not all(idx.is_constant(t) for t in nxt.input if t and t != cur):
            break
        nodes.append(nxt.name)
        cur = nxt.output[0]
    div = None
    for c in idx.consumers.get(cur, []):
        if c.op_type == "Div" and c.input[0] == x and c.input[1] == cur:
            div = c
    if div is None:  # x * (1 / norm) is the other common spelling
        rec = _single_consumer(idx, cur, ("Reciprocal",))
        if rec is not None:
            for c in idx.consumers.get(rec.output[0], []):
                if c.op_type == "Mul" and set(c.input) == {x, rec.output[0]}:
                    nodes.append(rec.name)
                    div = c
    if div is None:
        return None
    nodes.append(div.name)
    out = div.output[0]
    scale = _single_consumer(idx, out, ("Mul",))
    if scale is not None and any(idx.is_constant(t) for t in scale.input if t != out):
        nodes.append(scale.name)
        out = scale.output[0]
    return out, nodes


def find_l2norm(idx: GraphIndex) -> list[L2NormMatch]:
    """Every channel L2 normalisation in the graph, by structure and by module scope."""
    matches: list[L2NormMatch] = []
    claimed: set[str] = set()
    for node in idx.graph.node:
        if node.op_type == "LpNormalization":
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("p", 2) == 2:
                nodes = [node.name]
                out = node.output[0]
                scale = _single_consumer(idx, out, ("Mul",))
                if scale is not None and any(idx.is_constant(t) for t in scale.input if t != out):
                    nodes.append(scale.name)
                    out = scale.output[0]
                matches.append(L2NormMatch(nodes, node.input[0], out, "pattern", None))
            continue
        if node.op_type not in ("ReduceSum", "ReduceSumSquare", "ReduceL2"):
            continue
        nodes: list[str] = []
        if node.op_type == "ReduceSum":
            sq = idx.producer.get(node.input[0])
            x = _is_square_of(idx, sq) if sq is not None else None
            if x is None:
                continue
            nodes = [sq.name, node.name]
        else:
            x = node.input[0]
            nodes = [node.name]
        ss = node.output[0]
        norm = ss
        if node.op_type != "ReduceL2":
            sqrt = _single_consumer(idx, ss, ("Sqrt",))
            if sqrt is None:
                continue
            nodes.append(sqrt.name)
            norm = sqrt.output[0]
        tail = _norm_tail(idx, x, norm, nodes)
        if tail is None:
            continue
        out, nodes = tail
        matches.append(L2NormMatch(nodes, x, out, "pattern", ss if node.op_type != "ReduceL2" else None))
        claimed.update(nodes)

    # Scope: nodes the exporter says belong to an ``L2Norm`` module. They join the structural match
    # they overlap with, or form a match of their own (a different spelling the pattern missed).
    scoped = [
        n
        for n in idx.graph.node
        if any(c.lower() in ("l2norm", "l2normalization") for c in module_classes(n))
    ]
    if scoped:
        names = [n.name for n in scoped]
        hit = next((m for m in matches if set(m.nodes) & set(names)), None)
        if hit is not None:
            extra = [n for n in names if n not in hit.nodes]
            hit.nodes.extend(extra)
            hit.found_by = "pattern+scope"
        else:
            inside = set(names)
            ins = [
                t
                for n in scoped
                for t in n.input
                if t
                and not idx.is_constant(t)
                and (t not in idx.producer or idx.producer[t].name not in inside)
            ]
            outs = [
                t
                for n in scoped
                for t in n.output
                if any(c.name not in inside for c in idx.consumers.get(t, [])) or t in idx.graph_outputs
            ]
            matches.append(L2NormMatch(names, ins[0] if ins else "", outs[-1] if outs else "", "scope", None))
    return matches


def find_heads(idx: GraphIndex, outputs: Sequence[str] = (LOC, CONF)) -> dict[str, list[str]]:
    """The Conv nodes feeding each named output through layout ops only (the SSD heads)."""
    heads: dict[str, list[str]] = {}
    for out in outputs:
        if out not in idx.producer:
            continue
        found: list[str] = []
        stack, seen = [out], set()
        while stack:
            t = stack.pop()
            if t in seen or t not in idx.producer:
                continue
            seen.add(t)
            node = idx.producer[t]
            if node.op_type in ("Conv", "ConvTranspose"):
                found.append(node.name)
            elif node.op_type in LAYOUT_OPS:
                stack.extend(i for i in node.input if i and not idx.is_constant(i))
        order = {n.name: i for i, n in enumerate(idx.graph.node)}
        heads[out] = sorted(found, key=order.__getitem__)
    return heads


def select_nodes(idx: GraphIndex, patterns: Sequence[str]) -> dict[str, str]:
    """Nodes named by ``patterns``: group names, node names, module scopes or ``fnmatch`` globs.

    Groups: ``heads`` (every loc/conf Conv), ``loc-heads``, ``conf-heads``, ``l2norm-heads`` (the
    Convs reading the L2Norm output), ``first-conv`` (the Conv reading the image). Returns
    ``{node name: the pattern that selected it}``; an unknown pattern raises :class:`GraphError`.
    """
    heads = find_heads(idx)
    chosen: dict[str, str] = {}
    for pat in patterns:
        pat = pat.strip()
        if not pat:
            continue
        hits: list[str] = []
        if pat in ("heads", "loc-heads", "conf-heads"):
            keys = ("loc", "conf") if pat == "heads" else (pat.split("-")[0],)
            hits = [n for k in keys for n in heads.get(k, [])]
        elif pat == "l2norm-heads":
            for m in find_l2norm(idx):
                hits += [c.name for c in idx.consumers.get(m.output, []) if c.op_type == "Conv"]
        elif pat == "first-conv":
            for t in idx.graph_inputs:
                hits += [c.name for c in idx.consumers.get(t, []) if c.op_type == "Conv"]
        else:
            for node in idx.graph.node:
                scope = module_scope(node)
                if (
                    node.name == pat
                    or scope == pat
                    or fnmatch.fnmatchcase(node.name, pat)
                    or (scope and fnmatch.fnmatchcase(scope, pat))
                ):
                    hits.append(node.name)
        if not hits:
            raise GraphError(
                f"--exclude {pat!r} matches no node (groups: heads, loc-heads, conf-heads, l2norm-heads, "
                "first-conv; or a node name, module scope such as ssd.conf.0, or a glob)"
            )
        for h in hits:
            chosen.setdefault(h, pat)
    return chosen


def subgraph_nodes(idx: GraphIndex, inputs: Sequence[str], outputs: Sequence[str]) -> list[NodeProto]:
    """Nodes on some path from ``inputs`` to ``outputs``, in graph order."""
    fwd: set[str] = set()
    frontier = list(inputs)
    reach: set[str] = set(inputs)
    while frontier:
        t = frontier.pop()
        for c in idx.consumers.get(t, []):
            if c.name not in fwd:
                fwd.add(c.name)
                for o in c.output:
                    if o not in reach:
                        reach.add(o)
                        frontier.append(o)
    back: set[str] = set()
    frontier = list(outputs)
    seen = set(outputs)
    while frontier:
        t = frontier.pop()
        node = idx.producer.get(t)
        if node is None or t in inputs:
            continue
        back.add(node.name)
        for i in node.input:
            if i and i not in seen:
                seen.add(i)
                frontier.append(i)
    keep = fwd & back
    return [n for n in idx.graph.node if n.name in keep]


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Update ``metadata_props`` in place, keeping every other key and the original order."""
    existing = {p.key: p for p in model.metadata_props}
    for k, v in values.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v


@dataclass
class NodeReport:
    """Why a node ended up in the precision it has (printed by the CLI, stored in the recipe)."""

    node: str
    op: str
    scope: str
    reason: str
    observed_max: float | None = None
    detail: dict[str, float] = field(default_factory=dict)
