"""Analytic model cost (ssd_deploy.cost) against the published figures and the real network."""

from __future__ import annotations

import dataclasses

import pytest

from ssd_deploy.config import preset
from ssd_deploy.cost import model_cost, model_macs, model_params


@pytest.mark.parametrize(
    ("name", "classes", "gmac"),
    [("voc300", 21, 31.4), ("voc512", 21, 90.2)],
)
def test_macs_match_the_published_cost(name, classes, gmac):
    # docs/ssd.md ("Network") quotes the cost to one decimal place.
    assert round(model_macs(preset(name, num_classes=classes)) / 1e9, 1) == gmac


@pytest.mark.parametrize(("classes", "params"), [(21, 26_285_486), (91, 35_641_826)])
def test_ssd300_parameter_counts_match_the_spec(classes, params):
    assert model_params(preset("voc300" if classes == 21 else "coco300", num_classes=classes)) == params


def test_only_the_conf_heads_grow_with_the_class_count():
    voc = model_cost(preset("voc300"))
    coco = model_cost(preset("coco300", num_classes=91))
    assert voc.macs_by_part()["vgg"] == coco.macs_by_part()["vgg"]
    assert voc.macs_by_part()["extras"] == coco.macs_by_part()["extras"]
    # conf_k has A_k * C outputs over F_k^2 cells with a 3x3 kernel on C_k channels.
    channels = (512, 1024, 512, 256, 256, 256)
    anchors = (4, 6, 6, 6, 4, 4)
    fmaps = (38, 19, 10, 5, 3, 1)
    per_class = sum(9 * c * a * f * f for c, a, f in zip(channels, anchors, fmaps))
    assert coco.macs - voc.macs == per_class * (91 - 21)


def test_gflop_is_two_flops_per_mac():
    cost = model_cost(preset("voc300"))
    assert cost.gflop == pytest.approx(2 * cost.macs / 1e9)


def test_first_and_dilated_layers_by_hand():
    convs = {c.name: c for c in model_cost(preset("voc300")).convs}
    assert convs["vgg.0"].macs == 9 * 3 * 64 * 300 * 300
    # conv6: 3x3 dilation 6 padding 6 keeps 19x19; conv7 is 1x1.
    assert convs["vgg.fc6"].macs == 9 * 512 * 1024 * 19 * 19
    assert convs["vgg.fc7"].macs == 1024 * 1024 * 19 * 19
    # conv4_1 runs on the 38x38 map that the ceil-mode pool makes from 75x75.
    assert convs["vgg.7"].out_size == 38


def test_a_prior_layout_that_does_not_fit_the_network_is_refused():
    cfg = preset("voc300")
    bad = cfg.replace(prior=dataclasses.replace(cfg.prior, feature_maps=(38, 19, 10, 5, 3, 2)))
    with pytest.raises(ValueError, match="feature maps"):
        model_cost(bad)


@pytest.mark.parametrize(
    ("name", "classes"), [("voc300", 21), ("coco300", 81), ("voc512", 21), ("coco512", 91)]
)
def test_cost_equals_the_pytorch_model(name, classes):
    """MACs from forward hooks on the real module (on the meta device: no compute) and its parameters."""
    torch = pytest.importorskip("torch")
    from ssd_deploy.model import SSD, count_parameters

    cfg = preset(name, num_classes=classes)
    with torch.device("meta"):
        model = SSD("train", cfg)
    macs = 0

    def hook(mod, _inp, out):
        nonlocal macs
        kh, kw = mod.kernel_size
        macs += kh * kw * (mod.in_channels // mod.groups) * mod.out_channels * out.shape[2] * out.shape[3]

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook)
    model.forward_heads(torch.empty(1, 3, cfg.size, cfg.size, device="meta"))
    assert model_macs(cfg) == macs
    assert model_params(cfg) == count_parameters(model)
