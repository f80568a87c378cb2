"""``ssd-serve``: serve an SSD artifact over HTTP on Ray Serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-serve",
        description="Serve an SSD .onnx or TensorRT .plan over HTTP on Ray Serve: POST an image to /detect, "
        "get JSON detections. GET /healthz and /readyz for probes.",
    )
    p.add_argument(
        "--engine", required=True, help="artifact to serve (.onnx -> ONNX Runtime, .plan -> TensorRT)"
    )
    p.add_argument("--replicas", type=int, default=1, help="replicas, each with its own Detector (default 1)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="largest batch one replica runs; 1 turns batching off (default 8)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a replica waits to fill a batch (default 5 ms)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica (default 1)")
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="Ray GPUs per replica (default: 1 for .plan, 0 for .onnx)",
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per replica")
    p.add_argument("--device", default=None, help=".onnx engine: auto (default: CUDA when onnxruntime-gpu has "
                   "it, else OpenVINO when installed, else ONNX Runtime CPU), openvino, cpu, cuda, tensorrt")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="OpenVINO inference precision (default fp32: exact; bf16 on CPUs with BF16)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest upload accepted (default 16 MB)")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        help="largest decoded image accepted (default 40 megapixels)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=-1,
        help="requests queued per app before answering 503 (default -1: no limit)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster ('auto', 'ray://head:10001') instead of starting a local Ray",
    )
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--quiet", action="store_true", help="do not forward replica logs to this terminal")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .app import LOOPBACK_HOSTS, ServeError, ServeOptions, start
    except ImportError as e:
        print(f"ssd-serve: {e}", file=sys.stderr)
        return 2

    backend_options: dict[str, object] = {}
    if args.threads:
        backend_options["intra_op_threads"] = args.threads
    if args.device:
        backend_options["device"] = args.device
    if args.precision:
        backend_options["precision"] = args.precision
    try:
        options = ServeOptions(
            engine=args.engine, replicas=args.replicas, max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms, host=args.host, port=args.port,
            num_cpus=args.cpus_per_replica, num_gpus=args.gpus_per_replica,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1e6),
            max_queued_requests=args.max_queued, backend_options=backend_options,
            ray_address=args.ray_address, log_to_driver=not args.quiet,
            startup_timeout_s=args.startup_timeout,
        )  # fmt: skip
        options.check_engine()
        if backend_options and options.is_plan:
            raise ServeError("--threads, --device and --precision are .onnx options; a .plan runs on TensorRT")
        if args.device == "openvino" or args.precision:
            from ..runtime import BackendError
            from ..runtime.openvino.backend import preflight

            try:
                preflight(args.precision)
            except BackendError as e:
                raise ServeError(str(e)) from None
    except ServeError as e:
        print(f"ssd-serve: {e}", file=sys.stderr)
        return 2
    if options.host not in LOOPBACK_HOSTS:
        print(f"ssd-serve: warning: listening on {options.host}: other machines can reach this service, "
              "which has no authentication", file=sys.stderr)  # fmt: skip

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"ssd-serve: starting {options.replicas} replica(s) of {options.engine} ...", file=sys.stderr)
        try:
            running = start(options)
        except ServeError as e:
            print(f"ssd-serve: {e}", file=sys.stderr)
            return 1
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
