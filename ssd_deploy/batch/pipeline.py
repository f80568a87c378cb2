"""Detection over many images: a Ray Data pipeline, the same work in-process, and the driver loop.

Ray pipeline (:func:`detect_dataset`): paths -> read + preprocess in Ray tasks (one image per
row, CPU) -> batched inference in a pool of actors each holding one :class:`Detector` (one GPU
each for TensorRT plans) -> result rows (:mod:`ssd_deploy.batch.rows`). Ray Data streams the
stages, so decoding on CPUs overlaps inference. :func:`run` is what ``ssd-detect --input`` does:
check everything, list the images, skip those already done, stream results into part files.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SSDConfig
from ..contract import artifact_kind, describe_suffixes
from ..errors import InputError, optional_import
from . import io as bio
from .rows import detect_rows, load_one, make_table

#: Bytes of preprocessed images per read block: Ray Data moves blocks through the object store,
#: so a block of this size keeps several in flight within a small store (docs/batch.md).
READ_BLOCK_BYTES = 64 * 1024 * 1024


#: Memory a read task reserves: a worker with numpy and Pillow loaded (~200 MB measured) plus its block.
READ_TASK_MEMORY = 256 * 1024 * 1024 + READ_BLOCK_BYTES


# -- the engine -------------------------------------------------------------------------------------
def check_engine(engine: str | os.PathLike[str]) -> Path:
    p = Path(engine).expanduser()
    if not p.is_file():
        raise InputError(f"{engine}: no such engine file")
    if artifact_kind(p) is None:
        raise InputError(f"{engine}: unknown artifact type; expected {describe_suffixes()}")
    return p.resolve()


def artifact_config(engine: str | os.PathLike[str]) -> SSDConfig:
    """The SSD config stored in an artifact, read without a GPU (a plan's manifest; an ONNX file
    opened on the CPU). Loading it here also rejects a broken file before any worker starts."""
    p = check_engine(engine)
    kind = artifact_kind(p)
    if kind == "plan":
        from ..runtime.tensorrt.manifest import read_manifest

        return SSDConfig.from_dict(read_manifest(p).config)
    from ..runtime import Detector

    opts = {"device": "cpu"} if kind == "onnx" else {}
    with Detector.load(p, **opts) as det:
        return det.config


def _gpus_for(engine: str | os.PathLike[str], gpus_per_actor: float | None) -> float:
    if gpus_per_actor is not None:
        return float(gpus_per_actor)
    return 1.0 if artifact_kind(engine) == "plan" else 0.0


# -- the Ray pipeline -------------------------------------------------------------------------------
def _read_row(row: dict[str, Any], config: SSDConfig) -> dict[str, Any]:
    """Ray task body: one path -> its preprocessed image, size and error (CPU work)."""
    image, size, error = load_one(row["path"], config)
    if image is None:  # the column stays one fixed-shape tensor; the actor skips error rows
        image = np.zeros((3, config.size, config.size), np.float32)
    w, h = size or (0, 0)
    return {"path": row["path"], "width": w, "height": h, "image": image, "error": error or ""}


class DetectActor:
    """Ray Data callable class: one :class:`Detector` per actor, a batch of rows per call."""

    def __init__(self, engine: str, backend_options: dict[str, Any], overrides: dict[str, Any],
                 min_score: float) -> None:  # fmt: skip
        from ..runtime import Detector

        self.detector = Detector.load(engine, **backend_options)
        self.params = self.detector.params_for(**overrides)
        self.min_score = float(min_score)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        errors = [str(e) or None for e in batch["error"]]
        sizes = [(int(w), int(h)) if e is None else None
                 for w, h, e in zip(batch["width"], batch["height"], errors)]  # fmt: skip
        return detect_rows(self.detector, self.params, self.min_score, [str(p) for p in batch["path"]],
                           batch["image"], sizes, errors)  # fmt: skip


def detect_dataset(
    engine: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str],
    *,
    actors: int = 1,
    batch_size: int = 16,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    min_score: float = 0.0,
    backend_options: dict[str, Any] | None = None,
    skip: Iterable[str] = (),
    config: SSDConfig | None = None,
    **overrides: Any,
) -> Any:
    """A lazy Ray Dataset of detection rows (columns: :data:`ssd_deploy.batch.rows.COLUMNS`).

    ``inputs`` is a folder, glob or list file (:func:`list_inputs`) or a sequence of paths;
    ``skip`` removes paths (e.g. those already done). Reading and preprocessing run as Ray tasks,
    inference in ``actors`` actors (``gpus_per_actor``: 1 for TensorRT plans, 0 otherwise unless
    given) on batches of ``batch_size``. ``overrides`` are :meth:`Detector.detect`'s thresholds
    (``conf_thresh``, ``nms_thresh``, ``top_k``, ``keep_top_k``); rows keep detections scoring at
    least ``min_score``. Start Ray first (:func:`ssd_deploy.raylocal.start_ray` gives a private one
    on loopback); otherwise Ray Data starts a default local Ray, which listens on every interface.
    Paths and the engine must be readable at the same path on every node.
    """
    rd = optional_import("ray.data", extra="batch", package="ray[data]")
    if actors < 1 or batch_size < 1:
        raise InputError(f"actors and batch size must be >= 1, got {actors} and {batch_size}")
    engine_path = check_engine(engine)
    paths = bio.list_inputs(inputs) if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
    done = set(skip)
    if done:
        paths = [p for p in paths if p not in done]
    if not paths:
        raise InputError("no images left to detect on (all skipped)" if done else "no images given")
    config = config or artifact_config(engine_path)
    image_bytes = 3 * config.size * config.size * 4
    rows_per_block = max(1, min(1024, READ_BLOCK_BYTES // image_bytes))
    # Enough blocks that every actor gets work from the start, small enough to stream in a small store.
    blocks = max(
        1, math.ceil(len(paths) / rows_per_block), min(math.ceil(len(paths) / batch_size), 4 * actors)
    )
    ds = rd.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    # Each read task reserves the memory it uses (a worker plus its block). That is also what keeps reading
    # in tasks of its own: Ray Data fuses a stage into the next one when both ask for the same
    # resources (CPU-only inference), and decoding would then stop overlapping inference.
    ds = ds.map(_read_row, fn_kwargs={"config": config}, num_cpus=1, memory=READ_TASK_MEMORY)
    return ds.map_batches(
        DetectActor,
        fn_constructor_kwargs={"engine": str(engine_path), "backend_options": dict(backend_options or {}),
                               "overrides": dict(overrides), "min_score": float(min_score)},
        batch_size=batch_size, batch_format="numpy",
        compute=rd.ActorPoolStrategy(size=actors),
        num_gpus=_gpus_for(engine_path, gpus_per_actor), num_cpus=cpus_per_actor,
    )  # fmt: skip


def _quiet_ray_data() -> None:
    """Our own progress bar replaces Ray Data's; its per-operator bars and logs would interleave."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... which would otherwise warn once that its bars are off, as we asked.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _check_gpus(actors: int, gpus: float) -> None:
    import ray

    need = actors * gpus
    have = float(ray.cluster_resources().get("GPU", 0.0))
    if need > have:
        raise InputError(
            f"{actors} actor(s) x {gpus:g} GPU need {need:g} GPUs but the Ray cluster has {have:g}; "
            "lower --actors or add GPU nodes"
        )


# -- the in-process path ----------------------------------------------------------------------------
def _local_tables(detector: Any, overrides: dict[str, Any], min_score: float, paths: Sequence[str],
                  batch_size: int) -> Iterator[Any]:  # fmt: skip
    """The same rows in this process: decode the next batch in a thread while this one runs."""
    params = detector.params_for(**overrides)
    config = detector.config

    def read(chunk: Sequence[str]) -> tuple[Sequence[str], np.ndarray, list, list]:
        images = np.zeros((len(chunk), 3, config.size, config.size), np.float32)
        sizes: list[tuple[int, int] | None] = []
        errors: list[str | None] = []
        for i, p in enumerate(chunk):
            image, size, error = load_one(p, config)
            if image is not None:
                images[i] = image
            sizes.append(size)
            errors.append(error)
        return chunk, images, sizes, errors

    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssd-read") as pool:
        pending = pool.submit(read, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            assert pending is not None
            chunk, images, sizes, errors = pending.result()
            pending = pool.submit(read, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield detect_rows(detector, params, min_score, chunk, images, sizes, errors)


# -- the driver -------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """Everything ``ssd-detect --input`` takes; the same names as its flags."""

    engine: str
    inputs: str
    output: str
    use_ray: bool = False
    #: None: start a private local Ray (loopback); "auto" / "HOST:6379" / "ray://HOST:10001": join it.
    ray_address: str | None = None
    actors: int = 1
    batch_size: int = 16
    resume: bool = False
    min_score: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    rows_per_part: int = bio.DEFAULT_PART_ROWS
    object_store_bytes: int | None = None


@dataclass
class RunSummary:
    output: str
    images: int  # in the input
    skipped: int  # already in the output (resume)
    written: int  # rows this run wrote
    errors: int  # of those, error rows
    parts: int
    seconds: float
    #: Seconds until the first results arrived (listing, model and worker start-up, first batch).
    first_result_s: float = 0.0
    #: Rows in that first result batch.
    first_rows: int = 0

    @property
    def images_per_s(self) -> float:
        """The whole run: start-up included."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """From the first results to the last: the rate a long run settles at."""
        dt = self.seconds - self.first_result_s
        return (self.written - self.first_rows) / dt if dt > 0 and self.written > self.first_rows else 0.0


def _meta(opts: RunOptions, engine: Path, config_name: str) -> dict[str, Any]:
    return {"engine": str(engine), "model": config_name, "min_score": opts.min_score,
            "detect": {k: v for k, v in sorted(opts.overrides.items())}}  # fmt: skip


def _check_same_settings(out: Path, meta: dict[str, Any]) -> None:
    old = bio.read_meta(out)
    if old is None:
        return
    for key in ("engine", "min_score", "detect"):
        if old.get(key) != meta[key]:
            raise InputError(
                f"{out}: made with a different {key} ({old.get(key)!r}, now {meta[key]!r}); "
                "resume with the same settings or write to a new output"
            )


Progress = Callable[[int, int], None]


def run(opts: RunOptions, progress: Progress | None = None) -> RunSummary:
    """Detect on every image of ``opts.inputs`` not yet in ``opts.output`` and add part files.

    Checks the output, the inputs and the engine before starting anything; ``progress(done, total)``
    is called after every result batch. Interrupting (Ctrl-C, SIGTERM) keeps the rows finished so
    far in whole part files, so ``resume=True`` continues from there.
    """
    if opts.actors < 1 or opts.batch_size < 1:
        raise InputError(f"--actors and --batch must be >= 1, got {opts.actors} and {opts.batch_size}")
    out, fmt = bio.check_output(opts.output, resume=opts.resume)
    engine = check_engine(opts.engine)
    paths = bio.list_inputs(opts.inputs)
    done: set[str] = set()
    if opts.resume and out.is_dir():
        bio.remove_stale_temporaries(out)
        done = bio.done_paths(out, fmt)
    todo = [p for p in paths if p not in done]
    t0 = time.perf_counter()
    if opts.use_ray:
        config = artifact_config(engine)
        detector = None
    else:
        from ..runtime import Detector

        detector = Detector.load(engine, **opts.backend_options)
        config = detector.config
    meta = _meta(opts, engine, config.name)
    if opts.resume:
        _check_same_settings(out, meta)
    writer = bio.PartWriter(out, fmt, meta, opts.rows_per_part)
    errors, first_s, first_rows = 0, 0.0, 0
    if progress:
        progress(0, len(todo))
    tables: Any = None
    try:
        if todo:
            tables = (
                _ray_tables(opts, engine, todo, config)
                if opts.use_ray
                else _local_tables(detector, opts.overrides, opts.min_score, todo, opts.batch_size)
            )
            for table in tables:
                if not first_rows:
                    first_s, first_rows = time.perf_counter() - t0, table.num_rows
                errors += table.num_rows - table.column("error").null_count
                writer.add(table)
                if progress:
                    progress(writer.rows_done, len(todo))
    finally:
        if tables is not None:
            tables.close()  # now, not at garbage collection: stops the pipeline (and a Ray we started)
        # Whatever ended the run, the rows already computed are complete: keep them.
        writer.flush()
        if detector is not None:
            detector.close()
    return RunSummary(str(out), len(paths), len(paths) - len(todo), writer.rows_written, errors,
                      writer.parts_written, time.perf_counter() - t0, first_s, first_rows)  # fmt: skip


def _ray_tables(opts: RunOptions, engine: Path, todo: list[str], config: SSDConfig) -> Iterator[Any]:
    from ..raylocal import local_cpus, start_ray

    owns = start_ray(opts.ray_address, num_cpus=local_cpus(opts.actors, opts.cpus_per_actor),
                     object_store_bytes=opts.object_store_bytes)  # fmt: skip
    try:
        _quiet_ray_data()
        _check_gpus(opts.actors, _gpus_for(engine, opts.gpus_per_actor))
        ds = detect_dataset(
            engine, todo, actors=opts.actors, batch_size=opts.batch_size, gpus_per_actor=opts.gpus_per_actor,
            cpus_per_actor=opts.cpus_per_actor, min_score=opts.min_score,
            backend_options=opts.backend_options, config=config, **opts.overrides,
        )  # fmt: skip
        pa = optional_import("pyarrow", extra="batch")
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    finally:
        if owns:
            import ray

            ray.shutdown()


__all__ = ["DetectActor", "RunOptions", "RunSummary", "artifact_config", "check_engine",
           "detect_dataset", "make_table", "run"]  # fmt: skip
