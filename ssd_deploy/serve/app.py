"""The Ray Serve application: one :class:`Detector` per replica, requests batched across clients.

HTTP API (all JSON):

- ``POST /detect`` - body is a JPEG or PNG (``Content-Type: image/jpeg|image/png``) or a
  ``multipart/form-data`` form with the image in a field named ``image``. Optional query
  parameters ``conf_thresh``, ``nms_thresh``, ``top_k``, ``keep_top_k``. Answers
  ``{"width", "height", "detections": [{"class_id", "class_name", "score", "box"}]}`` with boxes
  in the image's pixels, or a 4xx ``{"error": "..."}`` naming what is wrong with the request.
- ``GET /healthz`` - liveness: the replica's event loop answers.
- ``GET /readyz`` - readiness: the model is loaded and warmed up; reports the model and limits.

Both probes are answered by the replica's event loop without waiting behind detection work: a
replica takes up to ``max_ongoing_requests`` connections from Serve (uploads being read, probes,
detection), and admits at most ``max_pending`` detection requests itself; beyond that it answers
503 with ``Retry-After`` at once. Uploads must arrive within ``body_timeout_s`` (else 408). Every
error is ``{"error": "<one line>"}`` (docs/serving.md, "Limits and overload").

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
import logging
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
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as _e:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        f"the Ray Serve app needs the 'serve' extra ({_e.name} is missing): pip install 'ssd_deploy[serve]'"
    ) from None

from ..contract import ONNX_SUFFIXES, PLAN_SUFFIXES
from ..errors import SSDDeployError
from .metrics import ServiceMetrics
from .proxy_hooks import loopback_replica_grpc
from .service import DetectionService, Limits, Prepared, RequestError

# In a replica process of the local Ray: keep Serve's inter-deployment gRPC server on loopback.
loopback_replica_grpc()

__all__ = ["ServeOptions", "RunningService", "ServeError", "build_app", "start", "SSDDetector"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Serve's connections per replica by default: uploads being read, probes and detection work.
DEFAULT_MAX_ONGOING = 128
#: Requests Serve holds for a replica when every replica has ``max_ongoing_requests`` in flight.
DEFAULT_MAX_QUEUED = 64

log = logging.getLogger("ray.serve")


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
    #: Largest ``top_k`` and ``keep_top_k`` a request may ask for (400 beyond).
    max_top_k: int = 1000
    max_detections: int = 1000
    #: Detection requests one replica admits at once (decoding, waiting for a batch, running);
    #: one more gets 503 + Retry-After at once. None: 4 x max_batch; -1: no limit.
    max_pending: int | None = None
    #: Serve's connections per replica (uploads being read, probes, detection); None: 128.
    max_ongoing_requests: int | None = None
    #: Requests Serve holds when every replica has max_ongoing_requests in flight, then 503; -1: no limit.
    max_queued_requests: int = DEFAULT_MAX_QUEUED
    #: Seconds the whole request body may take to arrive (408 after); headers: header_timeout_s.
    body_timeout_s: float = 20.0
    #: Seconds a connection may take to send a request's headers before the proxy closes it
    #: (installed into a locally started Ray's HTTP proxy; see proxy_hooks). None: no limit.
    header_timeout_s: float | None = 10.0
    #: Value of the Retry-After header on 503s (seconds).
    retry_after_s: int = 1
    #: Prometheus metrics on this port (replicas on one node: port, port+1, ...); None: off.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: Start Ray's dashboard with a locally started Ray (bound to loopback).
    include_dashboard: bool = False
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
        try:
            Limits(self.max_body_bytes, self.max_pixels, self.max_top_k, self.max_detections)
        except ValueError as e:
            raise ServeError(str(e)) from None
        if self.max_pending is not None and (self.max_pending == 0 or self.max_pending < -1):
            raise ServeError(f"max_pending must be >= 1 or -1 (no limit), got {self.max_pending}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ServeError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        if self.max_queued_requests == 0 or self.max_queued_requests < -1:
            raise ServeError(
                f"max_queued_requests must be >= 1 or -1 (no limit), got {self.max_queued_requests}"
            )
        for name in ("body_timeout_s", "header_timeout_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value <= 3600):
                raise ServeError(f"{name} must be in (0, 3600], got {value}")
        if not 0 <= self.retry_after_s <= 3600:
            raise ServeError(f"retry_after_s must be in [0, 3600], got {self.retry_after_s}")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ServeError(f"metrics_port must be in [1, 65535], got {self.metrics_port}")

    @property
    def is_plan(self) -> bool:
        return Path(self.engine).suffix.lower() in PLAN_SUFFIXES

    @property
    def gpus_per_replica(self) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if self.is_plan else 0.0

    @property
    def pending_per_replica(self) -> int:
        """Detection requests a replica admits; -1: no limit. By default enough to fill the
        running batch, the next one and a little more, so a burst is refused, not queued."""
        if self.max_pending is None:
            return max(4 * self.max_batch, 8)
        return self.max_pending

    @property
    def ongoing_per_replica(self) -> int:
        """Serve's concurrency per replica: above the admitted detection work so that probes and
        uploads being read never wait behind it."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        pending = self.pending_per_replica
        return max(DEFAULT_MAX_ONGOING, 2 * pending + 16) if pending > 0 else DEFAULT_MAX_ONGOING

    def check_engine(self) -> None:
        p = Path(self.engine)
        if not p.is_file():
            raise ServeError(f"{p}: no such engine file")
        if p.suffix.lower() not in ONNX_SUFFIXES + PLAN_SUFFIXES:
            raise ServeError(f"{p}: cannot serve a {p.suffix or 'suffix-less'} file; pass an .onnx or .plan")


# -- the deployment ---------------------------------------------------------------------------

api = FastAPI(title="ssd_deploy detection", docs_url=None, redoc_url=None, openapi_url=None)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")), status_code=status, media_type="application/json",
        headers=headers,
    )  # fmt: skip


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    # 404 and 405 from the router: the same {"error": ...} shape as every other error.
    return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code,
                 headers=dict(exc.headers or {}))  # fmt: skip


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug, not the client's fault: still one JSON line for the client (Serve logs the traceback).
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return _json({"error": f"internal error: {type(exc).__name__}: {first}"}, 500)


class _Disconnected(Exception):
    """The client went away while its request was read or worked on."""


async def _read_body(request: Request, limit: int, timeout_s: float, service: DetectionService) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass ``limit`` and with 408
    when all of it has not arrived within ``timeout_s`` (a stalled upload must not hold a slot)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length {declared!r}") from None
        if n > limit:
            raise RequestError(413, service.body_too_large(n))

    async def collect() -> bytes:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise RequestError(413, service.body_too_large())
        return bytes(buf)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise _Disconnected() from None


_REJECT_REASONS = {400: "bad_request", 408: "timeout", 413: "too_large", 415: "bad_request"}


@serve.deployment(name="SSDDetector")
@serve.ingress(api)
class SSDDetector:
    """A Serve replica: decodes requests in threads, runs them through one Detector in batches,
    and answers probes and refusals from its event loop without waiting behind that work."""

    def __init__(self, engine: str, settings: dict[str, Any]) -> None:
        limits = Limits(settings["max_body_bytes"], settings["max_pixels"],
                        settings.get("max_top_k", 1000), settings.get("max_detections", 1000))  # fmt: skip
        self.service = DetectionService(
            engine, limits=limits, backend_options=settings.get("backend_options") or {},
        )  # fmt: skip
        self.max_batch = int(settings["max_batch"])
        self.max_pending = int(settings.get("max_pending", -1))
        self.body_timeout_s = float(settings.get("body_timeout_s", 20.0))
        self.retry_after_s = int(settings.get("retry_after_s", 1))
        self.pending = 0
        self.refused = 0
        self.metrics = ServiceMetrics(settings.get("metrics_port"), settings.get("metrics_host", "127.0.0.1"),
                                      max_batch=self.max_batch)  # fmt: skip
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
        t0 = time.monotonic()
        response = await self._detect(request, t0)
        self.metrics.request("detect", response.status_code, time.monotonic() - t0)
        return response

    async def _detect(self, request: Request, t0: float) -> Response:
        admitted = False
        try:
            try:
                body = await _read_body(request, self.service.limits.max_body_bytes, self.body_timeout_s,
                                        self.service)  # fmt: skip
                if 0 < self.max_pending <= self.pending:
                    # Refuse at once rather than queue: latency stays bounded and a load balancer
                    # can send the request elsewhere.
                    self.refused += 1
                    self.metrics.rejected("busy")
                    return _json({"error": f"busy: {self.pending} requests in progress on this replica "
                                           f"(limit {self.max_pending}); retry later"},
                                 503, headers={"Retry-After": str(self.retry_after_s)})  # fmt: skip
                admitted = True
                self.pending += 1
                self.metrics.pending(self.pending)
                prepared = await asyncio.to_thread(
                    self.service.prepare,
                    request.headers.get("content-type"),
                    body,
                    dict(request.query_params),
                )
            except RequestError as e:
                self.metrics.rejected(_REJECT_REASONS.get(e.status, "bad_request"))
                headers = {"Connection": "close"} if e.status in (408, 413) else None
                return _json({"error": e.message}, e.status, headers=headers)
            try:
                await self._idle.wait()
                result = await self._run_batch(prepared)
            except Exception as e:  # noqa: BLE001 - any backend failure is this request's 500
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                return _json({"error": f"inference failed: {first}"}, 500)
            return _json(result)
        except _Disconnected:
            self._disconnected(t0, admitted)
            return _json({"error": "client disconnected"}, 499)
        except asyncio.CancelledError:
            # The proxy cancels the handler when the client goes away.
            self._disconnected(t0, admitted)
            raise
        finally:
            if admitted:
                self.pending -= 1
                self.metrics.pending(self.pending)

    def _disconnected(self, t0: float, admitted: bool) -> None:
        """One log line per dropped client, no traceback."""
        self.metrics.rejected("disconnect")
        log.warning("client disconnected from POST /detect after %.2f s (%s)", time.monotonic() - t0,
                    "before its answer" if admitted else "while sending its body")  # fmt: skip

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _run_batch(self, items: list[Prepared]) -> list[dict[str, Any]]:
        self._idle.clear()
        try:
            self.metrics.batch(len(items))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._infer_pool, self.service.run_batch, items)
        finally:
            self._idle.set()

    @api.get("/healthz")
    async def healthz(self) -> Response:
        t0 = time.monotonic()
        response = _json({"status": "ok"})
        self.metrics.request("healthz", 200, time.monotonic() - t0)
        return response

    @api.get("/readyz")
    async def readyz(self) -> Response:
        if self.service.closed:
            return _json({"ready": False, "error": "detector closed"}, 503)
        info = self.service.info()
        info.update(ready=True, max_batch=self.max_batch, uptime_s=round(time.time() - self.started, 1),
                    pending=self.pending, max_pending=self.max_pending, refused=self.refused,
                    body_timeout_s=self.body_timeout_s, metrics_port=self.metrics.port)  # fmt: skip
        self.metrics.request("readyz", 200, 0.0)
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
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()


def build_app(options: ServeOptions) -> Any:
    """The Serve application for ``options`` (pass it to ``serve.run`` or use :func:`start`)."""
    settings = {
        "max_batch": options.max_batch, "batch_wait_ms": options.batch_wait_ms,
        "max_body_bytes": options.max_body_bytes, "max_pixels": options.max_pixels,
        "max_top_k": options.max_top_k, "max_detections": options.max_detections,
        "max_pending": options.pending_per_replica, "body_timeout_s": options.body_timeout_s,
        "retry_after_s": options.retry_after_s, "metrics_port": options.metrics_port,
        "metrics_host": options.metrics_host, "backend_options": dict(options.backend_options),
    }  # fmt: skip
    actor = {"num_cpus": options.num_cpus, "num_gpus": options.gpus_per_replica}
    return SSDDetector.options(
        num_replicas=options.replicas, ray_actor_options=actor,
        max_ongoing_requests=options.ongoing_per_replica, max_queued_requests=options.max_queued_requests,
        # Stopping waits for requests in flight at most this long (Serve's default is 20 s).
        graceful_shutdown_timeout_s=5.0, graceful_shutdown_wait_loop_s=0.5,
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


def _start_ray(options: ServeOptions) -> bool:
    """Join ``options.ray_address``, or start a Ray for this process alone with every one of its
    services on loopback (:func:`ssd_deploy.raylocal.start_ray`; docs/serving.md, "Security")."""
    from ..raylocal import start_ray
    from . import proxy_hooks

    cpus = options.ray_num_cpus
    if cpus is None:
        # Logical CPUs are a scheduling notion: never fewer than the replicas ask for, so a
        # request for more replicas than cores oversubscribes instead of waiting forever.
        cpus = max(os.cpu_count() or 1, math.ceil(options.replicas * options.num_cpus))
    env = {}
    if options.header_timeout_s is not None:
        env[proxy_hooks.ENV_CALLBACK] = proxy_hooks.CALLBACK_PATH
        env[proxy_hooks.ENV_TIMEOUT] = repr(float(options.header_timeout_s))
    return start_ray(
        options.ray_address, num_cpus=cpus, extra="serve", include_dashboard=options.include_dashboard,
        log_to_driver=options.log_to_driver, env=env,
    )  # fmt: skip


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
    owns_ray = _start_ray(options)
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
