"""The import rules of docs/architecture.md, checked on the source (every import, also those inside
functions): the runtime never reaches torch, the builders or the commands; the library never
imports the commands; nothing imports the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ssd_deploy"

#: (modules the rule applies to, prefixes they must not import, why)
RULES = [
    (
        (
            "ssd_deploy.runtime",
            "ssd_deploy.postprocess",
            "ssd_deploy.preprocess",
            "ssd_deploy.priors",
            "ssd_deploy.ops",
            "ssd_deploy.config",
            "ssd_deploy.contract",
            "ssd_deploy.errors",
            "ssd_deploy.layers",
            "ssd_deploy.fileio",
            "ssd_deploy.draw",
        ),
        (
            "torch",
            "torchvision",
            "ssd_deploy.model",
            "ssd_deploy.export",
            "ssd_deploy.quantize",
            "ssd_deploy.tensorrt.builder",
            "ssd_deploy.cli",
            "ssd_deploy.triton",
            "ssd_deploy.serve",
            "onnx",
            "modelopt",
        ),
        "the runtime path runs without torch, onnx or the build side",
    ),
    (
        ("ssd_deploy",),
        ("ssd_deploy.cli",),
        "the library never depends on its commands",
    ),
    (
        ("ssd_deploy.tensorrt",),
        ("ssd_deploy.runtime.tensorrt", "ssd_deploy.cli"),
        "the build side does not reach into the runner",
    ),
]
#: Modules exempt from a rule, with the reason.
EXEMPT = {
    "ssd_deploy.runtime.pytorch.backend": (
        "the PyTorch reference backend is torch by definition (loaded only for .pth)"
    ),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    # `python -m ssd_deploy.x` entry points (a __main__ module or guard) may start the command.
    if path.name == "__main__.py":
        return found
    tree.body = [n for n in tree.body if not _is_main_guard(n)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import loader`
    return found


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and "__main__" in ast.unparse(node.test)
        and "__name__" in ast.unparse(node.test)
    )


def _modules() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in PKG.rglob("*.py"))


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("scope, forbidden, why", RULES, ids=[r[2] for r in RULES])
def test_import_rules(scope, forbidden, why):
    broken = []
    for name, path in _modules():
        if name in EXEMPT or not any(_matches(name, s) for s in scope):
            continue
        if any(_matches(name, f) for f in forbidden):
            continue  # a module may import its own package
        for imp in sorted(_imports(path)):
            hit = next((f for f in forbidden if _matches(imp, f)), None)
            if hit:
                broken.append(f"{name} imports {imp}")
    assert not broken, f"{why}:\n" + "\n".join(broken)


def test_rules_see_real_imports():
    """The checker finds relative, absolute and function-local imports (it cannot pass on nothing)."""
    imports = _imports(PKG / "runtime" / "detector.py")
    assert "ssd_deploy.config" in imports and "ssd_deploy.runtime.onnxrt" in imports
    assert "ssd_deploy.runtime.tensorrt.backend" in imports  # imported inside backend_for()
    assert "torch" in _imports(PKG / "runtime" / "pytorch" / "backend.py")


def test_nothing_imports_the_tests():
    for name, path in _modules():
        assert not any(_matches(i, "tests") or i.startswith("conftest") for i in _imports(path)), name


def test_numba_stays_behind_ops_jit():
    """numba is optional: only the kernels module imports it, and only ``ops.jit`` imports that
    (lazily, falling back to numpy), so every other module works without it."""
    allowed = {"ssd_deploy.ops._numba_kernels", "ssd_deploy.ops.jit"}
    broken = [
        f"{name} imports {imp}"
        for name, path in _modules()
        if name not in allowed
        for imp in sorted(_imports(path))
        if any(_matches(imp, m) for m in ("numba", "llvmlite", "ssd_deploy.ops._numba_kernels"))
    ]
    assert not broken, "\n".join(broken)
    assert "numba" in _imports(PKG / "ops" / "_numba_kernels.py")
