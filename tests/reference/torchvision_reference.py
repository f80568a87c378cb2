"""Run torchvision's own ``ssd300_vgg16`` on seeded weights and images; write its detections.

Runs in the reference environment (torch 2.14.1 + torchvision 0.29.1; torchvision does not import
next to the main environment's CPU torch 2.13), built by ``make tv-reference``:

    ~/.cache/ssd_deploy/tvref/bin/python tests/reference/torchvision_reference.py \
        --out tests/data/torchvision_ssd300_reference.npz [--save-pth tv.pth]

It needs numpy, torch and torchvision only. The weights and images come from ``tv_weights`` (numpy
seed), loaded with ``strict=True`` so every key name and shape of that generator is checked against
the real model. Besides the end-to-end forward (eval mode: normalise, bilinear resize to 300 x 300,
backbone, heads, post-process, boxes scaled back), it runs ``postprocess_detections`` alone on
synthetic head outputs that push boxes out of the image and log-sizes past the clamp.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tv_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="where to write the .npz of torchvision's outputs")
    p.add_argument("--save-pth", default=None, help="also save the state dict here (torch.save)")
    p.add_argument(
        "--images",
        default=None,
        help="comma-separated indices of the images to run (default: all); the rest are skipped",
    )
    p.add_argument("--no-synthetic", action="store_true", help="skip the post-process-only comparison")
    args = p.parse_args(argv)

    import torch
    import torchvision
    from torchvision.models.detection import ssd300_vgg16

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    weights = tv_weights.state_dict()
    model = ssd300_vgg16(weights=None, weights_backbone=None)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    model.eval()
    if args.save_pth:
        torch.save(model.state_dict(), args.save_pth)

    imgs = tv_weights.images()
    out: dict[str, np.ndarray] = {
        "weights_digest": np.array(tv_weights.digest(weights)),
        "images_digest": np.array(tv_weights.digest(imgs)),
        "torch_version": np.array(torch.__version__),
        "torchvision_version": np.array(torchvision.__version__),
        "num_images": np.array(len(imgs)),
    }
    with torch.inference_mode():
        chosen = set(range(len(imgs))) if args.images is None else {int(v) for v in args.images.split(",")}
        for i, img in enumerate(imgs):
            if i not in chosen:
                continue
            x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
            det = model([x])[0]
            out[f"boxes_{i}"] = det["boxes"].numpy().astype(np.float32)
            out[f"scores_{i}"] = det["scores"].numpy().astype(np.float32)
            out[f"labels_{i}"] = det["labels"].numpy().astype(np.int64)
            print(
                f"image {i} {img.shape[1]}x{img.shape[0]}: {len(det['scores'])} detections, "
                f"best {float(det['scores'].max()) if len(det['scores']) else 0:.3f}, "
                f">=0.5: {int((det['scores'] >= 0.5).sum())}"
            )

        if args.no_synthetic:
            np.savez_compressed(args.out, **out)
            print(f"wrote {args.out}")
            return 0
        # The post-process alone, on synthetic heads, at the 300 x 300 network input.
        loc, logits = tv_weights.synthetic_heads()
        out["heads_digest"] = np.array(tv_weights.digest([loc, logits]))
        images = torchvision.models.detection.image_list.ImageList(
            torch.zeros(loc.shape[0], 3, 300, 300), [(300, 300)] * loc.shape[0]
        )
        features = [torch.zeros(1, 1, f, f) for f in (38, 19, 10, 5, 3, 1)]
        anchors = model.anchor_generator(images, features)
        dets = model.postprocess_detections(
            {"bbox_regression": torch.from_numpy(loc), "cls_logits": torch.from_numpy(logits)},
            anchors, [(300, 300)] * loc.shape[0],
        )  # fmt: skip
        out["num_synthetic"] = np.array(len(dets))
        for b, det in enumerate(dets):
            out[f"syn_boxes_{b}"] = det["boxes"].numpy().astype(np.float32)
            out[f"syn_scores_{b}"] = det["scores"].numpy().astype(np.float32)
            out[f"syn_labels_{b}"] = det["labels"].numpy().astype(np.int64)
            print(f"synthetic {b}: {len(det['scores'])} detections")
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
