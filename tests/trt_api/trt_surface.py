"""Dump the API surface of a compiled Python module (pybind11 TensorRT bindings, cython cuda-python)
to JSON: classes, methods with every overload's parameters, properties (getter / setter), enum
members (with TensorRT's own [DEPRECATED] notes), module functions and values.

Run as a script in a subprocess (``python trt_surface.py --module tensorrt_bindings --stubs DIR
--out surface.json``) so that a crash while importing the real bindings cannot kill pytest.
``--stubs`` loads every ``lib*.so*`` of DIR with ``RTLD_GLOBAL`` first: the tiny stand-ins that
satisfy the bindings' links to libnvinfer and friends. Nothing here calls into the libraries.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

DEPRECATED_RE = re.compile(r"\[DEPRECATED\]|\bDeprecated in TensorRT\b|\(Deprecated\)", re.I)


# -- pybind11 signature text -------------------------------------------------------------------
def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside (), [], {}, <> and quotes."""
    parts, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def parse_params(text: str) -> list[dict[str, Any]]:
    """``"self: T, name: str, shape: Dims = None"`` -> parameter records."""
    params = []
    for raw in _split_top(text):
        if raw in ("/", "*"):
            params.append({"name": raw, "kind": "marker", "type": "", "default": False})
            continue
        kind = "positional"
        if raw.startswith("**"):
            kind, raw = "var_keyword", raw[2:]
        elif raw.startswith("*"):
            kind, raw = "var_positional", raw[1:]
        head, eq, _default = raw.partition("=")
        name, _, typ = head.partition(":")
        params.append({"name": name.strip(), "kind": kind, "type": typ.strip(), "default": bool(eq)})
    return params


def _match_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def parse_signatures(doc: str | None, name: str) -> list[dict[str, Any]]:
    """Every ``name(params) -> ret`` line of a pybind11 docstring (all overloads)."""
    if not doc:
        return []
    lines = doc.splitlines()
    overloaded = any(line.strip() == "Overloaded function." for line in lines[:3])
    sigs = []
    pat = re.compile(r"^\s*(?:\d+\.\s+)?" + (re.escape(name) if name else "") + r"\(")
    for i, line in enumerate(lines):
        if overloaded and i == 0:
            continue  # "name(*args, **kwargs)" placeholder
        m = pat.match(line)
        if not m:
            continue
        open_at = m.end() - 1
        close_at = _match_paren(line, open_at)
        if close_at < 0:
            continue
        rest = line[close_at + 1 :].strip()
        ret = rest[2:].strip() if rest.startswith("->") else ""
        sigs.append({"params": parse_params(line[open_at + 1 : close_at]), "returns": ret})
        if not overloaded:
            break
    return sigs


def _inspect_signature(obj: Any) -> list[dict[str, Any]]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    kinds = {
        inspect.Parameter.VAR_POSITIONAL: "var_positional",
        inspect.Parameter.VAR_KEYWORD: "var_keyword",
        inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    }
    params = []
    for p in sig.parameters.values():
        params.append({
            "name": p.name, "kind": kinds.get(p.kind, "positional"),
            "type": "" if p.annotation is inspect.Parameter.empty else str(p.annotation),
            "default": p.default is not inspect.Parameter.empty,
        })  # fmt: skip
    return [{"params": params, "returns": ""}]


# -- objects -----------------------------------------------------------------------------------
def _has_buffer_protocol(cls: type) -> bool:
    get_slot = ctypes.pythonapi.PyType_GetSlot
    get_slot.restype = ctypes.c_void_p
    get_slot.argtypes = [ctypes.py_object, ctypes.c_int]
    try:
        return bool(get_slot(cls, 1))  # Py_bf_getbuffer
    except SystemError:
        return False


def _enum_member_docs(doc: str | None) -> dict[str, str]:
    """pybind11 enums list their members as '  NAME : text' under 'Members:'."""
    out: dict[str, str] = {}
    if not doc or "Members:" not in doc:
        return out
    current = None
    for line in doc[doc.index("Members:") + len("Members:") :].splitlines():
        m = re.match(r"^  ([A-Za-z_][A-Za-z0-9_]*) :(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _ivar_docs(doc: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in re.finditer(r":ivar (\w+):([^\n]*)", doc or ""):
        out[m.group(1)] = m.group(2)
    return out


def _is_enum(cls: type) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict) or hasattr(
        getattr(cls, "__members__", None), "keys"
    )


def _describe_callable(name: str, obj: Any) -> dict[str, Any]:
    doc = getattr(obj, "__doc__", None)
    # Cython and Python functions carry real signatures (their docstrings hold C prototypes);
    # pybind11 functions have only the signature lines of their docstrings.
    if type(obj).__name__ in ("cython_function_or_method", "function", "method"):
        sigs = _inspect_signature(obj) or parse_signatures(doc, name)
    else:
        sigs = parse_signatures(doc, name) or _inspect_signature(obj)
    # The deprecation note sits in the description, before the ":arg" / ":returns" fields.
    text = re.split(r":arg |:param |:returns:", doc or "", maxsplit=1)[0]
    return {"kind": "function", "signatures": sigs, "deprecated": bool(DEPRECATED_RE.search(text))}


def describe_class(cls: type, package: str, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "enum" if _is_enum(cls) else "class",
        "bases": [b.__name__ for b in cls.__mro__[1:] if (b.__module__ or "").split(".")[0] == package],
        "buffer": _has_buffer_protocol(cls),
        "attrs": {},
    }
    if out["kind"] == "enum":
        docs = _enum_member_docs(cls.__doc__)
        out["members"] = {
            k: {"value": int(v), "deprecated": bool(DEPRECATED_RE.search(docs.get(k, "")))}
            for k, v in cls.__members__.items()
        }
    ivars = _ivar_docs(cls.__doc__)
    seen: set[str] = set()
    for klass in cls.__mro__:
        if (klass.__module__ or "").split(".")[0] != package:
            continue
        kivars = _ivar_docs(klass.__doc__)
        for name, raw in vars(klass).items():
            if name in seen or (name.startswith("__") and name != "__init__") or name.startswith("_pybind11"):
                continue
            seen.add(name)
            if out["kind"] == "enum" and name in out.get("members", {}):
                continue
            out["attrs"][name] = describe_attr(cls, name, raw, package, depth, {**kivars, **ivars})
    return out


def describe_attr(
    cls: type, name: str, raw: Any, package: str, depth: int, ivars: dict[str, str]
) -> dict[str, Any]:
    tname = type(raw).__name__
    if isinstance(raw, property):
        getter = parse_signatures(getattr(raw.fget, "__doc__", None), "") if raw.fget else []
        setter = parse_signatures(getattr(raw.fset, "__doc__", None), "") if raw.fset else []
        return {
            "kind": "property", "getter": getter, "setter": setter if raw.fset else None,
            "writable": raw.fset is not None, "deprecated": bool(DEPRECATED_RE.search(ivars.get(name, ""))),
        }  # fmt: skip
    if tname == "pybind11_static_property" or tname == "getset_descriptor" or tname == "member_descriptor":
        return {"kind": "property", "getter": [], "setter": None,
                "writable": tname != "pybind11_static_property", "deprecated": False}  # fmt: skip
    if isinstance(raw, type):
        if depth >= 2:
            return {"kind": "class", "attrs": {}, "bases": [], "buffer": False}
        return describe_class(raw, package, depth + 1)
    if isinstance(raw, (staticmethod, classmethod)):
        d = _describe_callable(name, getattr(cls, name))
        d["kind"] = "staticmethod"
        return d
    if callable(raw) or tname in (
        "instancemethod",
        "wrapper_descriptor",
        "method_descriptor",
        "cython_function_or_method",
    ):
        d = _describe_callable(name, raw)
        d["kind"] = "method"
        return d
    return {"kind": "value", "type": type(raw).__name__}


def describe_module(mod: Any) -> dict[str, Any]:
    package = mod.__name__.split(".")[0]
    version = getattr(mod, "__version__", None)
    if version is None and "." in mod.__name__:  # cuda.bindings.runtime: the package has it
        version = getattr(importlib.import_module(mod.__name__.rsplit(".", 1)[0]), "__version__", "")
    out: dict[str, Any] = {"module": mod.__name__, "version": str(version or ""), "names": {}}
    for name in sorted(dir(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name)
        if inspect.ismodule(obj):
            continue
        if isinstance(obj, type):
            owner = (obj.__module__ or "").split(".")[0]
            if owner != package:
                out["names"][name] = {"kind": "foreign", "type": f"{obj.__module__}.{obj.__name__}"}
            else:
                out["names"][name] = describe_class(obj, package)
        elif callable(obj):
            out["names"][name] = _describe_callable(name, obj)
        else:
            rec: dict[str, Any] = {"kind": "value", "type": type(obj).__name__}
            if isinstance(obj, (int, float, str, bool)):
                rec["value"] = obj if not hasattr(obj, "name") else int(obj)
            out["names"][name] = rec
    return out


def load_stubs(folder: str) -> list[str]:
    loaded = []
    for lib in sorted(Path(folder).glob("lib*.so*")):
        if not re.fullmatch(r"lib[\w+-]+\.so(\.\d+)*", lib.name):
            continue
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        loaded.append(lib.name)
    return loaded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--stubs", help="folder of stand-in shared libraries to load first")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    stubs = load_stubs(args.stubs) if args.stubs else []
    mod = importlib.import_module(args.module)
    surface = describe_module(mod)
    surface["stubs"] = stubs
    surface["python"] = sys.version.split()[0]
    Path(args.out).write_text(json.dumps(surface, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
