"""Triton Inference Server model repositories for ssd_deploy engines, one module per job.

``ssd-triton --engine engines/ssd300_fp16.plan --output model_repository/`` writes four models
(``NAME`` defaults to ``ssd``)::

    model_repository/
      NAME_engine/       the network: tensorrt_plan (model.plan) or onnxruntime_onnx (model.onnx),
                         max batch from the engine's profile, dynamic batching, instance groups
      NAME_preprocess/   Python backend: encoded JPEG/PNG bytes -> network input + image size
      NAME_postprocess/  Python backend: loc/conf heads -> decode + NMS (ssd_deploy.postprocess)
      NAME/              ensemble: IMAGE -> preprocess -> engine -> postprocess -> detections

:mod:`.facts` reads an engine (a plan's manifest or an ONNX file), :mod:`.configs` makes each
``config.pbtxt``, :mod:`.pbtxt` writes and parses Triton's text format with Triton's own schema,
:mod:`.repository` writes the folder atomically, :mod:`.check` verifies it, and
:mod:`.python_model` is the Python-backend model copied into the repository.
"""

from .check import check_repository
from .configs import RepoOptions
from .facts import EngineFacts, engine_facts
from .layout import TritonError
from .pbtxt import Sym, load_model_config_schema, parse_config, to_pbtxt
from .repository import RepositoryReport, generate

__all__ = [
    "EngineFacts",
    "RepoOptions",
    "RepositoryReport",
    "Sym",
    "TritonError",
    "check_repository",
    "engine_facts",
    "generate",
    "load_model_config_schema",
    "parse_config",
    "to_pbtxt",
]
