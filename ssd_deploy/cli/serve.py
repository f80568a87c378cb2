"""``ssd-serve``: serve an SSD artifact over HTTP on Ray Serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence

from . import common


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "ssd-serve",
        "Serve an SSD .onnx or TensorRT .plan over HTTP on Ray Serve: POST an image to /detect, "
        "get JSON detections. GET /healthz and /readyz for probes.",
    )
    common.add_engine(p)
    p.add_argument(
        "--replicas",
        type=common.positive_int,
        default=1,
        help="replicas, each with its own Detector (default 1)",
    )
    p.add_argument(
        "--max-batch",
        type=common.positive_int,
        default=8,
        help="largest batch one replica runs; 1 turns batching off (default 8)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=common.finite_float,
        default=5.0,
        help="how long a replica waits to fill a batch (default 5 ms)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=common.non_negative_int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--cpus-per-replica", type=common.finite_float, default=1.0, help="Ray CPUs per replica (default 1)"
    )
    p.add_argument(
        "--gpus-per-replica",
        type=common.finite_float,
        default=None,
        help="Ray GPUs per replica (default: 1 for .plan, 0 for .onnx)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=common.positive_int,
        default=None,
        help="threads inside one inference, per replica (default: the backend's)",
    )
    common.add_device(p)
    common.add_precision(p)
    p.add_argument(
        "--max-body-mb",
        type=common.finite_float,
        default=16.0,
        help="largest upload accepted (default 16 MB)",
    )
    p.add_argument(
        "--max-megapixels",
        type=common.finite_float,
        default=40.0,
        help="largest decoded image accepted (default 40 megapixels)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=64,
        help="requests Serve holds when every replica has --max-ongoing in flight, then 503 (default 64; "
        "-1: no limit)",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        default=None,
        help="detection requests one replica admits at once; more get 503 + Retry-After "
        "(default 4 x --max-batch; -1: no limit)",
    )
    p.add_argument(
        "--max-ongoing",
        type=common.positive_int,
        default=None,
        help="connections one replica takes from Serve: uploads being read, probes, detection (default 128)",
    )
    p.add_argument(
        "--body-timeout",
        type=common.finite_float,
        default=20.0,
        help="seconds an upload may take to arrive before 408 (default 20)",
    )
    p.add_argument(
        "--header-timeout",
        type=common.finite_float,
        default=10.0,
        help="seconds a connection may take to send its request headers (default 10; local Ray only)",
    )
    p.add_argument(
        "--max-top-k",
        type=common.positive_int,
        default=1000,
        help="largest top_k a request may ask for (default 1000)",
    )
    p.add_argument(
        "--max-detections",
        type=common.positive_int,
        default=1000,
        help="largest keep_top_k a request may ask for; answers are capped at it (default 1000)",
    )
    p.add_argument(
        "--metrics-port",
        type=common.non_negative_int,
        default=None,
        help="serve Prometheus metrics on this port (replicas: port, port+1, ...; default off)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics port (default 127.0.0.1)"
    )
    p.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="start Ray's dashboard (on 127.0.0.1) with the local Ray (default off)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster ('auto', 'ray://head:10001') instead of starting a local Ray",
    )
    p.add_argument(
        "--startup-timeout", type=common.finite_float, default=300.0, help="seconds to wait for readiness"
    )
    p.add_argument("--quiet", action="store_true", help="do not forward replica logs to this terminal")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return common.run(build_parser, execute, argv)


def execute(args: argparse.Namespace) -> int:
    from ..errors import optional_import

    optional_import("ray.serve", extra="serve", purpose="ssd-serve runs on Ray Serve")
    from ..serve.app import LOOPBACK_HOSTS, ServeError, ServeOptions, start  # noqa: F401

    backend_options: dict[str, object] = common.backend_options(args, args.engine)
    if args.intra_op_threads:
        backend_options["intra_op_threads"] = args.intra_op_threads
    options = ServeOptions(
        engine=args.engine, replicas=args.replicas, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, host=args.host, port=args.port,
        num_cpus=args.cpus_per_replica, num_gpus=args.gpus_per_replica,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1e6),
        max_queued_requests=args.max_queued, backend_options=backend_options,
        max_pending=args.max_pending, max_ongoing_requests=args.max_ongoing,
        body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout or None,
        max_top_k=args.max_top_k, max_detections=args.max_detections,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host,
        include_dashboard=args.ray_dashboard,
        ray_address=args.ray_address, log_to_driver=not args.quiet,
        startup_timeout_s=args.startup_timeout,
    )  # fmt: skip
    options.check_engine()
    if args.device == "openvino" or args.precision == "bf16":
        from ..runtime.openvino.backend import preflight

        preflight(None if args.precision == "auto" else args.precision)  # before Ray starts
    if backend_options and options.is_plan:
        raise ServeError(
            "--intra-op-threads and --device are options for .onnx files; a .plan runs on TensorRT"
        )
    if options.host not in LOOPBACK_HOSTS:
        print(f"ssd-serve: warning: listening on {options.host}: other machines can reach this service, "
              "which has no authentication", file=sys.stderr)  # fmt: skip

    stop = threading.Event()
    serving = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        # Serving: leave the wait loop and stop cleanly (exit 0). Still starting: interrupt the
        # start-up, which removes what it started (exit 130).
        stop.set()
        if not serving.is_set():
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"ssd-serve: starting {options.replicas} replica(s) of {options.engine} ...", file=sys.stderr)
        running = None
        try:
            running = start(options)
            serving.set()
        except KeyboardInterrupt:
            if running is not None:
                running.stop()
            print("ssd-serve: interrupted while starting; stopped", file=sys.stderr)
            return 130
        with running:
            info = running.readiness() or {}
            print(json.dumps({"url": running.url, "model": info.get("model"), "backend": info.get("backend"),
                              "replicas": options.replicas, "max_batch": options.max_batch,
                              "batch_wait_ms": options.batch_wait_ms}), flush=True)  # fmt: skip
            print(f"ssd-serve: ready: POST images to {running.url}/detect; Ctrl-C to stop", file=sys.stderr)
            while not stop.wait(0.5):
                pass
            print("ssd-serve: stopping ...", file=sys.stderr)
        print("ssd-serve: stopped", file=sys.stderr)
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    raise SystemExit(main())
