"""How many equal scores at the top_k cut the in-graph Detect survives on OpenVINO.

    python benchmarks/measure_openvino_ties.py

One class of a VOC300-shaped post-process graph (benchmarks/bench_end_to_end.py) gets 40 distinct
scores above a run of ``ties`` equal scores (top_k 50 cuts the run after 10 of them); the images whose
OpenVINO detections differ from the numpy Detect's (as sets) are counted, with the tie margin off
and at its default. Results: docs/end_to_end.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from bench_end_to_end import mismatches, passthrough_onnx  # noqa: E402

from ssd_deploy.config import DetectParams, preset  # noqa: E402
from ssd_deploy.contract import DETECTIONS, NUM_DETECTIONS  # noqa: E402
from ssd_deploy.endtoend import DEFAULT_TIE_MARGIN, add_end_to_end  # noqa: E402
from ssd_deploy.postprocess import detect  # noqa: E402
from ssd_deploy.priors import prior_boxes  # noqa: E402


def main() -> None:
    import openvino as ov

    core = ov.Core()
    params = DetectParams(conf_thresh=0.01, nms_thresh=0.45, top_k=50)
    cfg = preset("voc300", detect=params)
    priors = prior_boxes(cfg.prior)
    p, c = cfg.num_priors, cfg.num_classes
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        src = passthrough_onnx(Path(d) / "pp.onnx", cfg)
        for margin in (0, DEFAULT_TIE_MARGIN):
            dst = Path(d) / f"e2e_{margin}.onnx"
            add_end_to_end(src, dst, tie_margin=margin)
            compiled = core.compile_model(core.read_model(str(dst)), "CPU")
            for ties in (10, 30, 60, 200, 1000):
                bad = 0
                for _ in range(10):
                    loc = rng.normal(0, 1, (1, p, 4)).astype(np.float32)
                    conf = np.full((1, p, c), 0.001, np.float32)
                    s = np.full(p, 0.02, np.float32)
                    order = rng.permutation(p)
                    s[order[:40]] = rng.uniform(0.31, 0.5, 40)
                    s[order[40 : 40 + ties]] = 0.3
                    conf[0, :, 1] = s
                    res = compiled({"loc_in": loc, "conf_in": conf})
                    ref = detect(loc, conf, priors, cfg.variances, params)
                    bad += mismatches(
                        res[compiled.output(DETECTIONS)], res[compiled.output(NUM_DETECTIONS)], ref
                    )
                print(f"tie margin {margin:>2}: {ties:>4} priors tied at the cut -> {bad}/10 images differ")


if __name__ == "__main__":
    main()
