"""Prometheus metrics of one serving replica, on an opt-in port (docs/serving.md, "Metrics").

Each replica process serves its own ``/metrics`` page with ``prometheus_client`` (installed with
Ray). Replicas on one node take the first free port of ``port, port + 1, ...``; point Prometheus
at that range. Without a port nothing is started and every call here is a no-op, so the request
path never checks whether metrics are on.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["LATENCY_BUCKETS_S", "ServiceMetrics"]

log = logging.getLogger("ray.serve")

#: Request latency buckets (seconds): a CPU replica answers in 0.05-2 s, a queue adds seconds.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """Counters and histograms of one replica; ``port=None`` turns them all into no-ops.

    - ``ssd_requests_total{endpoint, code}``: answered requests by HTTP status;
    - ``ssd_request_seconds{endpoint}``: time from the handler's start to the answer;
    - ``ssd_batch_size``: images per network run;
    - ``ssd_rejected_total{reason}``: requests refused without work (``busy``, ``timeout``,
      ``too_large``, ``bad_request``) or dropped (``disconnect``);
    - ``ssd_pending_requests``: detection requests admitted and not yet answered.
    """

    def __init__(
        self, port: int | None, host: str = "127.0.0.1", *, max_batch: int = 8, tries: int = 16
    ) -> None:
        self.port: int | None = None
        self._server: Any = None
        if port is None:
            return
        from ..errors import optional_import

        prom = optional_import("prometheus_client", extra="serve", purpose="--metrics-port")
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self._requests = prom.Counter(
            "ssd_requests", "Requests answered, by endpoint and HTTP status", ["endpoint", "code"],
            registry=self.registry,
        )  # fmt: skip
        self._latency = prom.Histogram(
            "ssd_request_seconds", "Seconds from the handler's start to the answer", ["endpoint"],
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self._batch = prom.Histogram(
            "ssd_batch_size", "Images per network run", buckets=[s for s in sizes if s <= max_batch],
            registry=self.registry,
        )  # fmt: skip
        self._rejected = prom.Counter(
            "ssd_rejected", "Requests refused before inference or dropped, by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self._pending = prom.Gauge("ssd_pending_requests", "Detection requests admitted and not yet answered",
                                   registry=self.registry)  # fmt: skip
        last: OSError | None = None
        # Several replicas on one node: each takes the next free port.
        for p in range(port, min(port + tries, 65536)):
            try:
                self._server, _ = prom.start_http_server(p, addr=host, registry=self.registry)
            except OSError as e:
                last = e
                continue
            self.port = p
            log.info("metrics on http://%s:%d/metrics", host, p)
            return
        raise OSError(f"no free metrics port in {port}..{port + tries - 1} on {host}: {last}")

    @property
    def enabled(self) -> bool:
        return self.port is not None

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        if self.port is not None:
            self._requests.labels(endpoint, str(code)).inc()
            self._latency.labels(endpoint).observe(seconds)

    def batch(self, size: int) -> None:
        if self.port is not None:
            self._batch.observe(size)

    def rejected(self, reason: str) -> None:
        if self.port is not None:
            self._rejected.labels(reason).inc()

    def pending(self, n: int) -> None:
        if self.port is not None:
            self._pending.set(n)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
