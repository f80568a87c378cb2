"""Decode + Detect: the numpy post-process against the same Detect inside the ONNX graph.

    python benchmarks/bench_end_to_end.py [--rounds 20] [--batches 1,8] [--json out.json]
                                          [--detector] [--detector-rounds 5]

Post-process only: a graph whose ``loc``/``conf`` are its inputs (VOC300: 8732 priors, 21 classes)
gets the end-to-end outputs (``ssd_deploy.endtoend.add_end_to_end``); then, interleaved per round
on the same heads, ``numpy`` (:func:`ssd_deploy.postprocess.detect`, with the numba kernels where
installed; ``numpy-path`` is then the same with them switched off), ``ort`` (ONNX Runtime CPU,
fetching only ``detections``/``num_detections``) and ``openvino`` (``Core.compile_model`` on CPU,
when installed). Heads come from ``benchmarks/bench_postprocess.py``: ``sparse`` (its photo-like
heads with a confident background: few candidates, only the objects), ``photo-like`` (a trained SSD
on a photo: a handful to thousands of candidates per class) and ``flat`` (near-uniform softmax:
every prior is a candidate of every class, top_k cuts each). Before timing, every variant's detections are
compared with numpy's as sets (class, score 1e-6, box 1e-5) and the mismatching images counted.

``--detector`` also times ``Detector.detect`` end to end on the seeded SSD300 export (needs torch to
export it) against its end-to-end copy, ONNX Runtime CPU, at each batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from bench_postprocess import flat_heads, realistic_heads  # noqa: E402

from ssd_deploy.config import preset  # noqa: E402
from ssd_deploy.contract import CONFIG_KEY, DETECTIONS, NUM_DETECTIONS  # noqa: E402
from ssd_deploy.endtoend import add_end_to_end  # noqa: E402
from ssd_deploy.ops import jit  # noqa: E402
from ssd_deploy.postprocess import detect  # noqa: E402
from ssd_deploy.priors import prior_boxes  # noqa: E402


def passthrough_onnx(path: Path, cfg: Any) -> Path:
    """An ssd_deploy-shaped graph whose loc/conf are inputs, priors the config's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p, c = cfg.num_priors, cfg.num_classes
    nodes = [
        helper.make_node("Identity", [src], [dst])
        for src, dst in (("loc_in", "loc"), ("conf_in", "conf"), ("priors_table", "priors"))
    ]
    graph = helper.make_graph(
        nodes, "postprocess_only",
        [helper.make_tensor_value_info("loc_in", TensorProto.FLOAT, ["batch", p, 4]),
         helper.make_tensor_value_info("conf_in", TensorProto.FLOAT, ["batch", p, c])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", p, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", p, c]),
         helper.make_tensor_value_info("priors", TensorProto.FLOAT, [p, 4])],
        [numpy_helper.from_array(prior_boxes(cfg.prior), "priors_table")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    helper.set_model_props(model, {CONFIG_KEY: cfg.to_json()})
    onnx.save(model, str(path))
    return path


def mismatches(dets: np.ndarray, num: np.ndarray, ref: list) -> int:
    """Images whose in-graph detections differ from numpy's as sets (class, score 1e-6, box 1e-5)."""
    bad = 0
    for i, r in enumerate(ref):
        rows = dets[i, : int(num[i])]
        if len(rows) != len(r):
            bad += 1
            continue
        a = rows[np.lexsort((rows[:, 0], -rows[:, 4], rows[:, 5]))]
        order = np.lexsort((r.boxes[:, 0], -r.scores, r.class_ids))
        ok = (np.array_equal(a[:, 5].astype(np.int64), r.class_ids[order])
              and np.allclose(a[:, 4], r.scores[order], rtol=0, atol=1e-6)
              and np.allclose(a[:, :4], r.boxes[order], rtol=0, atol=1e-5))  # fmt: skip
        bad += not ok
    return bad


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each round runs every variant once, in a rotating order; returns seconds per call."""
    names = list(variants)
    for fn in variants.values():  # warm-up
        fn()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            variants[n]()
            out[n].append(time.perf_counter() - t0)
    return out


def postprocess_bench(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    cfg = preset("voc300")
    params, priors = cfg.detect, prior_boxes(cfg.prior)
    e2e = tmp / "e2e.onnx"
    spec = add_end_to_end(passthrough_onnx(tmp / "pp.onnx", cfg), e2e)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(e2e), so, providers=["CPUExecutionProvider"])
    compiled = None
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(e2e)), "CPU",
                                      {"INFERENCE_NUM_THREADS": args.threads})  # fmt: skip
    except ImportError:
        print("openvino not installed: its column is skipped")
    rows = []
    rng = np.random.default_rng(0)

    def sparse_heads(rng: np.random.Generator, pri: np.ndarray, c: int) -> Any:
        return realistic_heads(rng, pri, c, background=12.0)

    kinds = (("sparse", sparse_heads), ("photo-like", realistic_heads), ("flat", flat_heads))
    for kind, make in kinds:
        for batch in args.batches:
            heads = [make(rng, priors, cfg.num_classes) for _ in range(batch)]
            loc = np.concatenate([h[0] for h in heads])
            conf = np.concatenate([h[1] for h in heads])
            feeds = {"loc_in": loc, "conf_in": conf}
            ref = detect(loc, conf, priors, cfg.variances, params)
            variants: dict[str, Callable[[], Any]] = {
                "numpy": lambda loc=loc, conf=conf: detect(loc, conf, priors, cfg.variances, params),
                "ort": lambda feeds=feeds: sess.run([DETECTIONS, NUM_DETECTIONS], feeds),
            }
            if jit.kernels() is not None:
                # "numpy" above runs the numba kernels; this is the numpy path alone.
                def numpy_path(loc: np.ndarray = loc, conf: np.ndarray = conf) -> Any:
                    with jit.disabled():
                        return detect(loc, conf, priors, cfg.variances, params)

                variants["numpy-path"] = numpy_path
            d, n = sess.run([DETECTIONS, NUM_DETECTIONS], feeds)
            bad = {"ort": mismatches(d, n, ref)}
            if compiled is not None:

                def ov_run(feeds: dict[str, np.ndarray] = feeds) -> Any:
                    res = compiled(feeds)
                    return res[compiled.output(DETECTIONS)], res[compiled.output(NUM_DETECTIONS)]

                variants["openvino"] = ov_run
                bad["openvino"] = mismatches(*ov_run(), ref)
            times = interleaved(variants, args.rounds)
            med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            per_image = float(np.mean([len(r) for r in ref]))
            row = {"heads": kind, "batch": batch, "detections_per_image": per_image,
                   "median_ms": med, "ratio_vs_numpy": {k: med["numpy"] / v for k, v in med.items()},
                   "mismatching_images": bad}  # fmt: skip
            rows.append(row)
            print(
                f"{kind:>10} batch {batch}: "
                + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
                + f"; mismatching images {bad}; D={spec.max_detections}"
            )
    return rows


def detector_bench(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import warnings

    from ssd_deploy.export import export_onnx, load_model, weights_info
    from ssd_deploy.runtime.detector import Detector

    cfg = preset("voc300")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(None, cfg, seed=0)
    plain = tmp / "ssd300.onnx"
    export_onnx(model, cfg, plain, weights=weights_info(None, 0), verify=False)
    e2e = tmp / "ssd300_e2e.onnx"
    add_end_to_end(plain, e2e)
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 255, (375, 500, 3), dtype=np.uint8) for _ in range(max(args.batches))]
    rows = []
    with Detector.load(plain, device="cpu", intra_op_threads=args.threads) as a, \
            Detector.load(e2e, device="cpu", intra_op_threads=args.threads) as b:  # fmt: skip
        assert b.in_graph()
        for batch in args.batches:
            imgs = photos[:batch]
            stages: dict[str, list[dict[str, float]]] = {"numpy": [], "in-graph": []}

            def run(det: Any, key: str, stages: dict = stages, imgs: list = imgs) -> None:
                stages[key].append(det.detect_timed(imgs)[1])

            times = interleaved({"numpy": lambda: run(a, "numpy"), "in-graph": lambda: run(b, "in-graph")},
                                args.detector_rounds)  # fmt: skip
            med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            names = ("preprocess", "compute", "postprocess")
            st = {k: {s: float(np.median([t[s] for t in v])) * 1e3 for s in names} for k, v in stages.items()}
            rows.append({"batch": batch, "median_ms": med, "stages_median_ms": st,
                         "ratio_in_graph_vs_numpy": med["numpy"] / med["in-graph"]})  # fmt: skip
            print(f"Detector batch {batch}: {med} stages {st}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--detector", action="store_true")
    ap.add_argument("--detector-rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    from importlib import metadata

    versions = {}
    for pkg in ("numpy", "numba", "onnxruntime", "openvino"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    header = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_avg_1min_before": os.getloadavg()[0], "versions": versions, "threads": args.threads,
              "rounds": args.rounds, "pre_post_processing": jit.status()}  # fmt: skip
    print(header)
    with tempfile.TemporaryDirectory() as d:
        result: dict[str, Any] = {"header": header, "postprocess": postprocess_bench(args, Path(d))}
        if args.detector:
            result["detector"] = detector_bench(args, Path(d))
    result["header"]["load_avg_1min_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
