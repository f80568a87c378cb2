"""Golden priors, derived by hand from docs/ssd.md ("Priors") (not from the code under test)."""

import dataclasses
import math

import numpy as np
import pytest

from ssd_deploy.config import COCO300, COCO512, VOC300, VOC512
from ssd_deploy.priors import prior_boxes


@pytest.mark.parametrize("cfg, count", [(VOC300, 8732), (COCO300, 8732), (VOC512, 24564), (COCO512, 24564)])
def test_counts(cfg, count):
    boxes = prior_boxes(cfg)
    assert boxes.shape == (count, 4) and boxes.dtype == np.float32
    assert cfg.num_priors == count


def test_voc300_first_cell():
    b = prior_boxes(VOC300)
    c = 0.5 / (300 / 8)  # first cell centre of the 38x38 map
    s = 30 / 300
    sp = math.sqrt(s * 60 / 300)
    r = math.sqrt(2)
    want = [[c, c, s, s], [c, c, sp, sp], [c, c, s * r, s / r], [c, c, s / r, s * r]]
    np.testing.assert_allclose(b[:4], want, rtol=1e-6)
    # the next cell moves along x (column is the inner loop)
    np.testing.assert_allclose(b[4, :2], [1.5 / 37.5, c], rtol=1e-6)
    # the second row of cells starts after 38 cells of 4 anchors
    np.testing.assert_allclose(b[38 * 4, :2], [c, 1.5 / 37.5], rtol=1e-6)


def test_voc300_last_rows_clipped():
    b = prior_boxes(VOC300)
    s, smax = 264 / 300, 315 / 300
    r = math.sqrt(2)
    want = [
        [0.5, 0.5, s, s],
        [0.5, 0.5, math.sqrt(s * smax), math.sqrt(s * smax)],
        [0.5, 0.5, s * r, min(s / r, 1)],
        [0.5, 0.5, s / r, min(s * r, 1.0)],
    ]
    want[2][2] = min(want[2][2], 1.0)
    np.testing.assert_allclose(b[-4:], want, rtol=1e-6)


def test_step_not_feature_map_size():
    # 5x5 layer of SSD300 has step 64: f = 300/64 = 4.6875, so the last centre is 4.5/4.6875 = 0.96, not 0.9.
    b = prior_boxes(dataclasses.replace(VOC300, clip=False))
    offset = (38 * 38 * 4) + (19 * 19 * 6) + (10 * 10 * 6)
    last_cell_of_5x5 = offset + (4 * 5 + 4) * 6
    np.testing.assert_allclose(b[last_cell_of_5x5, :2], [0.96, 0.96], rtol=1e-6)


def test_clipping_changes_134_voc300_rows():
    clipped = prior_boxes(VOC300)
    raw = prior_boxes(dataclasses.replace(VOC300, clip=False))
    changed = np.any(clipped != raw, axis=1)
    assert int(changed.sum()) == 134
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert raw.max() > 1


def test_512_first_and_last():
    b = prior_boxes(VOC512)
    c = 0.5 / 64
    np.testing.assert_allclose(b[0], [c, c, 35.84 / 512, 35.84 / 512], rtol=1e-6)
    s = 460.8 / 512
    np.testing.assert_allclose(b[-4], [0.5, 0.5, s, s], rtol=1e-6)
    np.testing.assert_allclose(b[-3, 2], math.sqrt(s * 537.6 / 512), rtol=1e-6)


def test_coco_differs_from_voc_only_in_sizes():
    v, c = prior_boxes(VOC300), prior_boxes(COCO300)
    np.testing.assert_array_equal(v[:, :2], c[:, :2])
    np.testing.assert_allclose(c[0, 2], 21 / 300, rtol=1e-6)


def test_clip_modes():
    raw = prior_boxes(dataclasses.replace(COCO300, clip="none"))
    wh = prior_boxes(dataclasses.replace(COCO300, clip="wh"))
    full = prior_boxes(COCO300)
    # torchvision clips only w and h: centres beyond 1 (10x10 layer, step 32: 9.5/9.375) survive
    assert wh[:, :2].max() > 1.0 and wh[:, 2:].max() <= 1.0
    np.testing.assert_array_equal(wh[:, :2], raw[:, :2])
    assert full.max() <= 1.0
    assert dataclasses.replace(COCO300, clip=False).clip == "none"
