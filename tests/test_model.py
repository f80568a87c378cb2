"""The PyTorch SSD: layout and parameter counts from docs/ssd.md ("Network"), head ordering, L2Norm, init.

A full SSD300 forward costs ~31 GMAC on the CPU, so models are shared per module and shape-only
checks run on the ``meta`` device (no arithmetic).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ssd_deploy.config import VOC300, make_config, preset  # noqa: E402
from ssd_deploy.model import (  # noqa: E402
    SSD,
    L2Norm,
    UntrainedWeightsWarning,
    build_ssd,
    count_parameters,
    init_weights,
)
from ssd_deploy.priors import prior_boxes  # noqa: E402

# Facts written out from docs/ssd.md ("Network"), independent of the code under test.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
SRC_CHANNELS_300 = (512, 1024, 512, 256, 256, 256)
ANCHORS_300 = (4, 6, 6, 6, 4, 4)
FMAPS_300 = (38, 19, 10, 5, 3, 1)
ANCHORS_512 = (4, 6, 6, 6, 6, 4, 4)
FMAPS_512 = (64, 32, 16, 8, 4, 2, 1)


def _quiet_build(*args, **kwargs) -> SSD:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        return build_ssd(*args, **kwargs)


@pytest.fixture(scope="module")
def m300() -> SSD:
    return _quiet_build("train").eval()


@pytest.fixture(scope="module")
def real_run(m300):
    """One real batch-2 forward with the raw NCHW head outputs captured by hooks."""
    raw: dict[str, torch.Tensor] = {}
    hooks = []
    for kind in ("loc", "conf"):
        for k, conv in enumerate(getattr(m300, kind)):
            hook = lambda mod, i, o, key=f"{kind}{k}": raw.__setitem__(key, o)  # noqa: E731
            hooks.append(conv.register_forward_hook(hook))
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 300, 300, generator=gen) * 255 - 120
    try:
        with torch.no_grad():
            loc, conf, priors = m300(x)
    finally:
        for h in hooks:
            h.remove()
    return x, loc, conf, priors, raw


# -- layout ------------------------------------------------------------------------------------------
def test_parameter_counts_match_spec(m300):
    assert count_parameters(m300) == 26_285_486
    coco91 = _quiet_build("train", 300, 91, dataset="coco")
    assert count_parameters(coco91) == 35_641_826


def test_state_dict_keys_and_shapes(m300):
    sd = m300.state_dict()
    expected = {f"vgg.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}
    expected |= {"L2Norm.weight"}
    expected |= {f"extras.{i}.{p}" for i in range(8) for p in ("weight", "bias")}
    expected |= {f"{h}.{k}.{p}" for h in ("loc", "conf") for k in range(6) for p in ("weight", "bias")}
    assert len(sd) == 71
    assert set(sd) == expected
    assert "priors" not in sd  # a non-persistent buffer
    shapes = {
        "vgg.0.weight": (64, 3, 3, 3),
        "vgg.21.weight": (512, 512, 3, 3),
        "vgg.31.weight": (1024, 512, 3, 3),
        "vgg.33.weight": (1024, 1024, 1, 1),
        "L2Norm.weight": (512,),
        "extras.0.weight": (256, 1024, 1, 1),
        "extras.1.weight": (512, 256, 3, 3),
        "extras.7.weight": (256, 128, 3, 3),
        "loc.1.weight": (24, 1024, 3, 3),
        "conf.0.weight": (84, 512, 3, 3),
        "conf.5.weight": (84, 256, 3, 3),
        "conf.3.bias": (126,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    for k, (c, a) in enumerate(zip(SRC_CHANNELS_300, ANCHORS_300)):
        assert tuple(sd[f"loc.{k}.weight"].shape) == (4 * a, c, 3, 3)
        assert tuple(sd[f"conf.{k}.weight"].shape) == (21 * a, c, 3, 3)


def test_vgg_modules_match_spec(m300):
    vgg = m300.vgg
    assert isinstance(vgg, torch.nn.ModuleList) and len(vgg) == 35
    assert [i for i, m in enumerate(vgg) if isinstance(m, torch.nn.Conv2d)] == list(VGG_CONVS)
    pools = {i: m for i, m in enumerate(vgg) if isinstance(m, torch.nn.MaxPool2d)}
    assert sorted(pools) == [4, 9, 16, 23, 30]
    assert pools[16].ceil_mode and not pools[9].ceil_mode
    assert (pools[30].kernel_size, pools[30].stride, pools[30].padding) == (3, 1, 1)
    conv6 = vgg[31]
    assert conv6.dilation == (6, 6) and conv6.padding == (6, 6)
    assert all(isinstance(vgg[i + 1], torch.nn.ReLU) for i in VGG_CONVS)


def test_shapes_on_meta_device_any_batch():
    model = _quiet_build("train").to("meta")
    for batch in (1, 3):
        loc, conf, priors = model(torch.empty(batch, 3, 300, 300, device="meta"))
        assert tuple(loc.shape) == (batch, 8732, 4)
        assert tuple(conf.shape) == (batch, 8732, 21)
        assert tuple(priors.shape) == (8732, 4)
    sizes = [tuple(s.shape[-2:]) for s in model.sources(torch.empty(2, 3, 300, 300, device="meta"))]
    assert sizes == [(f, f) for f in FMAPS_300]


def test_heads_trace_with_a_symbolic_batch(m300):
    """No batch size is baked into the reshapes: torch.export (what the ONNX exporter traces with)
    keeps the batch symbolic in both outputs."""

    class Heads(torch.nn.Module):
        def __init__(self, model: SSD) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.forward_heads(x)

    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(
            Heads(m300), (torch.zeros(2, 3, 300, 300),), dynamic_shapes={"x": {0: batch}}
        )
    (out_node,) = [n for n in ep.graph.nodes if n.op == "output"]
    loc_shape, conf_shape = (tuple(o.meta["val"].shape) for o in out_node.args[0])
    assert isinstance(loc_shape[0], torch.SymInt) and isinstance(conf_shape[0], torch.SymInt)
    assert loc_shape[1:] == (8732, 4) and conf_shape[1:] == (8732, 21)


def test_ssd512_layout():
    model = _quiet_build("train", 512)
    assert len(model.extras) == 10
    last = model.extras[9]
    assert (last.kernel_size, last.stride, last.padding, last.out_channels) == ((4, 4), (1, 1), (1, 1), 256)
    assert model.num_priors == 24_564 == sum(f * f * a for f, a in zip(FMAPS_512, ANCHORS_512))
    assert len(model.loc) == len(model.conf) == 7
    assert [c.out_channels for c in model.loc] == [4 * a for a in ANCHORS_512]
    assert len(model.state_dict()) == 30 + 1 + 20 + 28
    model = model.to("meta")
    loc, conf, priors = model(torch.empty(3, 3, 512, 512, device="meta"))
    assert tuple(loc.shape) == (3, 24_564, 4) and tuple(conf.shape) == (3, 24_564, 21)
    sizes = [s.shape[-1] for s in model.sources(torch.empty(1, 3, 512, 512, device="meta"))]
    assert tuple(sizes) == FMAPS_512


def test_priors_buffer_follows_config(m300):
    np.testing.assert_array_equal(m300.priors.numpy(), prior_boxes(VOC300))
    coco = _quiet_build("train", dataset="coco")
    assert not torch.equal(coco.priors, m300.priors)
    assert "priors" not in coco.state_dict()


def test_prior_config_inconsistent_with_network_is_refused():
    bad_prior = dataclasses.replace(VOC300, name="bad", feature_maps=(38, 19, 10, 5, 3, 2))
    cfg = make_config(300, prior=bad_prior)
    with pytest.raises(ValueError, match="feature maps"):
        SSD("train", cfg)
    short = dataclasses.replace(
        VOC300, name="short", feature_maps=VOC300.feature_maps[:5], steps=VOC300.steps[:5],
        min_sizes=VOC300.min_sizes[:5], max_sizes=VOC300.max_sizes[:5],
        aspect_ratios=VOC300.aspect_ratios[:5],
    )  # fmt: skip
    with pytest.raises(ValueError, match="sources"):
        SSD("train", make_config(300, prior=short))


def test_build_ssd_rejects_bad_arguments():
    with pytest.raises(ValueError, match="phase"):
        build_ssd("eval")
    with pytest.raises(ValueError, match="300 or 512"):
        build_ssd("train", 400)
    with pytest.raises(ValueError, match="conflicts"):
        build_ssd("train", 512, config=preset("voc300"))
    with pytest.raises(ValueError, match="conflicts"):
        build_ssd("train", num_classes=81, config=preset("voc300"))


# -- forward -----------------------------------------------------------------------------------------
def test_forward_outputs(real_run, m300):
    x, loc, conf, priors, _ = real_run
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 21)
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()
    assert priors is m300.priors
    # Images must not mix across the batch: image 1 alone gives image 1's rows.
    with torch.no_grad():
        loc1, conf1 = m300.forward_heads(x[1:2])
    torch.testing.assert_close(loc1[0], loc[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf1[0], conf[1], atol=1e-4, rtol=1e-4)


def test_head_rows_follow_prior_index_formula(real_run):
    """loc[b, offset_k + (y*F_k + x)*A_k + a, d] == raw_loc_k[b, a*4 + d, y, x] for every element."""
    _, loc, conf, _, raw = real_run
    offset = 0
    for k, (f, a) in enumerate(zip(FMAPS_300, ANCHORS_300)):
        for name, out, width in (("loc", loc, 4), ("conf", conf, 21)):
            r = raw[f"{name}{k}"].numpy()
            assert r.shape == (2, a * width, f, f)
            b, aa, d, y, xx = np.ix_(range(2), range(a), range(width), range(f), range(f))
            rows = offset + (y * f + xx) * a + aa
            np.testing.assert_array_equal(out.numpy()[b, rows, d], r[b, aa * width + d, y, xx])
        offset += f * f * a
    assert offset == loc.shape[1]


def test_single_head_lights_up_its_own_rows():
    """With all head weights zero, each head's bias pattern must appear exactly in its own rows."""
    model = _quiet_build("train")
    with torch.no_grad():
        for k, (lc, cc) in enumerate(zip(model.loc, model.conf)):
            for conv in (lc, cc):
                conv.weight.zero_()
            lc.bias.copy_(1000.0 * (k + 1) + torch.arange(lc.out_channels, dtype=torch.float32))
            cc.bias.copy_(-1000.0 * (k + 1) - torch.arange(cc.out_channels, dtype=torch.float32))
        loc, conf = model.forward_heads(torch.zeros(1, 3, 300, 300))
    loc, conf = loc[0].numpy(), conf[0].numpy()
    start = 0
    for k, (f, a) in enumerate(zip(FMAPS_300, ANCHORS_300)):
        n = f * f * a
        anchor = np.tile(np.arange(a), f * f)  # a varies fastest within a cell
        want_loc = 1000.0 * (k + 1) + anchor[:, None] * 4 + np.arange(4)[None]
        want_conf = -1000.0 * (k + 1) - (anchor[:, None] * 21 + np.arange(21)[None])
        np.testing.assert_array_equal(loc[start : start + n], want_loc)
        np.testing.assert_array_equal(conf[start : start + n], want_conf)
        start += n


def test_test_phase_returns_detect_output(m300):
    batch = 2
    pytest.importorskip("ssd_deploy.model.detect")
    model = copy.copy(m300)  # shares weights; only the phase differs
    model.phase = "test"
    with torch.no_grad():
        out = model(torch.rand(batch, 3, 300, 300) * 255 - 120)
    cfg = m300.config
    assert tuple(out.shape) == (batch, 21, cfg.detect.top_k, 5)
    assert torch.count_nonzero(out[:, 0]) == 0  # background never reported
    scores = out[..., 0]
    assert ((scores == 0) | (scores > cfg.detect.conf_thresh)).all()


# -- L2Norm ------------------------------------------------------------------------------------------
def test_l2norm_matches_direct_formula():
    gen = torch.Generator().manual_seed(3)
    layer = L2Norm(16, scale=20.0).double()
    with torch.no_grad():
        layer.weight.copy_(torch.rand(16, generator=gen, dtype=torch.float64) * 30)
    x = torch.randn(2, 16, 5, 7, generator=gen, dtype=torch.float64)
    x[0, :, 1, 2] = 0.0  # an all-zero pixel: output 0, not NaN
    x[1, :, 3, 3] = 0.0
    x[1, 4, 3, 3] = 1e-10  # eps after the sqrt: 1e-10 / (1e-10 + 1e-10) = 0.5
    xn, wn = x.numpy(), layer.weight.detach().numpy()
    want = wn[None, :, None, None] * xn / (np.sqrt((xn**2).sum(axis=1, keepdims=True)) + 1e-10)
    got = layer(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)  # eps is stored as float32
    assert got[0, :, 1, 2].tolist() == [0.0] * 16
    assert got[1, 4, 3, 3] == pytest.approx(0.5 * wn[4], rel=1e-7)
    assert L2Norm().weight.detach().eq(20.0).all() and L2Norm().weight.shape == (512,)


def test_l2norm_exports_with_its_eps(tmp_path):
    """The default ONNX export keeps the Add of eps (a scalar 1e-10 would be optimised away,
    turning an all-zero pixel into 0/0 = NaN)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = L2Norm(8)
    x = torch.rand(2, 8, 3, 3)
    x[1, :, 2, 1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            layer, (x,), dynamo=True, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
        )  # fmt: skip
    proto = prog.model_proto
    ops = [n.op_type for n in proto.graph.node]
    for op in ("Pow", "ReduceSum", "Sqrt", "Add", "Div", "Mul"):
        assert op in ops, ops
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, layer(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert onnx.__version__  # imported for the skip only


def test_l2norm_is_a_named_submodule(m300):
    assert isinstance(m300.L2Norm, L2Norm)
    assert dict(m300.named_modules())["L2Norm"] is m300.L2Norm


# -- init ----------------------------------------------------------------------------------------------
def test_init_weights_is_seeded_and_independent_of_global_rng(m300):
    model = copy.deepcopy(m300)
    torch.manual_seed(12345)
    init_weights(model, seed=0)
    picked = ("vgg.0.", "conf.5.", "extras.3.", "L2Norm.")
    first = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(picked)}
    torch.manual_seed(999)
    torch.rand(1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    init_weights(model, seed=0)
    again = model.state_dict()
    for k, v in first.items():
        assert torch.equal(again[k], v), k
    init_weights(model, seed=1)
    assert not torch.equal(model.state_dict()["vgg.0.weight"], first["vgg.0.weight"])
    # build_ssd uses seed 0, so a fresh build reproduces the shared fixture exactly
    assert torch.equal(m300.state_dict()["conf.5.weight"], first["conf.5.weight"])


def test_init_weights_distribution(m300):
    sd = m300.state_dict()
    assert torch.all(sd["L2Norm.weight"] == 20.0)
    for k in ("vgg.33.bias", "extras.0.bias", "loc.2.bias", "conf.0.bias"):
        assert torch.count_nonzero(sd[k]) == 0, k
    w = sd["vgg.31.weight"]  # 1024 x 512 x 3 x 3
    fan_in, fan_out = 512 * 9, 1024 * 9
    bound = (6.0 / (fan_in + fan_out)) ** 0.5  # xavier-uniform
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound
    assert abs(w.std().item() - bound / 3**0.5) < 0.01 * bound


def test_building_without_weights_warns(m300):
    with pytest.warns(UntrainedWeightsWarning, match="meaningless"):
        build_ssd("train")
    # ...and loading weights at build time does not
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedWeightsWarning)
        model = build_ssd("test", weights=m300.state_dict())
    assert not model.training
    assert torch.equal(model.conf[2].weight, m300.conf[2].weight)
