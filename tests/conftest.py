"""Shared fixtures: one real SSD300 ONNX export per test session (seeded weights), reused widely."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ssd_deploy.config import preset


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not _torch_available(), reason="PyTorch not installed (export extra)")


@pytest.fixture(scope="session")
def voc300():
    return preset("voc300")


@pytest.fixture(scope="session")
def ssd300_model(voc300):
    """The seeded SSD300 reference model (phase "train"), shared by every test."""
    if not _torch_available():
        pytest.skip("PyTorch not installed (export extra)")
    from ssd_deploy.export import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(None, voc300, seed=0)


@pytest.fixture(scope="session")
def ssd300_onnx(tmp_path_factory, ssd300_model, voc300) -> Path:
    """``ssd300.onnx`` exported from the seeded model (verified against PyTorch during export)."""
    from ssd_deploy.export import export_onnx, weights_info

    out = tmp_path_factory.mktemp("export") / "ssd300.onnx"
    export_onnx(ssd300_model, voc300, out, weights=weights_info(None, 0), verify=True)
    return out


@pytest.fixture(scope="session")
def sample_paths():
    from ssd_deploy.samples import SamplesUnavailable, sample_images

    try:
        return sample_images()
    except SamplesUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(params=["jit", "numpy"])
def runtime_path(request):
    """Runs a test on both implementations of the runtime's pre/post-processing: the numba kernels
    (skipped without numba) and the numpy path they must equal (ssd_deploy.ops.jit)."""
    from ssd_deploy.ops import jit

    if request.param == "numpy":
        with jit.disabled():
            yield "numpy"
    else:
        if jit.kernels() is None:
            pytest.skip(f"numba kernels unavailable: {jit.status()}")
        yield "jit"
