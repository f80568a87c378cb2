"""Static API contract check: every TensorRT and cuda-python attribute that ssd_deploy's source uses
must exist in the real bindings' surface (dumped by ``trt_surface.py``), calls must match one of
the real signatures, assignments must hit writable properties, enum arguments must have the
parameter's enum type, and ``trt.X`` subclasses may only override methods that ``X`` has.

How the scan knows what an expression is:
- ``trt`` (or ``_trt``) is the TensorRT module, ``rt`` / ``cudart`` the CUDA runtime bindings;
- call results are typed from the real signatures' return types (``builder.create_builder_config()``
  is an ``IBuilderConfig``), and local assignments carry those types;
- receivers that come from elsewhere (attributes, parameters) are typed by name, see
  :data:`RECEIVERS`; the completeness check reports TensorRT-looking attribute names used on
  receivers that none of these rules typed, so nothing escapes the check silently.
Deprecated API (TensorRT's own ``[DEPRECATED]`` notes) is an error unless the line, or the line
above it, carries a ``trt-compat:`` comment explaining the version guard.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Names (leading underscores ignored) that denote instances of TensorRT classes.
RECEIVERS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "builder_config": "IBuilderConfig",
    "parser": "OnnxParser",
    "parser_error": "ParserError",
    "opt_profile": "IOptimizationProfile",
    "timing_cache": "ITimingCache",
    "host_mem": "IHostMemory",
    "serialized": "IHostMemory",
    "net_input": "ITensor",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "runtime": "Runtime",
    "trt_runtime": "Runtime",
}
#: Classes whose member names, used on an untyped receiver, count as unchecked TensorRT use.
CORE_CLASSES = (
    "Builder", "IBuilderConfig", "INetworkDefinition", "OnnxParser", "ParserError", "IOptimizationProfile",
    "ITimingCache", "IHostMemory", "ITensor", "ICudaEngine", "IExecutionContext", "Runtime", "ILogger",
    "IProgressMonitor",
)  # fmt: skip
TRT_MODULE_NAMES = {"trt"}
CUDART_MODULE_NAMES = {"rt", "cudart"}
#: pybind11 return-type spellings that differ from the Python class name.
TYPE_ALIASES = {"IParserError": "ParserError"}
#: Module dunders that every TensorRT module has but the dump leaves out.
MODULE_DUNDERS = {"__version__", "__name__", "__file__"}
COMPAT_MARK = "trt-compat:"


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class T:
    """What an expression evaluates to, as far as the scan knows."""

    space: str  # "trt" or "cudart"
    kind: str  # module | class | instance | callable | member | propvalue
    name: str  # qualified-ish name for messages
    rec: Any = None  # the dump record (class record, function record, ...)
    skip_self: bool = False  # bound method: the first signature parameter is supplied


def _norm(name: str) -> str:
    return name.lstrip("_")


def _last_component(type_text: str) -> str:
    base = re.split(r"[\[|]", type_text.strip(), maxsplit=1)[0]
    return re.split(r"\.|::", base)[-1].strip()


class Surfaces:
    def __init__(self, trt: dict[str, Any] | None, cudart: dict[str, Any] | None) -> None:
        self.spaces = {"trt": trt, "cudart": cudart}

    def module(self, space: str) -> dict[str, Any] | None:
        s = self.spaces.get(space)
        return s["names"] if s else None

    def version(self, space: str) -> str:
        s = self.spaces.get(space)
        return s.get("version", "") if s else ""

    def instance_of(self, space: str, type_text: str) -> T | None:
        names = self.module(space)
        if not names or not type_text:
            return None
        cls = TYPE_ALIASES.get(_last_component(type_text), _last_component(type_text))
        rec = names.get(cls)
        if rec and rec.get("kind") in ("class", "enum"):
            return T(space, "instance", cls, rec)
        return None

    def distinctive_names(self, space: str, generic: set[str]) -> set[str]:
        """Member names of the TensorRT classes a deployment touches, minus ``generic`` ones."""
        names = self.module(space) or {}
        out: set[str] = set()
        for cls in CORE_CLASSES:
            for attr in names.get(cls, {}).get("attrs") or {}:
                if not attr.startswith("_") and attr not in generic:
                    out.add(attr)
        return out


def _generic_names() -> set[str]:
    """Attribute names common on ordinary Python and numpy objects: not evidence of TensorRT."""
    import queue
    import threading

    import numpy as np

    out: set[str] = set()
    for obj in (object, str, bytes, list, dict, tuple, set, int, float, memoryview, Path, np.ndarray,
                np.dtype, threading.Lock(), queue.SimpleQueue, Exception):  # fmt: skip
        out.update(dir(obj))
    try:  # ONNX protobuf fields (model.graph.node, ...) are everyday names in this project
        import onnx

        for proto in (
            onnx.ModelProto,
            onnx.GraphProto,
            onnx.NodeProto,
            onnx.TensorProto,
            onnx.ValueInfoProto,
        ):
            out.update(dir(proto))
            out.update(f.name for f in proto.DESCRIPTOR.fields)
    except ImportError:
        pass
    out.update({"name", "shape", "dtype", "size", "value", "values", "flags", "reset", "log", "code", "line",
                "file", "func", "update", "query", "serialize", "engine", "logger", "builder"})  # fmt: skip
    return out


class _Checker(ast.NodeVisitor):
    def __init__(self, surfaces: Surfaces, path: str, source: str, check_untyped: bool) -> None:
        self.s = surfaces
        self.path = path
        self.lines = source.splitlines()
        self.findings: list[Finding] = []
        self.memo: dict[int, T | None] = {}
        self.scopes: list[dict[str, T]] = [{}]
        self.store_targets: set[int] = set()
        self.check_untyped = check_untyped
        self.untyped_attrs: list[ast.Attribute] = []
        #: Every API member the scan resolved, e.g. "IExecutionContext.execute_async_v3".
        self.used: set[str] = set()

    # -- reporting -----------------------------------------------------------------------------
    def report(self, node: ast.AST, msg: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), msg))

    def compat_marked(self, node: ast.AST) -> bool:
        ln = getattr(node, "lineno", 0)
        around = self.lines[max(ln - 2, 0) : ln]
        return any(COMPAT_MARK in line for line in around)

    def deprecated(self, node: ast.AST, what: str) -> None:
        if not self.compat_marked(node):
            self.report(
                node,
                f"{what} is deprecated in TensorRT {self.s.version('trt')} "
                f"(guard it by version and mark the line '# {COMPAT_MARK} why')",
            )

    # -- evaluation ----------------------------------------------------------------------------
    def eval(self, node: ast.AST) -> T | None:
        key = id(node)
        if key not in self.memo:
            self.memo[key] = self._eval(node)
        return self.memo[key]

    def _lookup_name(self, name: str) -> T | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        n = _norm(name)
        if n in TRT_MODULE_NAMES and self.s.module("trt") is not None:
            return T("trt", "module", "trt")
        if n in CUDART_MODULE_NAMES and self.s.module("cudart") is not None:
            return T("cudart", "module", "cudart")
        if n in RECEIVERS and self.s.module("trt"):
            rec = self.s.module("trt").get(RECEIVERS[n])
            if rec:
                return T("trt", "instance", RECEIVERS[n], rec)
        return None

    def _eval(self, node: ast.AST) -> T | None:
        if isinstance(node, ast.Name):
            return self._lookup_name(node.id)
        if isinstance(node, ast.Attribute):
            base = self.eval(node.value)
            if base is None:
                n = _norm(node.attr)
                if n in RECEIVERS and self.s.module("trt"):
                    rec = self.s.module("trt").get(RECEIVERS[n])
                    if rec:
                        return T("trt", "instance", RECEIVERS[n], rec)
                if n in TRT_MODULE_NAMES and self.s.module("trt") is not None:
                    return T("trt", "module", "trt")
                if n in CUDART_MODULE_NAMES and self.s.module("cudart") is not None:
                    return T("cudart", "module", "cudart")
                if self.check_untyped:
                    self.untyped_attrs.append(node)
                return None
            return self._attribute(node, base)
        if isinstance(node, ast.Call):
            func = self.eval(node.func)
            for a in node.args:
                self.eval(a.value if isinstance(a, ast.Starred) else a)
            for k in node.keywords:
                self.eval(k.value)
            return self._call(node, func)
        return None

    def _attribute(self, node: ast.Attribute, base: T) -> T | None:
        attr, space = node.attr, base.space
        storing = id(node) in self.store_targets
        found = self._attribute_inner(node, base, attr, space, storing)
        if (
            found is not None
            or attr in (base.rec or {}).get("attrs", {})
            or base.kind == "module"
            and attr in (self.s.module(space) or {})
        ):
            owner = base.name.split(".")[-1] if base.kind != "module" else base.name
            self.used.add(f"{owner}.{attr}")
        return found

    def _attribute_inner(
        self, node: ast.Attribute, base: T, attr: str, space: str, storing: bool
    ) -> T | None:
        if base.kind == "module":
            names = self.s.module(space) or {}
            if attr in MODULE_DUNDERS:
                return None
            rec = names.get(attr)
            if rec is None:
                self.report(node, f"{base.name}.{attr} does not exist in {self._lib(space)}")
                return None
            return self._from_record(space, f"{base.name}.{attr}", rec, node, via_class=True)
        if base.kind == "class":
            members = base.rec.get("members") or {}
            if attr in members:
                if members[attr].get("deprecated"):
                    self.deprecated(node, f"{base.name}.{attr}")
                return T(space, "member", f"{base.name}.{attr}", base.rec)
            rec = (base.rec.get("attrs") or {}).get(attr)
            if rec is None:
                self.report(node, f"{base.name}.{attr} does not exist in {self._lib(space)}")
                return None
            return self._from_record(space, f"{base.name}.{attr}", rec, node, via_class=True)
        if base.kind == "instance":
            rec = (base.rec.get("attrs") or {}).get(attr)
            if rec is None:
                self.report(node, f"{base.name} has no attribute {attr!r} in {self._lib(space)}")
                return None
            if rec.get("deprecated"):
                self.deprecated(node, f"{base.name}.{attr}")
            if rec["kind"] == "property":
                if storing:
                    if not rec.get("writable"):
                        self.report(node, f"{base.name}.{attr} is read-only in {self._lib(space)}")
                    return T(space, "propvalue", f"{base.name}.{attr}", rec)
                getter = rec.get("getter") or []
                ret = self.s.instance_of(space, getter[0]["returns"]) if getter else None
                return ret if ret is not None else T(space, "propvalue", f"{base.name}.{attr}", rec)
            if storing:
                self.report(
                    node,
                    f"{base.name}.{attr} is a method, not a property: assigning to it replaces the binding",
                )
                return None
            if rec["kind"] in ("method", "function"):
                return T(space, "callable", f"{base.name}.{attr}", rec, skip_self=True)
            if rec["kind"] == "staticmethod":
                return T(space, "callable", f"{base.name}.{attr}", rec)
            return None
        return None

    def _from_record(
        self, space: str, name: str, rec: dict[str, Any], node: ast.AST, via_class: bool
    ) -> T | None:
        kind = rec.get("kind")
        if rec.get("deprecated"):
            self.deprecated(node, name)
        if kind in ("class", "enum"):
            return T(space, "class", name, rec)
        if kind in ("function", "staticmethod"):
            return T(space, "callable", name, rec)
        if kind == "method":  # through the class: unbound, self is passed explicitly
            return T(space, "callable", name, rec, skip_self=False)
        if kind == "value":
            return T(space, "member", name, rec)
        return None

    def _call(self, node: ast.Call, func: T | None) -> T | None:
        if func is None:
            return None
        if func.kind == "propvalue":
            self.report(node, f"{func.name} is a property, not a method: drop the call parentheses")
            return None
        if func.kind == "class":
            if func.rec.get("kind") == "enum":
                return T(func.space, "member", func.name, func.rec)
            init = (func.rec.get("attrs") or {}).get("__init__")
            sigs = init.get("signatures") if init else []
            self._check_args(node, func.name, sigs or [], skip_self=True)
            return T(func.space, "instance", func.name.split(".")[-1], func.rec)
        if func.kind == "callable":
            sigs = func.rec.get("signatures") or []
            matched = self._check_args(node, func.name, sigs, skip_self=func.skip_self)
            ret = matched.get("returns") if matched else (sigs[0].get("returns") if sigs else "")
            return self.s.instance_of(func.space, ret or "")
        if func.kind in ("instance", "member"):
            self.report(node, f"{func.name} is not callable")
        return None

    def _arg_type_ok(self, arg: ast.AST, param_type: str) -> bool:
        t = self.memo.get(id(arg))
        if t is not None and t.kind == "member" and t.rec.get("kind") == "enum":
            want = _last_component(param_type)
            enum_name = t.name.split(".")[-2] if t.name.count(".") >= 2 else t.name
            if self._is_enum_name(t.space, want):
                return want == enum_name
        if isinstance(arg, ast.Constant):
            pt = param_type.strip()
            if (
                isinstance(arg.value, str)
                and pt
                and pt not in ("str", "object", "typing.Any")
                and "str" not in pt
            ):
                return False
        return True

    def _is_enum_name(self, space: str, name: str) -> bool:
        """Whether ``name`` is an enum of the module (top level or nested one level)."""
        names = self.s.module(space) or {}
        if names.get(name, {}).get("kind") == "enum":
            return True
        return any((rec.get("attrs") or {}).get(name, {}).get("kind") == "enum" for rec in names.values())

    def _check_args(
        self, node: ast.Call, name: str, sigs: list[dict[str, Any]], skip_self: bool
    ) -> dict[str, Any] | None:
        if not sigs:
            return None
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return sigs[0]
        npos, kws = len(node.args), [k.arg for k in node.keywords]
        for sig in sigs:
            params = [p for p in sig["params"] if p["kind"] != "marker"]
            if skip_self and params and params[0]["name"] in ("self", "arg0"):
                params = params[1:]
            positional = [p for p in params if p["kind"] == "positional"]
            var_pos = any(p["kind"] == "var_positional" for p in params)
            var_kw = any(p["kind"] == "var_keyword" for p in params)
            if npos > len(positional) and not var_pos:
                continue
            by_name = {p["name"]: p for p in params if p["kind"] in ("positional", "keyword_only")}
            if any(k not in by_name and not var_kw for k in kws):
                continue
            given = {p["name"] for p in positional[:npos]} | set(kws)
            required = [
                p["name"] for p in params if p["kind"] in ("positional", "keyword_only") and not p["default"]
            ]
            if any(r not in given for r in required):
                continue
            types_ok = all(self._arg_type_ok(a, p["type"]) for a, p in zip(node.args, positional))
            types_ok = types_ok and all(
                self._arg_type_ok(k.value, by_name[k.arg]["type"]) for k in node.keywords if k.arg in by_name
            )
            if types_ok:
                return sig
        shown = "; ".join(
            "("
            + ", ".join(f"{p['name']}: {p['type']}" if p["type"] else p["name"] for p in s["params"])
            + ")"
            for s in sigs
        )
        self.report(
            node, f"call {name}(...) with {npos} positional and keywords {kws} matches no signature: {shown}"
        )
        return None

    def _lib(self, space: str) -> str:
        return (
            f"TensorRT {self.s.version('trt')}"
            if space == "trt"
            else f"cuda-python {self.s.version('cudart') or ''}".strip()
        )

    # -- statements ----------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.scopes.append({})
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        for tgt in node.targets:
            self._mark_store(tgt)
        self.visit(node.value)
        value_t = self.eval(node.value)
        for tgt in node.targets:
            self.visit(tgt)
            if isinstance(tgt, ast.Name):
                if value_t is not None and value_t.kind == "instance":
                    self.scopes[-1][tgt.id] = value_t
                else:
                    self.scopes[-1].pop(tgt.id, None)
            if isinstance(tgt, ast.Attribute):
                self._check_assigned_value(tgt, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._mark_store(node.target)
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._mark_store(node.target)
        self.visit(node.value)
        self.visit(node.target)

    def _mark_store(self, tgt: ast.AST) -> None:
        if isinstance(tgt, ast.Attribute):
            self.store_targets.add(id(tgt))
        elif isinstance(tgt, (ast.Tuple, ast.List)):
            for e in tgt.elts:
                self._mark_store(e)

    def _check_assigned_value(self, tgt: ast.Attribute, value: ast.AST) -> None:
        base = self.memo.get(id(tgt.value))
        if base is None or base.kind != "instance":
            return
        rec = (base.rec.get("attrs") or {}).get(tgt.attr)
        if not rec or rec.get("kind") != "property" or not rec.get("setter"):
            return
        params = rec["setter"][0]["params"]
        if len(params) >= 2 and not self._arg_type_ok(value, params[1]["type"]):
            self.report(tgt, f"{base.name}.{tgt.attr} takes {params[1]['type']}, not the value assigned")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.eval(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        self.eval(node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self.eval(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for b in node.bases:
            self.visit(b)
        bases = [t for t in (self.eval(b) for b in node.bases) if t is not None and t.kind == "class"]
        for base in bases:
            self._check_subclass(node, base)
        self.scopes.append({})
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    def _check_subclass(self, node: ast.ClassDef, base: T) -> None:
        attrs = base.rec.get("attrs") or {}
        for item in node.body:
            if not isinstance(item, ast.FunctionDef):
                continue
            if item.name == "__init__":
                if not self._calls_base_init(item, base):
                    self.report(
                        item,
                        f"{node.name}.__init__ must call {base.name}.__init__(self) (pybind11 trampoline)",
                    )
                continue
            if item.name.startswith("_"):
                continue
            rec = attrs.get(item.name)
            if rec is None:
                # Helpers are fine; a near-miss of a callback name is a callback TensorRT never calls.
                methods = [k for k, v in attrs.items() if v.get("kind") == "method" and not k.startswith("_")]
                close = difflib.get_close_matches(item.name, methods, n=1, cutoff=0.8)
                if close:
                    self.report(
                        item,
                        f"{node.name}.{item.name} overrides nothing: {base.name} has {close[0]!r}, "
                        f"not {item.name!r}; TensorRT will never call it",
                    )
                continue
            if rec.get("kind") != "method":
                continue
            args = item.args
            ours = [a.arg for a in args.posonlyargs + args.args][1:]
            n_default = len(args.defaults)
            counts = {
                len([p for p in s["params"] if p["kind"] == "positional"]) - 1
                for s in rec.get("signatures") or []
            }
            if counts and not any(len(ours) - n_default <= c <= len(ours) or args.vararg for c in counts):
                self.report(
                    item,
                    f"{node.name}.{item.name} takes {len(ours)} arguments, "
                    f"{base.name}.{item.name} is called with {sorted(counts)}",
                )

    def _calls_base_init(self, fn: ast.FunctionDef, base: T) -> bool:
        for sub in ast.walk(fn):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr == "__init__"
            ):
                owner = sub.func.value
                if (
                    isinstance(owner, ast.Call)
                    and isinstance(owner.func, ast.Name)
                    and owner.func.id == "super"
                ):
                    return True
                t = self.memo.get(id(owner)) or self.eval(owner)
                if t is not None and t.kind == "class" and t.name == base.name:
                    return True
        return False


def defined_names(sources: Iterable[str]) -> set[str]:
    """Names the project itself defines as functions, methods, fields or attributes."""
    out: set[str] = set()
    for src in sources:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                out.add(node.target.id)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Attribute):
                            out.add(sub.attr)
    return out


def check_source(
    source: str,
    path: str,
    surfaces: Surfaces,
    check_untyped: bool = True,
    own_names: set[str] | None = None,
    used: set[str] | None = None,
) -> list[Finding]:
    """Findings for one source text; ``own_names``: project-defined names the untyped check ignores."""
    tree = ast.parse(source, filename=path)
    checker = _Checker(surfaces, path, source, check_untyped)
    checker.visit(tree)
    findings = list(checker.findings)
    if used is not None:
        used.update(checker.used)
    if check_untyped:
        generic = _generic_names() | defined_names([source]) | (own_names or set())
        distinctive = surfaces.distinctive_names("trt", generic)
        for node in checker.untyped_attrs:
            if node.attr in distinctive:
                findings.append(Finding(path, node.lineno, (
                    f"'.{node.attr}' looks like TensorRT API on a receiver the contract check cannot type; "
                    "assign it from a typed call or name it as in trt_contract.RECEIVERS"
                )))  # fmt: skip
    return sorted(set(findings), key=lambda f: (f.path, f.line, f.message))


def check_paths(
    paths: Iterable[Path], surfaces: Surfaces, root: Path | None = None, used: set[str] | None = None
) -> list[Finding]:
    paths = list(paths)
    texts = {p: p.read_text() for p in paths}
    own = defined_names(texts.values())
    out: list[Finding] = []
    for p, text in texts.items():
        rel = str(p.relative_to(root)) if root else str(p)
        out += check_source(text, rel, surfaces, own_names=own, used=used)
    return out


def uses_tensorrt(source: str) -> bool:
    """Whether a file touches the TensorRT module or the CUDA runtime bindings."""
    return bool(re.search(r"\b_?trt\.|\bload_tensorrt\(|\bload_cudart\(|\brt\.cuda|\bcudart\.", source))


# -- fakes vs the real surface ---------------------------------------------------------------------
def _real_param_names(rec: dict[str, Any], drop_self: bool) -> list[list[str]] | None:
    """Positional parameter names of each real overload; None if the real one takes anything."""
    out = []
    for sig in rec.get("signatures") or []:
        params = [p for p in sig["params"] if p["kind"] != "marker"]
        if any(p["kind"] in ("var_positional", "var_keyword") for p in params):
            return None
        names = [p["name"] for p in params]
        if drop_self and names and names[0] in ("self", "arg0"):
            names = names[1:]
        out.append(names)
    return out


def _fake_param_names(fn: Any) -> list[str]:
    import inspect

    params = list(inspect.signature(fn).parameters.values())
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_fake(fake: Any, surface: dict[str, Any], label: str) -> list[str]:
    """Problems with a fake module (or module-like object): every public name it defines must
    exist in the real surface with the same kind, enum members with the same values, methods with
    the same parameter names as one real overload, properties writable only if the real ones are."""
    import enum
    import inspect

    names = surface["names"]
    problems: list[str] = []

    def enum_problems(where: str, fake_enum: Any, real: dict[str, Any]) -> None:
        members = real.get("members") or {}
        for m in fake_enum:
            if m.name not in members:
                problems.append(f"{where}.{m.name} does not exist in the real API")
            elif members[m.name]["value"] != int(m):
                problems.append(f"{where}.{m.name} = {int(m)}, the real value is {members[m.name]['value']}")

    def class_problems(where: str, cls: type, real: dict[str, Any]) -> None:
        if isinstance(cls, type) and issubclass(cls, enum.Enum):
            if real.get("kind") != "enum":
                problems.append(f"{where} is an enum in the fake, a {real.get('kind')} in the real API")
            else:
                enum_problems(where, cls, real)
            return
        attrs = real.get("attrs") or {}
        for attr, value in vars(cls).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            rec = attrs.get(attr)
            here = f"{where}.{attr}"
            if rec is None:
                problems.append(f"{here} does not exist in the real API")
                continue
            if isinstance(value, property):
                if rec["kind"] != "property":
                    problems.append(f"{here} is a property in the fake, a {rec['kind']} in the real API")
                elif value.fset is not None and not rec.get("writable"):
                    problems.append(f"{here} is writable in the fake, read-only in the real API")
            elif isinstance(value, type):
                class_problems(here, value, rec)
            elif callable(value):
                if rec["kind"] not in ("method", "function", "staticmethod"):
                    problems.append(f"{here} is a method in the fake, a {rec['kind']} in the real API")
                    continue
                real_names = _real_param_names(rec, drop_self=True)
                if real_names is None:
                    continue  # the real one accepts anything (e.g. an uninstantiable __init__)
                ours = _fake_param_names(value)[1:]
                if ours not in real_names:
                    problems.append(f"{here}({', '.join(ours)}) matches no real signature {real_names}")

    for name in sorted(n for n in dir(fake) if not n.startswith("_")):
        obj = getattr(fake, name)
        rec = names.get(name)
        where = f"{label}.{name}"
        if rec is None:
            problems.append(f"{where} does not exist in the real API")
        elif isinstance(obj, type):
            if rec.get("kind") not in ("class", "enum"):
                problems.append(f"{where} is a class in the fake, a {rec.get('kind')} in the real API")
            else:
                class_problems(where, obj, rec)
        elif callable(obj) and not isinstance(obj, enum.Enum):
            if rec.get("kind") != "function":
                problems.append(f"{where} is a function in the fake, a {rec.get('kind')} in the real API")
                continue
            real_names = _real_param_names(rec, drop_self=False)
            fn = obj.__func__ if inspect.ismethod(obj) else obj
            ours = _fake_param_names(fn)
            if inspect.ismethod(obj):
                ours = ours[1:]
            if real_names is not None and ours not in real_names:
                problems.append(f"{where}({', '.join(ours)}) matches no real signature {real_names}")
        else:
            if rec.get("kind") != "value":
                problems.append(f"{where} is a value in the fake, a {rec.get('kind')} in the real API")
            elif isinstance(obj, int) and "value" in rec and rec["value"] != int(obj):
                problems.append(f"{where} = {int(obj)}, the real value is {rec['value']}")
    return problems
