"""torchvision ``ssd300_vgg16`` weights and test images from a numpy seed, without torch or torchvision.

Both sides of the torchvision comparison use this module: ``torchvision_reference.py`` (run in the
reference venv, where it loads these arrays into the real ``ssd300_vgg16`` with ``strict=True``,
which checks every key name and shape below) and the tests in the main environment (which save the
same arrays as a ``.pth`` and export it). Values come from ``numpy.random.Generator.random`` on
PCG64 (53 random bits per double), so they do not depend on torch's RNG or version;
:func:`digest` pins them, and the reference data records the digest it was made with.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED = 20261130
NUM_CLASSES = 91
#: ssd300_vgg16 head: input channels and anchors per cell of its six sources.
HEAD_CHANNELS = (512, 1024, 512, 256, 256, 256)
ANCHORS = (4, 6, 6, 6, 4, 4)
#: Scale of the classification head's weights over He-uniform: spreads the logits so that some
#: priors score high for one class (a few confident detections) while most stay near 1/91.
CLS_GAIN = 0.6
REG_GAIN = 1.0
#: conv1_1 sees 0..255 minus the mean, not unit-variance input: this keeps the activations of
#: every source near unit scale (as trained weights have), instead of ~100.
INPUT_GAIN = 1.0 / 64


def _conv(key: str, out_c: int, in_c: int, k: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{key}.weight", (out_c, in_c, k, k)), (f"{key}.bias", (out_c,))]


def layout(num_classes: int = NUM_CLASSES) -> list[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` of every tensor of torchvision's ``ssd300_vgg16`` state dict, in its order."""
    items: list[tuple[str, tuple[int, ...]]] = [("backbone.scale_weight", (512,))]
    vgg = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
           (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512))  # fmt: skip
    for idx, cin, cout in vgg:
        items += _conv(f"backbone.features.{idx}", cout, cin, 3)
    for idx in (1, 3, 5):  # conv5_1..5_3 after pool4
        items += _conv(f"backbone.extra.0.{idx}", 512, 512, 3)
    items += _conv("backbone.extra.0.7.1", 1024, 512, 3)  # conv6 (dilated)
    items += _conv("backbone.extra.0.7.3", 1024, 1024, 1)  # conv7
    for i, (cin, mid, cout) in enumerate(
        ((1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)), 1
    ):
        items += _conv(f"backbone.extra.{i}.0", mid, cin, 1)
        items += _conv(f"backbone.extra.{i}.2", cout, mid, 3)
    for k, (cin, a) in enumerate(zip(HEAD_CHANNELS, ANCHORS)):
        items += _conv(f"head.classification_head.module_list.{k}", a * num_classes, cin, 3)
    for k, (cin, a) in enumerate(zip(HEAD_CHANNELS, ANCHORS)):
        items += _conv(f"head.regression_head.module_list.{k}", a * 4, cin, 3)
    return items


def state_dict(seed: int = SEED, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Seeded float32 weights under torchvision's key names: He-uniform convs, small uniform
    biases, ``scale_weight`` 20 (torchvision's init), gains :data:`CLS_GAIN` / :data:`REG_GAIN`
    on the heads."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, np.ndarray] = {}
    for key, shape in layout(num_classes):
        if key == "backbone.scale_weight":
            out[key] = np.full(shape, 20.0, dtype=np.float32)
            continue
        u = rng.random(shape) * 2.0 - 1.0  # uniform in [-1, 1)
        if key.endswith(".bias"):
            out[key] = (u * 0.05).astype(np.float32)
            continue
        fan_in = shape[1] * shape[2] * shape[3]
        gain = (CLS_GAIN if "classification_head" in key else REG_GAIN if "regression_head" in key
                else INPUT_GAIN if key == "backbone.features.0.weight" else 1.0)  # fmt: skip
        out[key] = (u * gain * np.sqrt(6.0 / fan_in)).astype(np.float32)
    return out


#: (height, width) of the test images: two at the network size, larger non-square ones (torchvision
#: resizes them bilinearly to 300 x 300) and one smaller than 300 (upsampled).
IMAGE_SHAPES: tuple[tuple[int, int], ...] = ((300, 300), (300, 300), (480, 640), (427, 333), (211, 257))


def images(seed: int = SEED + 1) -> list[np.ndarray]:
    """Deterministic ``H x W x 3`` uint8 RGB images: smooth gradients and blobs plus noise, so the
    network sees structure at several scales."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for h, w in IMAGE_SHAPES:
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        img = np.empty((h, w, 3), dtype=np.float64)
        for c in range(3):
            fx, fy, ph = rng.random(3) * (6.0, 6.0, 6.28)
            img[:, :, c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        for _ in range(4):  # a few filled rectangles of random colour
            y0, x0 = int(rng.random() * h * 0.7), int(rng.random() * w * 0.7)
            bh, bw = int(h * (0.1 + 0.3 * rng.random())), int(w * (0.1 + 0.3 * rng.random()))
            img[y0 : y0 + bh, x0 : x0 + bw] = rng.random(3)
        img += (rng.random((h, w, 3)) - 0.5) * 0.2
        out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    return out


def synthetic_heads(seed: int = SEED + 2, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Raw head outputs ``(bbox_regression [B, 8732, 4], cls_logits [B, 8732, 91])`` for comparing
    the post-process alone: wide offsets (many boxes leave the image, some log-sizes pass the
    log(1000/16) clamp) and logits that make a few hundred confident candidates per image."""
    rng = np.random.Generator(np.random.PCG64(seed))
    p = 8732
    loc = (rng.random((batch, p, 4)) * 2.0 - 1.0) * 8.0
    # Some width/height codes far past the clamp: 5 * log(1000/16) is about 20.7.
    big = rng.random((batch, p)) < 0.02
    loc[:, :, 2][big] = 22.0 + rng.random(int(big.sum())) * 10.0
    logits = (rng.random((batch, p, NUM_CLASSES)) * 2.0 - 1.0) * 2.0
    hot = rng.random((batch, p)) < 0.05
    cls = (rng.random((batch, p)) * (NUM_CLASSES - 1)).astype(np.int64) + 1
    logits[hot, cls[hot]] += 4.0 + rng.random(int(hot.sum())) * 6.0
    # Two confident clusters on the 38x38 source's smallest anchors (w = h = 0.07), where the
    # torchvision-only rules change the result:
    # - right column pushed off the image: clipped to zero-area boxes at x = 1, whose IoU with
    #   each other is 0/0; torchvision's nms keeps them all, ssd.pytorch's rule keeps one;
    # - left column pushed far left with huge dw: the clamped width ends inside the image (a box
    #   [0, ~0.1] after clipping), the unclamped one would cover the whole width.
    right = (np.arange(10) * 38 + 37) * 4
    left = (np.arange(20, 26) * 38) * 4
    loc[:, right, 0] = 30.0
    loc[:, left, 0] = -300.0
    loc[:, left, 2] = 30.0
    logits[:, right, 5] += 14.0
    logits[:, left, 7] += 14.0
    return loc.astype(np.float32), logits.astype(np.float32)


def digest(arrays: dict[str, np.ndarray] | list[np.ndarray]) -> str:
    """sha256 over names, shapes and bytes: pins the generated values across numpy versions."""
    h = hashlib.sha256()
    items = arrays.items() if isinstance(arrays, dict) else enumerate(arrays)
    for key, a in items:
        h.update(f"{key}:{a.dtype}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
