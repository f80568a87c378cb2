"""Prior (default) boxes in numpy, exactly as docs/ssd.md ("Priors") describes them."""

from __future__ import annotations

import numpy as np

from .config import PriorConfig


def prior_boxes(cfg: PriorConfig) -> np.ndarray:
    """Center-size priors ``[P, 4]`` (cx, cy, w, h), normalised to [0, 1], float32.

    Row order matches the heads' flattening: layer k, then cell row i, column j, then the anchors
    of that cell (min size, sqrt(min*max), then each aspect ratio and its reciprocal).
    """
    layers = []
    for f_map, step, min_size, max_size, ars in zip(
        cfg.feature_maps, cfg.steps, cfg.min_sizes, cfg.max_sizes, cfg.aspect_ratios
    ):
        # f is min_dim / step, not the feature-map size (300/64 = 4.6875 for the 5x5 layer).
        f = cfg.min_dim / step
        centers = (np.arange(f_map, dtype=np.float64) + 0.5) / f
        cy, cx = np.meshgrid(centers, centers, indexing="ij")
        s = min_size / cfg.min_dim
        s_prime = np.sqrt(s * (max_size / cfg.min_dim))
        wh = [(s, s), (s_prime, s_prime)]
        for ar in ars:
            r = np.sqrt(ar)
            wh += [(s * r, s / r), (s / r, s * r)]
        wh_arr = np.asarray(wh, dtype=np.float64)  # [A, 2]
        n_cells, n_anchors = f_map * f_map, len(wh)
        block = np.empty((n_cells, n_anchors, 4), dtype=np.float64)
        block[:, :, 0] = cx.reshape(-1, 1)
        block[:, :, 1] = cy.reshape(-1, 1)
        block[:, :, 2:] = wh_arr[None]
        layers.append(block.reshape(-1, 4))
    out = np.concatenate(layers, axis=0)
    if cfg.clip == "all":
        np.clip(out, 0.0, 1.0, out=out)
    elif cfg.clip == "wh":
        np.clip(out[:, 2:], 0.0, 1.0, out=out[:, 2:])
    return out.astype(np.float32)
