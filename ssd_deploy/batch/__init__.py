"""Offline detection over many images: Ray Data across a cluster, or in this process.

``ssd-detect --engine ARTIFACT --input DIR|GLOB|LIST --output OUT.parquet|OUT.jsonl [--ray]`` from
the shell; from Python::

    from ssd_deploy.batch import detect_dataset, read_results, run, RunOptions
    ds = detect_dataset("export/ssd300.onnx", "photos/", actors=2)   # a lazy ray.data.Dataset
    run(RunOptions("export/ssd300.onnx", "photos/", "out/dets.parquet", use_ray=True, actors=2))
    table = read_results("out/dets.parquet")                          # a pyarrow Table

Ray and pyarrow are optional (``pip install 'ssd_deploy[batch]'``); see docs/batch.md.
"""

from __future__ import annotations

from .io import list_inputs, read_results
from .pipeline import DetectActor, RunOptions, RunSummary, artifact_config, detect_dataset, run
from .rows import COLUMNS

__all__ = ["COLUMNS", "DetectActor", "RunOptions", "RunSummary", "artifact_config", "detect_dataset",
           "list_inputs", "read_results", "run"]  # fmt: skip
