"""Fixtures for the TensorRT tests.

- ``trt_surface``: the real TensorRT 11.4 Python API, dumped (in a subprocess) from the
  ``tensorrt_bindings`` extension after loading stand-in ``libnvinfer*.so.11`` libraries that
  gcc builds here from the list of symbols the extension imports (docs/tensorrt.md).
- ``cudart_surface``: the same for ``cuda.bindings.runtime``.
- ``fake``: a fake GPU, fake cuda-python runtime and fake TensorRT module patched into
  ``ssd_deploy.tensorrt.loader`` for behavioural tests.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from trt_fakes import Fake, install_fake  # noqa: E402

BINDINGS_PIN = "tensorrt-cu13-bindings==11.4.0.106"
SURFACE_TIMEOUT_S = 180

#: Which stand-in library exports which imported symbol (everything else goes to libnvinfer).
_STUB_OWNER = (
    (re.compile(r"OnnxParser"), "libnvonnxparser"),
    (re.compile(r"^initLibNvInferPlugins$"), "libnvinfer_plugin"),
)


def _bindings_extension() -> Path | None:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("tensorrt*.so"))
        if found:
            return found[0]
    return None


def _needed_sonames(ext: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(ext)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(libnv[^\]]+)\]", out)


def _imported_symbols(ext: Path) -> list[str]:
    """Undefined, unversioned, strong symbols that no already-loaded system library provides."""
    import ctypes

    out = subprocess.run(
        ["nm", "-D", "--undefined-only", str(ext)], capture_output=True, text=True, check=True
    ).stdout
    process = ctypes.CDLL(None)
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue
        name = parts[1]
        if name.startswith("_Z") or hasattr(process, name):
            continue
        syms.append(name)
    return syms


def build_stubs(folder: Path) -> tuple[Path, dict[str, list[str]]]:
    """Compile one stand-in per NEEDED libnv* soname; returns the folder and what each exports."""
    ext = _bindings_extension()
    assert ext is not None
    sonames = _needed_sonames(ext)
    by_lib: dict[str, list[str]] = {s: [] for s in sonames}
    for sym in _imported_symbols(ext):
        owner = next((lib for pat, lib in _STUB_OWNER if pat.search(sym)), "libnvinfer")
        soname = next((s for s in sonames if s.startswith(owner + ".so")), None)
        soname = soname or next(s for s in sonames if s.startswith("libnvinfer.so"))
        by_lib[soname].append(sym)
    folder.mkdir(parents=True, exist_ok=True)
    for soname, syms in by_lib.items():
        src = folder / f"{soname}.c"
        # Never called: the dump only inspects Python objects. Returning NULL keeps a stray call harmless.
        src.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in syms) or "int ssd_stub_empty;\n")
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(folder / soname), str(src)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return folder, by_lib


def _dump(module: str, out: Path, stubs: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "trt_surface.py"), "--module", module, "--out", str(out)]
    if stubs is not None:
        cmd += ["--stubs", str(stubs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SURFACE_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"dumping {module} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def trt_surface(tmp_path_factory) -> dict[str, Any]:
    if _bindings_extension() is None:
        pytest.skip(f"TensorRT bindings not installed (pip install {BINDINGS_PIN})")
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the stand-in libnvinfer libraries cannot be built")
    folder = tmp_path_factory.mktemp("trt_stubs")
    stubs, _ = build_stubs(folder / "lib")
    return _dump("tensorrt_bindings", folder / "surface.json", stubs)


@pytest.fixture(scope="session")
def cudart_surface(tmp_path_factory) -> dict[str, Any]:
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        pytest.skip("cuda-python not installed (pip install cuda-python)")
    folder = tmp_path_factory.mktemp("cudart_surface")
    return _dump("cuda.bindings.runtime", folder / "surface.json", None)


@pytest.fixture
def fake(monkeypatch) -> Fake:
    """Fake GPU + CUDA + TensorRT installed where ssd_deploy looks them up.

    Tests that need a differently configured fake call :func:`trt_fakes.install_fake` themselves.
    """
    return install_fake(monkeypatch)
