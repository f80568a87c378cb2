"""Decode + Detect per image at batch 1: ssd_deploy's numpy post-process against two others.

    python benchmarks/bench_postprocess.py [--rounds 40] [--images 6] [--size 300] [--json out.json]

Variants, run side by side in one process and interleaved (each round runs every variant on every
input, in a rotating order, so all of them see the same background load):

* ``ours``        :func:`ssd_deploy.postprocess.detect` (with numba installed, its compiled
                  top-k and NMS kernels; else vectorised numpy);
* ``ours-numpy``  where numba is installed: the same with the kernels switched off (the numpy path);
* ``torchvision`` decode in torch, per class ``score > thresh`` and ``topk(top_k)``, then one
                  ``torchvision.ops.batched_nms`` (the shape of torchvision's own SSD post-process,
                  without its box clipping and its 400 candidates); only when torch and torchvision
                  import, which they do not beside the project's CPU torch 2.13.0: run this script
                  with an interpreter that has both (see benchmarks/results/postprocess.md);
* ``numpy-loop``  a plain per-class greedy loop in numpy (decode all priors, per class sort,
                  ``while`` loop of IoU-with-the-best), the obvious way to write it.

Inputs are synthetic heads (no trained weights are needed): ``realistic`` imitates a trained SSD
on a photo (a few objects whose priors regress onto them with a confident class, and spatially
clustered low-level class confusion elsewhere, so each class has from a handful to thousands of
priors above 0.01); ``flat`` is a near-uniform softmax where every prior is a candidate of every
class and top_k=200 cuts each class (the worst case for selection and NMS). Before timing, every
variant's detections are compared with ours (matched sets per class) and the mismatches reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The imports below need ROOT on sys.path (the script runs from a checkout, not installed).
from ssd_deploy.config import DetectParams, preset  # noqa: E402
from ssd_deploy.ops import jit  # noqa: E402
from ssd_deploy.postprocess import detect  # noqa: E402
from ssd_deploy.priors import prior_boxes  # noqa: E402

Result = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K,4], scores [K], labels [K]


# -- inputs ----------------------------------------------------------------------------------------
def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def realistic_heads(
    rng: np.random.Generator, priors: np.ndarray, num_classes: int, background: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """One image's ``(loc [1,P,4], conf [1,P,C])`` shaped like a trained SSD's output on a photo."""
    p = priors.shape[0]
    corners = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    logits = rng.normal(0.0, 1.0, (p, num_classes)) + rng.normal(-2.0, 1.0, num_classes)
    for cl in range(1, num_classes):  # spatially clustered confusion: 0-3 blobs per class
        for _ in range(rng.integers(0, 4)):
            mu, sigma = rng.uniform(0, 1, 2), rng.uniform(0.05, 0.2)
            d2 = ((priors[:, :2] - mu) ** 2).sum(1)
            logits[:, cl] += rng.uniform(1.0, 4.0) * np.exp(-d2 / (2 * sigma * sigma))
    logits[:, 0] = rng.normal(background, 1.0, p)
    loc = rng.normal(0.0, 0.5, (p, 4))
    for _ in range(rng.integers(1, 6)):  # objects: matched priors regress onto them, confidently
        wh = rng.uniform(0.1, 0.7, 2)
        c = rng.uniform(wh / 2, 1 - wh / 2)
        gt = np.r_[c - wh / 2, c + wh / 2]
        iw = np.clip(np.minimum(corners[:, 2], gt[2]) - np.maximum(corners[:, 0], gt[0]), 0, None)
        ih = np.clip(np.minimum(corners[:, 3], gt[3]) - np.maximum(corners[:, 1], gt[1]), 0, None)
        inter = iw * ih
        iou = inter / (priors[:, 2] * priors[:, 3] + wh[0] * wh[1] - inter)
        pos = iou > 0.4
        enc = np.c_[(c - priors[pos, :2]) / (0.1 * priors[pos, 2:]), np.log(wh / priors[pos, 2:]) / 0.2]
        loc[pos] = enc + rng.normal(0.0, 0.3, enc.shape)
        logits[pos, rng.integers(1, num_classes)] = rng.normal(9.0, 1.5, int(pos.sum()))
    return loc[None].astype(np.float32), _softmax(logits)[None]


def flat_heads(
    rng: np.random.Generator, priors: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Near-uniform softmax: every (prior, class) is above 0.01, top_k cuts every class."""
    p = priors.shape[0]
    loc = rng.normal(0.0, 1.0, (1, p, 4)).astype(np.float32)
    return loc, _softmax(rng.normal(0.0, 0.1, (1, p, num_classes)))


# -- the other two post-processes ------------------------------------------------------------------
def make_torchvision_variant(
    params: DetectParams, variances: tuple[float, float]
) -> Callable[..., Result] | None:
    try:
        import torch
        from torchvision.ops import batched_nms
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(f"torchvision variant skipped: {type(e).__name__}: {e}".splitlines()[0])
        return None

    v0, v1 = variances

    def run(loc: np.ndarray, conf: np.ndarray, priors: Any) -> Result:
        loc_t, conf_t = torch.from_numpy(loc[0]), torch.from_numpy(conf[0])
        centers = priors[:, :2] + loc_t[:, :2] * v0 * priors[:, 2:]
        sizes = priors[:, 2:] * torch.exp(loc_t[:, 2:] * v1)
        mins = centers - sizes / 2
        boxes = torch.cat((mins, mins + sizes), dim=1)
        all_boxes, all_scores, all_labels = [], [], []
        for cl in range(conf_t.shape[1]):
            if cl == params.background_label:
                continue
            score = conf_t[:, cl]
            above = score > params.conf_thresh
            score = score[above]
            top, idx = score.topk(min(params.top_k, score.numel()))
            all_boxes.append(boxes[above][idx])
            all_scores.append(top)
            all_labels.append(torch.full_like(idx, cl))
        b, s, lab = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(b, s, lab, params.nms_thresh)  # sorted by descending score
        if params.keep_top_k is not None:
            keep = keep[: params.keep_top_k]
        return b[keep].numpy(), s[keep].numpy(), lab[keep].numpy()

    run.torch = torch  # type: ignore[attr-defined]
    return run


def numpy_loop(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, params: DetectParams,
               variances: tuple[float, float]) -> Result:  # fmt: skip
    """Per class: threshold, sort, top_k, then the textbook greedy ``while`` loop."""
    v0, v1 = np.float32(variances[0]), np.float32(variances[1])
    centers = priors[:, :2] + loc[0, :, :2] * v0 * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[0, :, 2:] * v1)
    mins = centers - sizes / 2
    boxes = np.concatenate([mins, mins + sizes], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out_b, out_s, out_l = [], [], []
    for cl in range(conf.shape[2]):
        if cl == params.background_label:
            continue
        scores = conf[0, :, cl]
        idx = np.flatnonzero(scores > np.float32(params.conf_thresh))
        order = idx[np.argsort(-scores[idx], kind="stable")][: params.top_k]
        kept = []
        while order.size:
            i, rest = order[0], order[1:]
            kept.append(i)
            w = np.minimum(boxes[rest, 2], boxes[i, 2]) - np.maximum(boxes[rest, 0], boxes[i, 0])
            h = np.minimum(boxes[rest, 3], boxes[i, 3]) - np.maximum(boxes[rest, 1], boxes[i, 1])
            inter = np.clip(w, 0, None) * np.clip(h, 0, None)
            iou = inter / ((area[rest] - inter) + area[i])
            order = rest[iou <= np.float32(params.nms_thresh)]
        out_b.append(boxes[kept])
        out_s.append(scores[kept])
        out_l.append(np.full(len(kept), cl, dtype=np.int64))
    b = np.concatenate(out_b) if out_b else np.zeros((0, 4), np.float32)
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.float32)
    lab = np.concatenate(out_l) if out_l else np.zeros(0, np.int64)
    order = np.argsort(-s, kind="stable")
    if params.keep_top_k is not None:
        order = order[: params.keep_top_k]
    return b[order], s[order], lab[order]


# -- agreement -------------------------------------------------------------------------------------
def mismatches(a: Result, b: Result) -> int:
    """Detections of ``a`` or ``b`` without a partner (same class, score within 1e-6, IoU > 0.999)."""
    missing = 0
    for cl in np.union1d(a[2], b[2]):
        ba, sa = a[0][a[2] == cl].astype(np.float64), a[1][a[2] == cl]
        bb, sb = b[0][b[2] == cl].astype(np.float64), b[1][b[2] == cl]
        used = np.zeros(len(sb), dtype=bool)
        for box, score in zip(ba, sa):
            cand = np.flatnonzero(~used & (np.abs(sb - score) <= 1e-6))
            if cand.size:
                w = np.clip(np.minimum(bb[cand, 2], box[2]) - np.maximum(bb[cand, 0], box[0]), 0, None)
                h = np.clip(np.minimum(bb[cand, 3], box[3]) - np.maximum(bb[cand, 1], box[1]), 0, None)
                inter = w * h
                union = ((bb[cand, 2] - bb[cand, 0]) * (bb[cand, 3] - bb[cand, 1])
                         + (box[2] - box[0]) * (box[3] - box[1]) - inter)  # fmt: skip
                ok = cand[inter / union > 0.999]
                if ok.size:
                    used[ok[0]] = True
                    continue
            missing += 1
        missing += int((~used).sum())
    return missing


# -- main ------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("numpy", "numba", "torch", "torchvision"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, choices=(300, 512), default=300)
    ap.add_argument("--dataset", choices=("voc", "coco"), default="voc")
    ap.add_argument("--images", type=int, default=6, help="distinct synthetic inputs per case")
    ap.add_argument("--rounds", type=int, default=40, help="timed passes over all inputs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--keep-top-k", type=int, default=None, help="per-image cap (default: none, as ssd.pytorch)"
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (numpy runs on one; 0 keeps torch's default)",
    )
    ap.add_argument("--cases", default="realistic,flat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args()

    cfg = preset(f"{args.dataset}{args.size}")
    params = cfg.detect.replace(keep_top_k=args.keep_top_k)
    variances = cfg.variances
    priors = prior_boxes(cfg.prior)
    rng = np.random.default_rng(args.seed)
    makers = {"realistic": realistic_heads, "flat": flat_heads}
    cases = {name: [makers[name](rng, priors, cfg.num_classes) for _ in range(args.images)]
             for name in args.cases.split(",")}  # fmt: skip

    variants: dict[str, Callable[[np.ndarray, np.ndarray], Result]] = {}

    def ours(loc: np.ndarray, conf: np.ndarray) -> Result:
        d = detect(loc, conf, priors, variances, params)[0]
        return d.boxes, d.scores, d.class_ids

    variants["ours"] = ours
    if jit.kernels() is not None:
        # `ours` runs the numba kernels; this is the same function on the numpy path alone.
        def ours_numpy(loc: np.ndarray, conf: np.ndarray) -> Result:
            with jit.disabled():
                return ours(loc, conf)

        variants["ours-numpy"] = ours_numpy
    tv = make_torchvision_variant(params, variances)
    if tv is not None:
        torch = tv.torch  # type: ignore[attr-defined]
        if args.torch_threads > 0:
            torch.set_num_threads(args.torch_threads)
        priors_t = torch.from_numpy(priors)
        variants["torchvision"] = lambda loc, conf: tv(loc, conf, priors_t)
    variants["numpy-loop"] = lambda loc, conf: numpy_loop(loc, conf, priors, params, variances)

    env = {"cpu": _cpu(), "cpus": os.cpu_count(), **_versions(), "load_before": list(os.getloadavg())}
    if tv is not None:
        env["torch_threads"] = tv.torch.get_num_threads()  # type: ignore[attr-defined]
    print("environment:", json.dumps(env))
    env["pre_post_processing"] = jit.status()
    print(f"config: {cfg.name}, P={priors.shape[0]}, C={cfg.num_classes}, {params}")

    report: dict[str, Any] = {"environment": env, "params": str(params), "cases": {}}
    for case, inputs in cases.items():
        above = [int((conf[0, :, 1:] > params.conf_thresh).sum()) for _, conf in inputs]
        dets = [len(ours(loc, conf)[1]) for loc, conf in inputs]
        print(f"\n== {case}: {len(inputs)} inputs; (prior, class) pairs above {params.conf_thresh}: "
              f"{min(above)}..{max(above)}; detections kept: {min(dets)}..{max(dets)}")  # fmt: skip
        for name, fn in variants.items():
            if name != "ours":
                bad = [mismatches(ours(loc, conf), fn(loc, conf)) for loc, conf in inputs]
                print(f"   agreement {name} vs ours: unmatched detections per input {bad}")
        names = list(variants)
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        for r in range(args.warmup + args.rounds):
            for i, (loc, conf) in enumerate(inputs):
                rot = (r + i) % len(names)
                for name in names[rot:] + names[:rot]:
                    fn = variants[name]
                    t0, c0 = time.perf_counter(), time.thread_time()
                    fn(loc, conf)
                    c1, t1 = time.thread_time(), time.perf_counter()
                    if r >= args.warmup:
                        wall[name].append((t1 - t0) * 1e3)
                        cpu[name].append((c1 - c0) * 1e3)
        base = np.asarray(wall["ours"])
        rows = {}
        print(
            f"   {'variant':12s} {'median ms':>10s} {'p90 ms':>8s} {'cpu med':>8s}  "
            f"{'x ours (paired median)':>22s}"
        )
        for name in names:
            w = np.asarray(wall[name])
            ratio = float(np.median(w / base))
            rows[name] = {"median_ms": float(np.median(w)), "p90_ms": float(np.percentile(w, 90)),
                          "cpu_median_ms": float(np.median(cpu[name])), "ratio_to_ours": ratio,
                          "n": int(w.size)}  # fmt: skip
            print(f"   {name:12s} {rows[name]['median_ms']:10.3f} {rows[name]['p90_ms']:8.3f} "
                  f"{rows[name]['cpu_median_ms']:8.3f}  {ratio:22.2f}")  # fmt: skip
        report["cases"][case] = {"above_thresh": above, "detections": dets, "variants": rows}
    env["load_after"] = list(os.getloadavg())
    print("\nload average after:", env["load_after"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
