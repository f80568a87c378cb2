"""The plan manifest: ``<plan>.json`` written beside every engine by ``ssd_deploy.build``.

A TensorRT plan is opaque and tied to the TensorRT version and GPU that built it. The manifest
records what the plan needs (TensorRT version, GPU, compatibility flags), where it came from
(source ONNX and its sha256, precision and recipe), what it accepts (batch profiles) and the SSD
config the runtime needs for decode. :func:`check_compatible` reads it *before* the plan is
deserialised, so a mismatch is a one-line error with the fix instead of a TensorRT failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..runtime.backend import BackendError
from .loader import version_tuple

MANIFEST_SCHEMA = 1
#: Environment variable that disables the compatibility checks (the config is still read).
SKIP_CHECK_ENV = "SSD_DEPLOY_SKIP_MANIFEST_CHECK"
#: ``--hardware-compat`` spellings -> TensorRT ``HardwareCompatibilityLevel`` member names.
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}


class ManifestError(BackendError):
    """A manifest is missing, malformed, or says the plan cannot run here."""


def manifest_path(plan: str | os.PathLike[str]) -> Path:
    """``engines/ssd300.plan`` -> ``engines/ssd300.plan.json``."""
    p = Path(plan)
    return p.with_name(p.name + ".json")


@dataclass
class PlanManifest:
    """Everything known about a plan besides its bytes."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_path: str
    onnx_sha256: str
    plan_sha256: str
    precision: str
    profiles: list[tuple[int, int, int]]
    input_name: str
    input_shape: tuple[int, int, int]
    output_names: list[str]
    config: dict[str, Any]
    recipe: Any = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    build_flags: dict[str, Any] = field(default_factory=dict)
    build_date: str = ""
    build_seconds: float = 0.0
    tool: str = "ssd_deploy"
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["profiles"] = [list(p) for p in self.profiles]
        d["input_shape"] = list(self.input_shape)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> PlanManifest:
        if not isinstance(d, dict):
            raise ManifestError(f"{source}: manifest must be a JSON object")
        schema = d.get("schema")
        if schema != MANIFEST_SCHEMA:
            raise ManifestError(
                f"{source}: manifest schema {schema!r} is not supported (expected {MANIFEST_SCHEMA})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["profiles"] = [tuple(int(v) for v in p) for p in d["profiles"]]
            kw["input_shape"] = tuple(int(v) for v in d["input_shape"])
            kw["output_names"] = [str(n) for n in d["output_names"]]
            m = cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
        if m.hardware_compat not in HARDWARE_COMPAT:
            raise ManifestError(f"{source}: unknown hardware_compat {m.hardware_compat!r}")
        if not m.profiles or any(not 1 <= a <= b <= c for a, b, c in m.profiles):
            raise ManifestError(f"{source}: invalid batch profiles {m.profiles!r}")
        return m

    @property
    def rebuild_hint(self) -> str:
        return f"rebuild with ssd-build --onnx {self.onnx_path} on this machine"


def write_manifest(manifest: PlanManifest, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file in the same folder + rename)."""
    return atomic_write(path, manifest.to_json().encode())


def read_manifest(plan: str | os.PathLike[str]) -> PlanManifest:
    """The manifest beside ``plan``; one-line :class:`ManifestError` if missing or malformed."""
    mpath = manifest_path(plan)
    if not mpath.is_file():
        raise ManifestError(
            f"{plan}: no manifest {mpath.name} beside it, so its TensorRT version and GPU cannot be "
            f"checked; build plans with ssd-build, or set {SKIP_CHECK_ENV}=1 "
            "(and pass the SSD config) to load it unchecked"
        )
    try:
        d = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{mpath}: cannot read manifest ({type(e).__name__}: {e})") from None
    return PlanManifest.from_dict(d, source=str(mpath))


def check_compatible(
    manifest: PlanManifest,
    plan: str | os.PathLike[str],
    tensorrt_version: str,
    compute_capability: str,
    gpu_name: str = "",
    plan_sha256: str | None = None,
) -> list[str]:
    """Raise :class:`ManifestError` (one line, with the fix) if the plan cannot run here.

    Returns warnings that do not stop loading (e.g. another GPU model of the same architecture).
    """
    warnings: list[str] = []
    if plan_sha256 is not None and plan_sha256 != manifest.plan_sha256:
        raise ManifestError(
            f"{plan}: the manifest describes another plan (sha256 differs); {manifest.rebuild_hint}"
        )
    built, here = version_tuple(manifest.tensorrt_version), version_tuple(tensorrt_version)
    if manifest.version_compatible:
        # Version-compatible plans embed a lean runtime and run on the same or a later release
        # of the same major version.
        if not built or not here or here[0] != built[0] or here < built:
            major = built[0] if built else "?"
            raise ManifestError(
                f"{plan}: built version-compatible with TensorRT {manifest.tensorrt_version}, which "
                f"runs on that or a later {major}.x release only, but this machine has TensorRT "
                f"{tensorrt_version}; {manifest.rebuild_hint}"
            )
    elif built != here:
        raise ManifestError(
            f"{plan}: built with TensorRT {manifest.tensorrt_version} but this machine has TensorRT "
            f"{tensorrt_version}; {manifest.rebuild_hint} (or build with --version-compatible)"
        )
    cc_built, cc_here = version_tuple(manifest.compute_capability), version_tuple(compute_capability)
    here_desc = f"compute capability {compute_capability}"
    if gpu_name:
        here_desc = f"{gpu_name} ({here_desc})"
    if manifest.hardware_compat == "ampere+":
        if cc_here < (8, 0):
            raise ManifestError(
                f"{plan}: built for Ampere or newer GPUs (--hardware-compat ampere+) but this GPU is "
                f"{here_desc}; {manifest.rebuild_hint}"
            )
    elif cc_built != cc_here:
        raise ManifestError(
            f"{plan}: built for {manifest.gpu_name} (compute capability {manifest.compute_capability}) "
            f"but this GPU is {here_desc}; {manifest.rebuild_hint} (or build with --hardware-compat ampere+)"
        )
    elif (
        gpu_name
        and manifest.gpu_name
        and gpu_name != manifest.gpu_name
        and manifest.hardware_compat == "none"
    ):
        warnings.append(
            f"{plan}: built on {manifest.gpu_name}, running on {gpu_name} (same compute capability); "
            "TensorRT may pick slower kernels - rebuild here for best speed"
        )
    return warnings
