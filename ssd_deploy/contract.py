"""What every producer and consumer of an SSD artifact agrees on, written once.

Tensor names, artifact file types and which backend runs them, the metadata keys every artifact
carries (docs/artifacts.md), and one file hasher. The layer tables of the network live in
:mod:`ssd_deploy.layers` (numpy-free, torch-free) so that the cost model and the PyTorch model
read the same table.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# -- tensor names ---------------------------------------------------------------------------------
#: Network input ``[N, 3, S, S]`` float32, preprocessed (docs/ssd.md, preprocessing).
INPUT = "images"
#: Encoded box offsets ``[N, P, 4]``.
LOC = "loc"
#: Softmax class scores ``[N, P, C]``.
CONF = "conf"
#: Prior boxes ``[P, 4]`` (cx, cy, w, h), normalised.
PRIORS = "priors"
#: Outputs every artifact must have.
REQUIRED_OUTPUTS = (LOC, CONF)
#: End-to-end artifacts only (docs/end_to_end.md): ``[N, D, 6]`` float32 rows
#: ``DETECTION_COLUMNS``, zero rows after ``num_detections [N]`` int32.
DETECTIONS = "detections"
NUM_DETECTIONS = "num_detections"
DETECTION_COLUMNS = ("x1", "y1", "x2", "y2", "score", "class_id")
#: Row order of ``detections``: by class id ascending, then descending score, ties by prior index.
END_TO_END_ROW_ORDER = "class_asc_score_desc"

# -- metadata keys --------------------------------------------------------------------------------
#: ONNX ``metadata_props`` key (and plan-manifest key) holding the :class:`~ssd_deploy.config.SSDConfig`.
CONFIG_KEY = "ssd_deploy.config"
PRECISION_KEY = "ssd_deploy.precision"
RECIPE_KEY = "ssd_deploy.recipe"
WEIGHTS_KEY = "ssd_deploy.weights"
VERSION_KEY = "ssd_deploy.version"
#: End-to-end artifacts: JSON of the Detect parameters baked into the graph, D and the row order.
END_TO_END_KEY = "ssd_deploy.end_to_end"

# -- artifact types -------------------------------------------------------------------------------
ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
TORCH_SUFFIXES = (".pth", ".pt")
OPENVINO_SUFFIXES = (".xml",)

#: Artifact kind -> the suffixes that mean it.
ARTIFACT_KINDS: dict[str, tuple[str, ...]] = {
    "onnx": ONNX_SUFFIXES,
    "plan": PLAN_SUFFIXES,
    "torch": TORCH_SUFFIXES,
    "openvino": OPENVINO_SUFFIXES,
}


def artifact_kind(path: str | os.PathLike[str]) -> str | None:
    """``"onnx"``, ``"plan"``, ``"torch"`` or ``"openvino"`` from the file name; ``None`` if unknown."""
    suffix = Path(path).suffix.lower()
    for kind, suffixes in ARTIFACT_KINDS.items():
        if suffix in suffixes:
            return kind
    return None


def describe_suffixes() -> str:
    """For error messages: the file types an artifact may have."""
    return (
        ".onnx (ONNX Runtime / OpenVINO), .plan/.engine (TensorRT), .xml (OpenVINO IR) "
        "or .pth/.pt (PyTorch checkpoint)"
    )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
