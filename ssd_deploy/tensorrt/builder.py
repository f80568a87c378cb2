"""Build a TensorRT plan (plus its manifest) from an ``ssd_deploy.export`` ONNX file.

TensorRT 11 networks are strongly typed: precision comes from the ONNX graph itself (FP16
initializers and Casts, or Q/DQ nodes for INT8), never from builder flags. The builder therefore
only sets what is independent of precision: optimization profiles for the dynamic batch,
workspace, optimization level, version and hardware compatibility, and a timing cache.

The TensorRT API is used directly (no Polygraphy) so every call is visible to the API contract
test in ``tests/trt_api`` and checked against the real 11.4 bindings.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from ..config import PRECISION_KEY, RECIPE_KEY, ConfigError, SSDConfig
from ..contract import DETECTIONS, INPUT, NUM_DETECTIONS, sha256_file
from ..contract import REQUIRED_OUTPUTS as CONTRACT_OUTPUTS
from ..errors import SSDDeployError, one_line
from ..fileio import atomic_write
from . import loader
from .cuda import Cuda
from .manifest import HARDWARE_COMPAT, PlanManifest, manifest_path, write_manifest
from .trtlog import make_logger

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = INPUT
REQUIRED_OUTPUTS = CONTRACT_OUTPUTS
_E2E_OUTPUTS = (DETECTIONS, NUM_DETECTIONS)
#: TensorRT's highest builder optimization level (11.x documents 0..5, default 3).
MAX_OPT_LEVEL = 5


class BuildError(SSDDeployError, RuntimeError):
    """The plan cannot be built; the message is one line naming the file and the problem."""


class BatchProfile(NamedTuple):
    """One optimization profile for the batch dimension of ``images``."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_batch_profiles(text: str) -> list[BatchProfile]:
    """``"1:8:32"`` or ``"1:1:1,8:16:32"`` -> profiles; ``"8"`` means ``8:8:8``.

    Raises ``ValueError`` with a one-line message.
    """
    profiles: list[BatchProfile] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise ValueError(f"empty batch profile in {text!r} (expected min:opt:max[,min:opt:max...])")
        fields = part.split(":")
        if len(fields) == 1:
            fields = fields * 3
        if len(fields) != 3:
            raise ValueError(f"batch profile {part!r} must be min:opt:max (e.g. 1:8:32)")
        try:
            lo, opt, hi = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"batch profile {part!r} must be three integers min:opt:max") from None
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch profile {part!r} needs 1 <= min <= opt <= max")
        profiles.append(BatchProfile(lo, opt, hi))
    return profiles


@dataclass
class OnnxInfo:
    """What the builder needs to know about an export before TensorRT sees it."""

    path: Path
    sha256: str
    config: SSDConfig
    precision: str
    recipe: Any
    input_name: str
    input_shape: tuple[int, int, int]
    static_batch: int | None
    output_names: list[str]


def _infer_precision(model: Any) -> str:
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def read_onnx_info(path: str | os.PathLike[str]) -> OnnxInfo:
    """Check an export's input/outputs and read its ssd_deploy metadata (no TensorRT needed)."""
    try:
        import onnx
    except ImportError:
        raise BuildError("the onnx package is needed to read the export: pip install onnx") from None
    p = Path(path)
    if not p.is_file():
        raise BuildError(f"{p}: no such ONNX file (export one with python -m ssd_deploy.export)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise BuildError(f"{p}: not a readable ONNX model ({type(e).__name__}: {one_line(e)})") from None
    meta = {prop.key: prop.value for prop in model.metadata_props}
    try:
        config = SSDConfig.from_metadata(meta, str(p))
    except ConfigError as e:
        raise BuildError(str(e)) from None

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    named = [i for i in inputs if i.name == INPUT_NAME]
    if named:
        inp = named[0]
    elif len(inputs) == 1:
        inp = inputs[0]
    else:
        raise BuildError(f"{p}: expected one input named '{INPUT_NAME}', found {[i.name for i in inputs]}")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise BuildError(f"{p}: input '{inp.name}' must be [N,3,S,S], it has {len(dims)} dimensions")
    if any(not d.HasField("dim_value") for d in dims[1:]):
        raise BuildError(f"{p}: input '{inp.name}' must have static C, H, W (only the batch may be dynamic)")
    chw = tuple(int(d.dim_value) for d in dims[1:])
    if chw != (3, config.size, config.size):
        raise BuildError(
            f"{p}: input '{inp.name}' is {list(chw)}, the config says [3, {config.size}, {config.size}]"
        )
    static_batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None

    outputs = [o.name for o in model.graph.output]
    missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing:
        raise BuildError(f"{p}: missing output(s) {missing}; outputs are {outputs}")

    precision = meta.get(PRECISION_KEY) or _infer_precision(model)
    if precision not in PRECISIONS:
        raise BuildError(f"{p}: '{PRECISION_KEY}' metadata is {precision!r}, expected one of {PRECISIONS}")
    recipe: Any = meta.get(RECIPE_KEY)
    if recipe is not None:
        try:
            recipe = json.loads(recipe)
        except json.JSONDecodeError:
            pass  # keep the text: a recipe is documentation, not input
    if isinstance(recipe, dict) and recipe.get("target") not in (None, "tensorrt"):
        # The UINT8-activation CPU flavour has asymmetric Q/DQ, which TensorRT rejects mid-build.
        raise BuildError(
            f"{p}: this INT8 graph was made for {recipe.get('target')!r}, not TensorRT; "
            "make one with ssd-quantize --precision int8 --target tensorrt"
        )
    return OnnxInfo(
        path=p, sha256=sha256_file(p), config=config, precision=precision, recipe=recipe,
        input_name=inp.name, input_shape=chw,  # type: ignore[arg-type]
        static_batch=static_batch, output_names=outputs,
    )  # fmt: skip


# -- progress ----------------------------------------------------------------------------------


class BuildReporter(Protocol):
    """Receives TensorRT's build phases (from an ``IProgressMonitor``)."""

    def phase_start(self, name: str, parent: str | None, steps: int) -> None: ...
    def step(self, name: str, step: int) -> None: ...
    def phase_finish(self, name: str) -> None: ...


class LineReporter:
    """Plain log lines: top-level phases with their duration, nested phases when ``verbose``."""

    def __init__(self, log: Callable[[str], None], verbose: bool = False) -> None:
        self._log = log
        self._verbose = verbose
        self._started: dict[str, tuple[float, int]] = {}
        self._depth: dict[str, int] = {}

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        depth = self._depth.get(parent, -1) + 1 if parent else 0
        self._depth[name] = depth
        self._started[name] = (time.perf_counter(), depth)
        if depth == 0 or (self._verbose and depth == 1):
            self._log(f"{'  ' * depth}{name} ({steps} steps)")

    def step(self, name: str, step: int) -> None:
        pass

    def phase_finish(self, name: str) -> None:
        t0, depth = self._started.pop(name, (time.perf_counter(), 0))
        if depth == 0:
            self._log(f"{name} done in {time.perf_counter() - t0:.1f} s")


class RichReporter:
    """A rich progress bar per active phase (use as a context manager)."""

    def __init__(self, max_depth: int = 2) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}
        self._depth: dict[str, int] = {}
        self._max_depth = max_depth

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        depth = self._depth.get(parent, -1) + 1 if parent else 0
        self._depth[name] = depth
        if depth <= self._max_depth:
            self._tasks[name] = self._progress.add_task("  " * depth + name, total=max(steps, 1))

    def step(self, name: str, step: int) -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.update(task, completed=step + 1)

    def phase_finish(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.remove_task(task)


def make_progress_monitor(trt: ModuleType, reporter: BuildReporter) -> Any:
    """An ``IProgressMonitor`` forwarding TensorRT's callbacks to ``reporter``."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()

        # The callbacks come from TensorRT's threads; an exception escaping them would cross
        # into C++, so they swallow reporter errors.
        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self._lock:
                    reporter.phase_start(phase_name, parent_phase or None, int(num_steps))
            except Exception:
                pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                with self._lock:
                    reporter.step(phase_name, int(step))
            except Exception:
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self._lock:
                    reporter.phase_finish(phase_name)
            except Exception:
                pass

    return _Monitor()


# -- build -------------------------------------------------------------------------------------


@dataclass
class BuildOptions:
    """Inputs of :func:`build_plan` (the CLI flags of ``ssd-build``)."""

    onnx: Path
    profiles: list[BatchProfile] = field(default_factory=lambda: [BatchProfile(1, 8, 32)])
    output: Path | None = None
    #: Timing cache file: read if present, written after the build. ``None``: no cache.
    timing_cache: Path | None = None
    workspace_mib: int | None = None
    opt_level: int | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    device: int = 0
    #: Keep outputs besides loc and conf (the export's constant ``priors``) in the engine.
    keep_extra_outputs: bool = False
    #: End-to-end ONNX (docs/end_to_end.md): keep ``detections``/``num_detections`` so the engine
    #: runs Detect too. Off by default: without it those outputs are unmarked and TensorRT drops
    #: the Detect nodes (equal-score order in TensorRT's NMS is unverified, see the GPU test).
    end_to_end: bool = False
    verbose: bool = False

    @property
    def plan_path(self) -> Path:
        return Path(self.output) if self.output else Path("engines") / f"{Path(self.onnx).stem}.plan"

    def validate(self) -> None:
        if not self.profiles:
            raise BuildError("at least one batch profile is needed (--batch min:opt:max)")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise BuildError(
                f"--hardware-compat must be one of {', '.join(HARDWARE_COMPAT)}, got {self.hardware_compat!r}"
            )
        if self.opt_level is not None and not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise BuildError(f"--opt-level must be 0..{MAX_OPT_LEVEL}, got {self.opt_level}")
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise BuildError(f"--workspace must be a positive number of MiB, got {self.workspace_mib}")
        if self.plan_path.suffix != ".plan":
            raise BuildError(
                f"{self.plan_path}: the output must end in .plan (ssd_deploy loads plans by suffix)"
            )


@dataclass
class BuildResult:
    plan: Path
    manifest: PlanManifest
    manifest_file: Path
    seconds: float
    plan_bytes: int
    timing_cache: Path | None = None
    notes: list[str] = field(default_factory=list)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _parser_errors(parser: Any) -> list[str]:
    """Each ONNX parser error as 'node 12 'name' (Op): description'."""
    out: list[str] = []
    for i in range(parser.num_errors):
        parser_error = parser.get_error(i)
        desc = " ".join(str(parser_error.desc()).split())
        node, name, op = parser_error.node(), parser_error.node_name(), parser_error.node_operator()
        if node is not None and int(node) >= 0 or name:
            where = f"node {int(node)}" if node is not None and int(node) >= 0 else "node"
            if name:
                where += f" '{name}'"
            if op:
                where += f" ({op})"
            out.append(f"{where}: {desc}")
        else:
            out.append(desc)
    return out


def _attach_timing_cache(builder_config: Any, path: Path | None, log: Callable[[str], None]) -> bool:
    """Attach the cache at ``path`` (or an empty one); True when an existing cache was used.

    A cache from another GPU or TensorRT version, or an unreadable file, is not an error: the
    build starts from an empty cache and the file is overwritten afterwards.
    """
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            log(f"timing cache {path} is unreadable ({e}); starting a new one")
    if data:
        try:
            timing_cache = builder_config.create_timing_cache(data)
        except Exception as e:  # TensorRT raises on a corrupt cache
            log(f"timing cache {path} is not a TensorRT timing cache ({one_line(e)}); starting a new one")
            timing_cache = None
        if timing_cache is not None:
            if builder_config.set_timing_cache(timing_cache, False):
                return True
            log(f"timing cache {path} was made on another GPU or TensorRT version; starting a new one")
    timing_cache = builder_config.create_timing_cache(b"")
    if timing_cache is None or not builder_config.set_timing_cache(timing_cache, False):
        raise BuildError("TensorRT refused an empty timing cache")
    return False


def build_plan(
    opts: BuildOptions,
    *,
    reporter: BuildReporter | None = None,
    log: Callable[[str], None] = _stderr,
    cuda: Cuda | None = None,
) -> BuildResult:
    """Parse the ONNX file, build a plan with TensorRT, write ``<plan>`` and ``<plan>.json``.

    Raises :class:`BuildError` (bad input, parse or build failure) or
    :class:`~ssd_deploy.tensorrt.loader.TensorRTUnavailable` (no TensorRT, CUDA or
    GPU; checked before any TensorRT object exists).
    """
    opts.validate()
    info = read_onnx_info(opts.onnx)
    if opts.end_to_end and not set(_E2E_OUTPUTS) <= set(info.output_names):
        raise BuildError(
            f"{info.path}: an end-to-end engine needs the outputs {list(_E2E_OUTPUTS)} (export with "
            f"--end-to-end); the file has {info.output_names}"
        )
    if info.static_batch is not None:
        bad = [str(p) for p in opts.profiles if not p.min == p.max == info.static_batch]
        if bad:
            raise BuildError(
                f"{info.path}: the batch is fixed to {info.static_batch} in the ONNX file, profiles {bad} "
                f"do not fit; use --batch {info.static_batch} or re-export with a dynamic batch"
            )

    trt = loader.load_tensorrt()
    cuda = cuda if cuda is not None else Cuda()
    device = cuda.device_info(opts.device)
    cuda.set_device(opts.device)
    if opts.hardware_compat == "ampere+" and device.major < 8:
        raise BuildError(
            f"--hardware-compat ampere+ needs an Ampere or newer GPU to build on; this is {device.name} "
            f"(compute capability {device.compute_capability})"
        )
    trt_version = str(trt.__version__)
    trt_major = (loader.version_tuple(trt_version) or (0,))[0]

    logger = make_logger(trt, echo=log, verbose=opts.verbose)
    builder = trt.Builder(logger)
    if trt_major >= 11:
        flags = 0  # strongly typed is the only mode on 11
    else:
        # trt-compat: TensorRT 10.12+ needs the flag to honour the graph's own types (deprecated in 11).
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {info.path} ({info.precision}, TensorRT {trt_version}, {device.name})")
    if not parser.parse_from_file(str(info.path)):
        errors = _parser_errors(parser) or [logger.last_error()]
        for e in errors[1:]:
            log(f"  parser: {e}")
        more = f" (+{len(errors) - 1} more above)" if len(errors) > 1 else ""
        raise BuildError(f"{info.path}: TensorRT cannot parse {errors[0]}{more}")
    if network.num_inputs != 1:
        raise BuildError(f"{info.path}: the parsed network has {network.num_inputs} inputs, expected 1")
    net_input = network.get_input(0)
    input_name = str(net_input.name)
    if input_name != info.input_name:
        raise BuildError(
            f"{info.path}: TensorRT sees input {input_name!r}, the ONNX file {info.input_name!r}"
        )

    if not opts.keep_extra_outputs:
        # The runtime computes priors from the config; a constant [P, 4] output only costs a
        # buffer per context and has no batch dimension, which Triton's batching cannot serve.
        for i in reversed(range(network.num_outputs)):
            out_tensor = network.get_output(i)
            if out_tensor.name not in REQUIRED_OUTPUTS + (_E2E_OUTPUTS if opts.end_to_end else ()):
                network.unmark_output(out_tensor)
    output_names = [str(network.get_output(i).name) for i in range(network.num_outputs)]

    builder_config = builder.create_builder_config()
    if opts.workspace_mib is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mib) << 20)
    if opts.opt_level is not None:
        builder_config.builder_optimization_level = int(opts.opt_level)
    if opts.version_compatible:
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    hw_level = {
        "none": trt.HardwareCompatibilityLevel.NONE,
        "ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
        "same-cc": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
    }[opts.hardware_compat]
    builder_config.hardware_compatibility_level = hw_level
    c, s1, s2 = info.input_shape
    for prof in opts.profiles:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(
            input_name,
            trt.Dims([prof.min, c, s1, s2]),
            trt.Dims([prof.opt, c, s1, s2]),
            trt.Dims([prof.max, c, s1, s2]),
        )
        if builder_config.add_optimization_profile(opt_profile) < 0:
            raise BuildError(f"{info.path}: TensorRT rejected batch profile {prof}: {logger.last_error()}")
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    cache_loaded = _attach_timing_cache(builder_config, cache_path, log)
    monitor = None  # kept referenced until the build is done: TensorRT holds only a raw pointer
    if reporter is not None:
        monitor = make_progress_monitor(trt, reporter)
        builder_config.progress_monitor = monitor

    plan_path = opts.plan_path
    log(f"building {plan_path} (batch profiles {', '.join(map(str, opts.profiles))})")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise BuildError(f"{info.path}: TensorRT could not build the engine: {logger.last_error()}")
    data = memoryview(serialized).cast("B")
    if data.nbytes == 0:
        raise BuildError(f"{info.path}: TensorRT returned an empty plan: {logger.last_error()}")

    manifest = PlanManifest(
        tensorrt_version=trt_version,
        gpu_name=device.name,
        compute_capability=device.compute_capability,
        onnx_path=str(info.path),
        onnx_sha256=info.sha256,
        plan_sha256=hashlib.sha256(data).hexdigest(),
        precision=info.precision,
        recipe=info.recipe,
        profiles=[tuple(p) for p in opts.profiles],  # type: ignore[misc]
        input_name=input_name,
        input_shape=info.input_shape,
        output_names=output_names,
        config=info.config.to_dict(),
        version_compatible=bool(opts.version_compatible),
        hardware_compat=opts.hardware_compat,
        build_flags={
            "strongly_typed": True,
            "workspace_mib": opts.workspace_mib,
            "builder_optimization_level": opts.opt_level,
            "version_compatible": bool(opts.version_compatible),
            "hardware_compatibility_level": HARDWARE_COMPAT[opts.hardware_compat],
            "timing_cache": str(cache_path) if cache_path else None,
            "timing_cache_reused": cache_loaded,
        },
        build_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
        tool=_tool_version(),
    )
    atomic_write(plan_path, data)
    mpath = manifest_path(plan_path)
    try:
        write_manifest(manifest, mpath)
    except BaseException:
        plan_path.unlink(missing_ok=True)  # a plan without its manifest would not load
        raise
    saved_cache = None
    if cache_path is not None:
        try:
            host_mem = builder_config.get_timing_cache().serialize()
            atomic_write(cache_path, memoryview(host_mem).cast("B"))
            saved_cache = cache_path
        except Exception as e:  # the plan is fine without a cache
            log(f"could not save the timing cache {cache_path}: {e}")
    return BuildResult(
        plan=plan_path, manifest=manifest, manifest_file=mpath, seconds=seconds,
        plan_bytes=data.nbytes, timing_cache=saved_cache,
    )  # fmt: skip


def _tool_version() -> str:
    from .. import __version__

    return f"ssd_deploy {__version__}"
