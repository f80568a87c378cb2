"""Run artifacts side by side: warm-up, then interleaved rounds A B A B ..., optionally from several
client threads sharing one :class:`~ssd_deploy.runtime.Detector` per artifact.

Interleaving is the point: on a shared or throttling machine the load drifts over seconds, and rounds
that alternate between artifacts see the same drift, so the ratio of two artifacts measured in one
run is far steadier than the ratio of two separate runs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..contract import artifact_kind
from ..errors import SSDDeployError, one_line
from .stats import Summary, summarize

#: Stage names reported per call, in pipeline order; "postprocess" is decode + NMS.
STAGES: tuple[str, ...] = ("preprocess", "h2d", "compute", "d2h", "postprocess")
#: Fewest measured rounds in ``duration`` mode, so a slow artifact still gets a distribution.
MIN_ROUNDS = 3


class BenchError(SSDDeployError, RuntimeError):
    """The benchmark cannot run as asked; the message is one line (the CLI exits with code 2)."""


class DetectorLike(Protocol):
    """What the runner needs from a detector (``Detector`` provides it)."""

    config: Any
    backend: Any

    def detect_timed(self, images: Any, **kwargs: Any) -> tuple[Any, dict[str, float]]: ...


@dataclass
class Subject:
    """One artifact under test: a label for tables, the loaded detector and where it came from."""

    label: str
    detector: DetectorLike
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """How long and how hard to measure.

    ``iterations`` measured rounds per batch size (or ``duration`` seconds per artifact on
    average), each preceded by ``warmup`` unmeasured rounds. In one round every artifact runs one
    *slot*: ``threads`` client threads each make ``block`` calls of ``batch`` images.
    """

    batches: tuple[int, ...] = (1,)
    warmup: int = 2
    iterations: int | None = 20
    duration: float | None = None
    threads: int = 1
    block: int = 1

    def validate(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise BenchError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be >= 0, got {self.warmup}")
        if (self.iterations is None) == (self.duration is None):
            raise BenchError("give either a number of iterations or a duration, not both")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError(f"--iterations must be >= 1, got {self.iterations}")
        if self.duration is not None and not self.duration > 0:
            raise BenchError(f"--duration must be > 0 seconds, got {self.duration}")
        if self.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {self.threads}")
        if self.block < 1:
            raise BenchError(f"--block must be >= 1, got {self.block}")


@dataclass(frozen=True)
class CallRecord:
    """One ``detect`` call: when it started (seconds from the run's start), how long it took, stages."""

    round: int
    thread: int
    start: float
    latency: float
    stages: dict[str, float]


@dataclass
class SlotRecord:
    """One artifact's turn in one round; ``wall`` spans its first call's start to its last call's end."""

    round: int
    wall: float
    calls: list[CallRecord]


@dataclass
class Measurement:
    """Everything measured for one artifact at one batch size (warm-up excluded)."""

    label: str
    batch: int
    threads: int
    block: int
    slots: list[SlotRecord] = field(default_factory=list)
    warmup_rounds: int = 0

    @property
    def calls(self) -> list[CallRecord]:
        return [c for s in self.slots for c in s.calls]

    @property
    def images(self) -> int:
        return self.batch * sum(len(s.calls) for s in self.slots)

    @property
    def wall(self) -> float:
        """Host wall time of the measured slots, summed (other artifacts' turns excluded)."""
        return float(sum(s.wall for s in self.slots))

    @property
    def throughput(self) -> float:
        """Images per second: images processed over host wall time (trtexec's definition)."""
        return self.images / self.wall if self.wall > 0 else math.inf

    def latencies(self) -> np.ndarray:
        """End-to-end seconds per call (a call handles ``batch`` images)."""
        return np.array([c.latency for c in self.calls], dtype=np.float64)

    def stage(self, name: str) -> np.ndarray:
        return np.array([c.stages.get(name, 0.0) for c in self.calls], dtype=np.float64)

    def round_walls(self) -> np.ndarray:
        return np.array([s.wall for s in self.slots], dtype=np.float64)

    def latency_summary(self) -> Summary:
        """End-to-end latency in milliseconds."""
        return summarize(self.latencies(), scale=1e3)

    def stage_summaries(self) -> dict[str, Summary]:
        """Per-stage times in milliseconds; stages a backend cannot separate are all zero."""
        return {name: summarize(self.stage(name), scale=1e3) for name in STAGES}


def interleaved_schedule(labels: Sequence[str], rounds: int, warmup: int = 0) -> list[tuple[str, int, str]]:
    """The order of slots: ``(phase, round, label)`` with phase "warmup" or "measure".

    Every round visits the artifacts in the given order (A B C A B C ...); warm-up rounds come
    first and use the same order, so they also warm whatever state the alternation itself creates.
    """
    order: list[tuple[str, int, str]] = []
    for r in range(warmup):
        order += [("warmup", r, lab) for lab in labels]
    for r in range(rounds):
        order += [("measure", r, lab) for lab in labels]
    return order


def cycle_batch(images: Sequence[Any], n: int) -> list[Any]:
    """``n`` inputs taken round-robin from ``images`` (the same photos repeat in larger batches)."""
    if not images:
        raise BenchError("no input images")
    return [images[i % len(images)] for i in range(n)]


ProgressFn = Callable[[int, str, str, int, float], None]


class _Clients:
    """Runs a slot: ``threads`` client threads start together and each makes ``block`` calls."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ssd-bench") if threads > 1 else None
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def run(self, call: Callable[[], dict[str, float]], block: int, origin: float, rnd: int) -> SlotRecord:
        def client(tid: int, barrier: threading.Barrier | None) -> list[CallRecord]:
            if barrier is not None:
                barrier.wait()
            out = []
            for _ in range(block):
                t0 = time.perf_counter()
                stages = call()
                t1 = time.perf_counter()
                out.append(CallRecord(rnd, tid, t0 - origin, t1 - t0, stages))
            return out

        if self._pool is None:
            calls = client(0, None)
        else:
            # The barrier lines the clients up so the slot measures concurrent calls, not the
            # pool's start-up.
            barrier = threading.Barrier(self.threads)
            futures = [self._pool.submit(client, t, barrier) for t in range(self.threads)]
            calls = [c for f in futures for c in f.result()]
        start = min(c.start for c in calls)
        end = max(c.start + c.latency for c in calls)
        return SlotRecord(round=rnd, wall=end - start, calls=calls)


def _stages(timings: dict[str, float]) -> dict[str, float]:
    return {name: float(timings.get(name, 0.0)) for name in STAGES} | {
        "total": float(timings.get("total", 0.0))
    }


def check_batches(subjects: Sequence[Subject], batches: Sequence[int]) -> None:
    """Refuse batch sizes outside an artifact's profile before anything runs."""
    for s in subjects:
        lo, hi = s.detector.backend.batch_range
        for b in batches:
            if b < lo or (hi is not None and b > hi):
                span = f"[{lo}, {hi}]" if hi is not None else f"[{lo}, unbounded]"
                raise BenchError(
                    f"{s.path or s.label}: batch {b} is outside the engine's batch profile {span}"
                )


def run_benchmark(
    subjects: Sequence[Subject],
    images: Sequence[Any],
    settings: Settings,
    progress: ProgressFn | None = None,
    detect_kwargs: dict[str, Any] | None = None,
) -> list[Measurement]:
    """Measure every subject at every batch size, interleaved; one :class:`Measurement` each.

    ``images`` are what ``detect`` accepts (decoded arrays, paths); batches cycle through them.
    ``progress(batch, label, phase, round, slot_wall)`` is called after every slot.
    """
    settings.validate()
    if not subjects:
        raise BenchError("no engines to benchmark")
    labels = [s.label for s in subjects]
    if len(set(labels)) != len(labels):
        raise BenchError(f"engine labels must be unique, got {labels}")
    check_batches(subjects, settings.batches)
    by_label = {s.label: s for s in subjects}
    kwargs = dict(detect_kwargs or {})
    clients = _Clients(settings.threads)
    results: list[Measurement] = []
    origin = time.perf_counter()
    try:
        for batch in settings.batches:
            inputs = cycle_batch(images, batch)
            meas = {
                lab: Measurement(lab, batch, settings.threads, settings.block, warmup_rounds=settings.warmup)
                for lab in labels
            }
            for phase, rnd, lab in _rounds(labels, settings, meas):
                det = by_label[lab].detector

                def call(det: DetectorLike = det, inputs: list[Any] = inputs) -> dict[str, float]:
                    return _stages(det.detect_timed(inputs, **kwargs)[1])

                slot = clients.run(call, settings.block, origin, rnd)
                if phase == "measure":
                    meas[lab].slots.append(slot)
                if progress is not None:
                    progress(batch, lab, phase, rnd, slot.wall)
            results += [meas[lab] for lab in labels]
    finally:
        clients.close()
    return results


def _rounds(
    labels: Sequence[str], settings: Settings, meas: dict[str, Measurement]
) -> Iterator[tuple[str, int, str]]:
    if settings.iterations is not None:
        yield from interleaved_schedule(labels, settings.iterations, settings.warmup)
        return
    yield from interleaved_schedule(labels, 0, settings.warmup)
    assert settings.duration is not None
    # "About `duration` seconds per artifact": whole rounds until the measured time of all
    # artifacts together reaches duration x artifacts, so every artifact keeps the same rounds.
    budget = settings.duration * len(labels)
    rnd = 0
    while rnd < MIN_ROUNDS or sum(m.wall for m in meas.values()) < budget:
        for lab in labels:
            yield ("measure", rnd, lab)
        rnd += 1


# -- opening artifacts ---------------------------------------------------------------------------
def backend_options(
    path: str | os.PathLike[str],
    intra_op_threads: int | None = None,
    device: str | None = None,
    client_threads: int = 1,
    cuda_graphs: bool = False,
    precision: str | None = None,
) -> dict[str, Any]:
    """Keyword options for :meth:`Detector.load` that the artifact's backend understands."""
    kind = artifact_kind(path)
    opts: dict[str, Any] = {}
    if kind in ("onnx", "openvino"):
        if intra_op_threads:
            opts["intra_op_threads"] = intra_op_threads
        if device and kind == "onnx":
            opts["device"] = device
        if precision:
            opts["precision"] = precision
    elif kind == "torch":
        if intra_op_threads:
            opts["threads"] = intra_op_threads
    elif kind == "plan":
        # One execution context per client thread, or concurrent calls would queue for one.
        opts["contexts"] = max(2, client_threads)
        if cuda_graphs:
            opts["cuda_graphs"] = True
    return opts


def parse_engine(spec: str) -> tuple[str | None, str]:
    """``LABEL=PATH`` or ``PATH`` -> ``(label or None, path)``."""
    if "=" in spec:
        label, _, path = spec.partition("=")
        if label and path and not any(ch in label for ch in "/\\."):
            return label, path
    return None, spec


def unique_labels(paths: Sequence[str], labels: Sequence[str | None]) -> list[str]:
    """The given labels, file stems where none was given; repeated labels get ``#1``, ``#2`` ..."""
    out = [lab or Path(path).stem for path, lab in zip(paths, labels)]
    counts = {lab: out.count(lab) for lab in out}
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        if counts[lab] > 1:
            seen[lab] = seen.get(lab, 0) + 1
            out[i] = f"{lab}#{seen[lab]}"
    return out


def open_subject(
    label: str,
    path: str,
    *,
    intra_op_threads: int | None = None,
    device: str | None = None,
    client_threads: int = 1,
    cuda_graphs: bool = False,
    precision: str | None = None,
) -> Subject:
    """Load ``path`` into a :class:`Detector`; any failure becomes a one-line :class:`BenchError`."""
    from ..config import ConfigError
    from ..runtime import BackendError, Detector

    p = Path(path)
    if not p.exists():
        raise BenchError(f"{p}: no such file")
    opts = backend_options(p, intra_op_threads, device, client_threads, cuda_graphs, precision)
    try:
        det = Detector.load(p, **opts)
    except (BackendError, ConfigError, OSError, ValueError) as e:
        raise BenchError(_naming(p, one_line(e))) from None
    except ImportError as e:
        # A backend whose library is absent (TensorRT on a machine without it).
        raise BenchError(f"{p}: cannot open it here: {one_line(e)}") from None
    return Subject(label=label, detector=det, path=str(p), options=opts)


def _naming(path: Path, message: str) -> str:
    """``message`` prefixed with the file unless it already names it."""
    return message if str(path) in message or path.name in message else f"{path}: {message}"
