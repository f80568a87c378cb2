"""The Ray Serve application: one :class:`Detector` per replica, requests batched across clients.

HTTP API (all JSON):

- ``POST /detect`` - body is a JPEG or PNG (``Content-Type: image/jpeg|image/png``) or a
  ``multipart/form-data`` form with the image in a field named ``image``. Optional query
  parameters ``conf_thresh``, ``nms_thresh``, ``top_k``, ``keep_top_k``. Answers
  ``{"width", "height", "detections": [{"class_id", "class_name", "score", "box"}]}`` with boxes
  in the image's pixels, or a 4xx ``{"error": "..."}`` naming what is wrong with the request.
- ``GET /healthz`` - liveness: the replica's event loop answers.
- ``GET /readyz`` - readiness: the model is loaded and warmed up; reports the model and limits.

From Python::

    from ssd_deploy.serve import ServeOptions, start
    with start(ServeOptions("export/ssd300.onnx", port=8000)) as server:
        ...  # POST images to server.url + "/detect"

The same application runs on a multi-node Ray cluster (``ray_address="auto"``): Serve places
replicas where their resources (``num_gpus`` per replica for TensorRT plans) are free.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime and
# must see `Request` itself, not a string.
import asyncio
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import ray
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve
except ImportError as _e:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        f"the Ray Serve app needs the 'serve' extra ({_e.name} is missing): pip install 'ssd_deploy[serve]'"
    ) from None

from ..contract import ONNX_SUFFIXES, PLAN_SUFFIXES
from ..errors import SSDDeployError
from .service import DetectionService, Limits, Prepared, RequestError

__all__ = ["ServeOptions", "RunningService", "ServeError", "build_app", "start", "SSDDetector"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeError(SSDDeployError, RuntimeError):
    """The service could not be started; one line saying why."""


@dataclass
class ServeOptions:
    """Everything ``ssd-serve`` takes; the same names as its flags."""

    engine: str
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8000
    #: Ray resources per replica. ``num_gpus=None``: 1 for TensorRT plans, 0 otherwise.
    num_cpus: float = 1.0
    num_gpus: float | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    #: Requests one replica works on at once (decoding + the batch queue); None: 4 x max_batch.
    max_ongoing_requests: int | None = None
    #: Requests waiting for a replica before Serve answers 503; -1: no limit.
    max_queued_requests: int = -1
    #: Passed to ``Detector.load`` (e.g. ``{"intra_op_threads": 2}`` for ONNX Runtime).
    backend_options: dict[str, Any] = field(default_factory=dict)
    #: Connect to this Ray cluster ("auto" or "ray://host:10001"); None starts a local Ray.
    ray_address: str | None = None
    #: CPUs a locally started Ray may schedule on; None: enough for the replicas.
    ray_num_cpus: int | None = None
    app_name: str = "ssd"
    route_prefix: str = "/"
    log_to_driver: bool = True
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.engine = str(Path(self.engine).expanduser().resolve())
        if self.replicas < 1:
            raise ServeError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_batch < 1:
            raise ServeError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ServeError(f"batch_wait_ms must be in [0, 10000], got {self.batch_wait_ms}")
        if not 1 <= self.port <= 65535:
            raise ServeError(f"port must be in [1, 65535], got {self.port}")
        if self.max_body_bytes < 1 or self.max_pixels < 1:
            raise ServeError(
                f"upload and pixel limits must be positive, got {self.max_body_bytes}, {self.max_pixels}"
            )

    @property
    def is_plan(self) -> bool:
        return Path(self.engine).suffix.lower() in PLAN_SUFFIXES

    @property
    def gpus_per_replica(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if self.is_plan else 0.0

    @property
    def ongoing_per_replica(self) -> int:
        # Enough in flight per replica to fill one batch while the previous one runs.
        return self.max_ongoing_requests or max(4 * self.max_batch, 8)

    def check_engine(self) -> None:
        p = Path(self.engine)
        if not p.is_file():
            raise ServeError(f"{p}: no such engine file")
        if p.suffix.lower() not in ONNX_SUFFIXES + PLAN_SUFFIXES:
            raise ServeError(f"{p}: cannot serve a {p.suffix or 'suffix-less'} file; pass an .onnx or .plan")


# -- the deployment ---------------------------------------------------------------------------

api = FastAPI(title="ssd_deploy detection", docs_url=None, redoc_url=None, openapi_url=None)


def _json(content: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")), status_code=status, media_type="application/json"
    )


async def _read_body(request: Request, limit: int, service: DetectionService) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length {declared!r}") from None
        if n > limit:
            raise RequestError(413, service.body_too_large(n))
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise RequestError(413, service.body_too_large())
    return bytes(buf)


@serve.deployment(name="SSDDetector")
@serve.ingress(api)
class SSDDetector:
    """A Serve replica: decodes requests in threads, runs them through one Detector in batches."""

    def __init__(self, engine: str, settings: dict[str, Any]) -> None:
        self.service = DetectionService(
            engine, limits=Limits(settings["max_body_bytes"], settings["max_pixels"]),
            backend_options=settings.get("backend_options") or {},
        )  # fmt: skip
        self.max_batch = int(settings["max_batch"])
        # One inference thread: batches run one after another, off the event loop.
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssd-infer")
        self._run_batch.set_max_batch_size(self.max_batch)
        self._run_batch.set_batch_wait_timeout_s(float(settings["batch_wait_ms"]) / 1000.0)
        # serve.batch closes a batch when its wait window ends, even when that batch then only
        # queues behind the running one. Requests arriving while a batch runs wait at this gate
        # instead, so all of them enter the next batch together (a full batch under load).
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = time.time()

    @api.post("/detect")
    async def detect(self, request: Request) -> Response:
        try:
            body = await _read_body(request, self.service.limits.max_body_bytes, self.service)
            prepared = await asyncio.to_thread(
                self.service.prepare, request.headers.get("content-type"), body, dict(request.query_params)
            )  # fmt: skip
        except RequestError as e:
            return _json({"error": e.message}, e.status)
        try:
            await self._idle.wait()
            result = await self._run_batch(prepared)
        except Exception as e:  # noqa: BLE001 - any backend failure is this request's 500
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return _json({"error": f"inference failed: {first}"}, 500)
        return _json(result)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run_batch(self, items: list[Prepared]) -> list[dict[str, Any]]:
        self._idle.clear()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._infer_pool, self.service.run_batch, items)
        finally:
            self._idle.set()

    @api.get("/healthz")
    async def healthz(self) -> Response:
        return _json({"status": "ok"})

    @api.get("/readyz")
    async def readyz(self) -> Response:
        if self.service.closed:
            return _json({"ready": False, "error": "detector closed"}, 503)
        info = self.service.info()
        info.update(ready=True, max_batch=self.max_batch, uptime_s=round(time.time() - self.started, 1))
        return _json(info)

    def check_health(self) -> None:
        """Called by Serve; raising makes Serve replace this replica."""
        if self.service.closed:
            raise RuntimeError("detector closed")

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
        pool = getattr(self, "_infer_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def build_app(options: ServeOptions) -> Any:
    """The Serve application for ``options`` (pass it to ``serve.run`` or use :func:`start`)."""
    settings = {
        "max_batch": options.max_batch, "batch_wait_ms": options.batch_wait_ms,
        "max_body_bytes": options.max_body_bytes, "max_pixels": options.max_pixels,
        "backend_options": dict(options.backend_options),
    }  # fmt: skip
    actor = {"num_cpus": options.num_cpus, "num_gpus": options.gpus_per_replica}
    return SSDDetector.options(
        num_replicas=options.replicas, ray_actor_options=actor,
        max_ongoing_requests=options.ongoing_per_replica, max_queued_requests=options.max_queued_requests,
    ).bind(options.engine, settings)  # fmt: skip


# -- starting and stopping ---------------------------------------------------------------------


class RunningService:
    """A started application. ``stop()`` (or leaving the ``with`` block) shuts down what
    :func:`start` started: the app, and Serve and Ray too when this process started them."""

    def __init__(self, options: ServeOptions, owns_ray: bool, owns_serve: bool) -> None:
        self.options = options
        self._owns_ray = owns_ray
        self._owns_serve = owns_serve
        self._stopped = False

    @property
    def url(self) -> str:
        host = self.options.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        prefix = self.options.route_prefix.rstrip("/")
        return f"http://{host}:{self.options.port}{prefix}"

    def readiness(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The ``/readyz`` answer, or None while the HTTP proxy or replicas are not up."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.readiness()
            if info is not None and info.get("ready"):
                return info
            if time.monotonic() > deadline:
                raise ServeError(f"{self.url}/readyz did not answer within {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if not ray.is_initialized():
            return
        try:
            if self._owns_serve:
                serve.shutdown()
            else:
                serve.delete(self.options.app_name)
        finally:
            if self._owns_ray:
                ray.shutdown()

    def __enter__(self) -> "RunningService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _local_ray_init(options: ServeOptions) -> None:
    cpus = options.ray_num_cpus
    if cpus is None:
        # Logical CPUs are a scheduling notion: never fewer than the replicas ask for, so a
        # request for more replicas than cores oversubscribes instead of waiting forever.
        cpus = max(os.cpu_count() or 1, math.ceil(options.replicas * options.num_cpus))
    ray.init(
        num_cpus=cpus,
        # No dashboard web UI. Ray's own internal services still listen on the node's address
        # (that is how a cluster forms; Ray guards them with its token authentication).
        include_dashboard=False,
        log_to_driver=options.log_to_driver,
        configure_logging=True,
        logging_level="WARNING",
    )


def _check_resources(options: ServeOptions) -> None:
    need_gpu = options.replicas * options.gpus_per_replica
    if need_gpu <= 0:
        return
    have = float(ray.cluster_resources().get("GPU", 0.0))
    if have < need_gpu:
        raise ServeError(
            f"{options.replicas} replica(s) x {options.gpus_per_replica:g} GPU need {need_gpu:g} GPUs but "
            f"the Ray cluster has {have:g}; lower --replicas or --gpus-per-replica, or add GPU nodes"
        )


def _deploy_error(e: BaseException, options: ServeOptions) -> ServeError:
    """One line saying why the replicas did not start: Serve's own exception only says that the
    deployment failed, the replica's error is in the deployment status."""
    detail = ""
    try:
        app = serve.status().applications[options.app_name]
        detail = "\n".join(d.message for d in app.deployments.values() if d.message) or app.message
    except Exception:  # noqa: BLE001 - the status is a best effort for a better message
        pass
    lines = [ln.strip() for ln in (detail or str(e)).splitlines() if ln.strip()]
    # The replica's traceback ends with the exception; prefer the line naming the engine file.
    cause = next((ln for ln in reversed(lines) if options.engine in ln), None)
    cause = cause or next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    cause = re.sub(r"^[\w.]+(Error|Exception): ", "", cause) or type(e).__name__
    if cause.startswith(options.engine):
        return ServeError(f"the replicas failed to start: {cause}")
    return ServeError(f"{options.engine}: the replicas failed to start: {cause}")


def start(options: ServeOptions | str, **overrides: Any) -> RunningService:
    """Start (or join) Ray, start Serve's HTTP proxy and deploy the app; returns when the
    service answers ``/readyz``. ``start("export/ssd300.onnx", port=8100)`` also works."""
    if isinstance(options, str) or isinstance(options, os.PathLike):
        options = ServeOptions(str(options), **overrides)
    elif overrides:
        raise TypeError("pass either a ServeOptions or an engine path with keyword options")
    options.check_engine()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        if options.ray_address:
            ray.init(address=options.ray_address, log_to_driver=options.log_to_driver)
        else:
            _local_ray_init(options)
    owns_serve = False
    running: RunningService | None = None
    try:
        _check_resources(options)
        owns_serve = owns_ray or not _serve_running()
        serve.start(http_options={"host": options.host, "port": options.port})
        running = RunningService(options, owns_ray, owns_serve)
        try:
            serve.run(build_app(options), name=options.app_name, route_prefix=options.route_prefix)
        except RuntimeError as e:
            raise _deploy_error(e, options) from None
        running.wait_ready(options.startup_timeout_s)
        return running
    except BaseException:
        if running is not None:
            running.stop()
        elif owns_ray:
            ray.shutdown()
        raise


def _serve_running() -> bool:
    try:
        serve.status()
    except Exception:  # noqa: BLE001 - any failure means there is no controller to reuse
        return False
    return True
