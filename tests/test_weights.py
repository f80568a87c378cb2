"""Checkpoint loading: ssd.pytorch files and wrappers, the VGG base file, torchvision's
ssd300_vgg16 mapping (docs/ssd.md ("Checkpoints")), and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

torch = pytest.importorskip("torch")

from ssd_deploy.config import COCO300, VOC300  # noqa: E402
from ssd_deploy.model import (  # noqa: E402
    SSD,
    UntrainedWeightsWarning,
    WeightsError,
    build_ssd,
    detect_format,
    infer_layout,
    init_weights,
    load_state_dict,
    load_weights,
    model_from_checkpoint,
)

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
ANCHORS_300 = (4, 6, 6, 6, 4, 4)
SRC_CHANNELS_300 = (512, 1024, 512, 256, 256, 256)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def target() -> SSD:
    """The model files are loaded into (seed 0)."""
    return _quiet(build_ssd, "train")


@pytest.fixture(scope="module")
def source_sd() -> dict[str, torch.Tensor]:
    """Weights that differ from the target's everywhere (seed 1, non-zero biases, L2Norm != 20)."""
    model = _quiet(build_ssd, "train", seed=1)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(".weight") or name == "L2Norm.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, source_sd):
    path = tmp_path_factory.mktemp("w") / "ssd300_voc.pth"
    torch.save(source_sd, path)
    return path


def _assert_same(model: SSD, sd: dict[str, torch.Tensor], keys=None) -> None:
    msd = model.state_dict()
    for k in keys if keys is not None else sd:
        assert torch.equal(msd[k], sd[k]), k


# -- ssd.pytorch files ---------------------------------------------------------------------------
def test_round_trip_through_a_file(ckpt, source_sd):
    model, cfg = model_from_checkpoint(ckpt)
    assert (cfg.size, cfg.num_classes, cfg.prior) == (300, 21, VOC300)
    assert model.phase == "train"
    _assert_same(model, source_sd)
    rep = model.load_report
    assert rep.format == "ssd.pytorch" and rep.loaded == 71
    assert rep.missing == [] and rep.unexpected == []
    assert any("RGB" in n and "BGR" in n for n in rep.notes)


def test_load_weights_into_an_existing_model(target, ckpt, source_sd):
    model = init_weights(SSD("train", target.config), seed=0)
    assert not torch.equal(model.state_dict()["vgg.0.weight"], source_sd["vgg.0.weight"])
    report = load_weights(model, ckpt)
    _assert_same(model, source_sd)
    assert report is model.load_report and report.format == "ssd.pytorch"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.001}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict", "model", "module-prefix", "wrapped-and-prefixed"],
)
def test_wrappers_and_module_prefix(tmp_path, source_sd, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(source_sd), path)
    sd = load_state_dict(path)
    assert set(sd) == set(source_sd)
    assert torch.equal(sd["conf.3.weight"], source_sd["conf.3.weight"])


def test_half_precision_file_is_converted(tmp_path, target, source_sd):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in source_sd.items()}, path)
    model = init_weights(SSD("train", target.config))
    report = load_weights(model, path)
    assert model.vgg[0].weight.dtype == torch.float32
    assert torch.equal(model.vgg[0].weight, source_sd["vgg.0.weight"].half().float())
    assert any("float16" in n for n in report.notes)


def test_infer_layout(source_sd):
    assert infer_layout(source_sd) == (300, 21)
    sd512 = _quiet(build_ssd, "train", 512, 81, dataset="coco").state_dict()
    assert infer_layout(sd512) == (512, 81)
    base = {k[len("vgg.") :]: v for k, v in source_sd.items() if k.startswith("vgg.")}
    with pytest.raises(WeightsError, match="base-only"):
        infer_layout(base)


def test_wrong_class_count_names_the_file_and_the_counts(tmp_path, target, source_sd):
    gen = torch.Generator().manual_seed(2)
    sd = dict(source_sd)
    for k, (c, a) in enumerate(zip(SRC_CHANNELS_300, ANCHORS_300)):
        sd[f"conf.{k}.weight"] = torch.randn(a * 201, c, 3, 3, generator=gen)
        sd[f"conf.{k}.bias"] = torch.randn(a * 201, generator=gen)
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    model = init_weights(SSD("train", target.config))
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    assert str(info.value) == (
        f"{path}: conf.0.weight has shape (804, 512, 3, 3), model expects (84, 512, 3, 3) — "
        "the file implies 201 classes, the model has 21"
    )
    # The file itself loads: ssd.pytorch's 201-class COCO layout, COCO priors, spare names.
    model, cfg = model_from_checkpoint(path)
    assert cfg.num_classes == 201 and cfg.prior == COCO300
    assert cfg.class_names[1] == "person" and cfg.class_names[80] == "toothbrush"
    assert cfg.class_names[81] == "class_81" and len(cfg.class_names) == 201
    assert torch.equal(model.conf[4].weight, sd["conf.4.weight"])
    with pytest.raises(WeightsError, match="201 classes, num_classes=21"):
        model_from_checkpoint(path, num_classes=21)


def test_ssd512_file_into_ssd300_model(tmp_path, target):
    path = tmp_path / "ssd512.pth"
    torch.save(_quiet(build_ssd, "train", 512).state_dict(), path)
    with pytest.raises(WeightsError, match=r"the file is SSD512 \(21 classes\), the model is SSD300"):
        load_weights(init_weights(SSD("train", target.config)), path)
    with pytest.raises(WeightsError, match="the file is SSD512, size=300"):
        model_from_checkpoint(path, size=300)


def test_non_strict_partial_load(target, source_sd):
    model = init_weights(SSD("train", target.config))
    before = model.conf[0].weight.clone()
    partial = {k: v for k, v in source_sd.items() if not k.startswith("conf.0.")}
    partial["something.else"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"2 missing .*conf\.0\..*1 unexpected \(something\.else\)"):
        load_weights(model, partial)
    report = load_weights(model, partial, strict=False)
    assert sorted(report.missing) == ["conf.0.bias", "conf.0.weight"]
    assert report.unexpected == ["something.else"] and report.loaded == 69
    assert torch.equal(model.conf[0].weight, before)
    assert torch.equal(model.loc[0].weight, source_sd["loc.0.weight"])


# -- vgg16_reducedfc base --------------------------------------------------------------------------
def test_vgg_base_file(tmp_path, target, source_sd):
    base = {k[len("vgg.") :]: v for k, v in source_sd.items() if k.startswith("vgg.")}
    assert set(base) == {f"{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(base, path)
    model = init_weights(SSD("train", target.config))
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vgg.")}
    with pytest.warns(UntrainedWeightsWarning, match="base-only"):
        report = load_weights(model, path)
    assert report.format == "vgg16_reducedfc" and report.loaded == 30 and report.missing == []
    assert any("base" in n and "train" in n for n in report.notes)
    _assert_same(model, source_sd, [f"vgg.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")])
    _assert_same(model, untouched)
    with pytest.warns(UntrainedWeightsWarning):
        model, cfg = model_from_checkpoint(path, size=300)
    assert (cfg.size, cfg.num_classes) == (300, 21)


# -- torchvision ------------------------------------------------------------------------------------
def _torchvision_pairs() -> list[tuple[str, str, tuple[int, ...]]]:
    """(torchvision name, ssd.pytorch name, shape) for ssd300_vgg16, 91 classes, from docs/ssd.md
    ("Checkpoints").
    """
    feats = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
             14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512)}  # fmt: skip
    convs = [(f"backbone.features.{i}", f"vgg.{i}", (o, c, 3, 3)) for i, (o, c) in feats.items()]
    convs += [
        ("backbone.extra.0.1", "vgg.24", (512, 512, 3, 3)),
        ("backbone.extra.0.3", "vgg.26", (512, 512, 3, 3)),
        ("backbone.extra.0.5", "vgg.28", (512, 512, 3, 3)),
        ("backbone.extra.0.7.1", "vgg.31", (1024, 512, 3, 3)),
        ("backbone.extra.0.7.3", "vgg.33", (1024, 1024, 1, 1)),
        ("backbone.extra.1.0", "extras.0", (256, 1024, 1, 1)),
        ("backbone.extra.1.2", "extras.1", (512, 256, 3, 3)),
        ("backbone.extra.2.0", "extras.2", (128, 512, 1, 1)),
        ("backbone.extra.2.2", "extras.3", (256, 128, 3, 3)),
        ("backbone.extra.3.0", "extras.4", (128, 256, 1, 1)),
        ("backbone.extra.3.2", "extras.5", (256, 128, 3, 3)),
        ("backbone.extra.4.0", "extras.6", (128, 256, 1, 1)),
        ("backbone.extra.4.2", "extras.7", (256, 128, 3, 3)),
    ]
    for k, (c, a) in enumerate(zip(SRC_CHANNELS_300, ANCHORS_300)):
        convs.append((f"head.regression_head.module_list.{k}", f"loc.{k}", (4 * a, c, 3, 3)))
        convs.append((f"head.classification_head.module_list.{k}", f"conf.{k}", (91 * a, c, 3, 3)))
    pairs = [("backbone.scale_weight", "L2Norm.weight", (512,))]
    for tv, ours, shape in convs:
        pairs.append((f"{tv}.weight", f"{ours}.weight", shape))
        pairs.append((f"{tv}.bias", f"{ours}.bias", shape[:1]))
    return pairs


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(11)
    pairs = _torchvision_pairs()
    sd = {tv: torch.randn(shape, generator=gen) for tv, _, shape in pairs}
    assert len(sd) == 71 and sum(v.numel() for v in sd.values()) == 35_641_826  # the count in docs/ssd.md
    path = tmp_path_factory.mktemp("tv") / "ssd300_vgg16_coco.pth"
    torch.save(sd, path)
    return path, sd, pairs


def test_torchvision_mapping_moves_every_tensor(torchvision_file):
    path, sd, pairs = torchvision_file
    assert detect_format(sd) == "torchvision"
    assert infer_layout(sd) == (300, 91)
    model, cfg = model_from_checkpoint(path)
    msd = model.state_dict()
    assert {ours for _, ours, _ in pairs} == set(msd)
    for tv, ours, _ in pairs:
        assert torch.equal(msd[ours], sd[tv]), (tv, ours)
    rep = model.load_report
    assert rep.format == "torchvision" and rep.channel_order == "RGB" and rep.loaded == 71
    from ssd_deploy.model.weights import _torchvision_name

    # Errors about a torchvision file use its own names: the inverse mapping round-trips.
    assert all(_torchvision_name(ours) == tv for tv, ours, _ in pairs)
    assert any("RGB" in n for n in rep.notes) and any("clip" in n for n in rep.notes)


def test_torchvision_config(torchvision_file):
    path, _, _ = torchvision_file
    _, cfg = model_from_checkpoint(path, phase="test")
    assert (
        cfg.num_classes == 91
        and cfg.prior == dataclasses.replace(COCO300, clip="wh")
        and cfg.channel_order == "RGB"
    )
    # torchvision's mean (0.48235, 0.45882, 0.40784) x 255, not ssd.pytorch's rounded one.
    assert cfg.mean == (122.99925, 116.9991, 103.9992)
    names = cfg.class_names
    assert len(names) == 91 and names[0] == "background"
    # COCO category ids: 1 person, 12 unused, 13 stop sign, 44 bottle, 90 toothbrush
    assert (names[1], names[12], names[13], names[44], names[90]) == (
        "person",
        "N/A",
        "stop sign",
        "bottle",
        "toothbrush",
    )
    assert names.count("N/A") == 10
    assert (cfg.detect.top_k, cfg.detect.keep_top_k) == (400, 200)
    assert cfg.detect.clip_boxes and cfg.detect.wh_clamp is not None and not cfg.detect.nms_nan_suppresses
    _, cfg_over = model_from_checkpoint(path, channel_order="BGR")
    assert cfg_over.channel_order == "BGR" and cfg_over.mean == (104.0, 117.0, 123.0)


def test_torchvision_unconsumed_key_is_an_error(tmp_path, torchvision_file):
    _, sd, _ = torchvision_file
    extra = dict(sd)
    extra["backbone.features.24.weight"] = torch.zeros(512, 512, 3, 3)  # past conv4_3: no target
    path = tmp_path / "tv_extra.pth"
    torch.save(extra, path)
    with pytest.raises(WeightsError, match=r"1 unexpected \(backbone\.features\.24\.weight\)"):
        model_from_checkpoint(path)
    bad = dict(sd)
    bad["backbone.extra.2.2.weight"] = torch.zeros(256, 128, 1, 1)
    path_bad = tmp_path / "tv_bad_shape.pth"
    torch.save(bad, path_bad)
    with pytest.raises(WeightsError, match=r"backbone\.extra\.2\.2\.weight has shape \(256, 128, 1, 1\)"):
        model_from_checkpoint(path_bad)
    missing = {k: v for k, v in sd.items() if k != "backbone.scale_weight"}
    with pytest.raises(WeightsError, match=r"1 missing \(backbone\.scale_weight\)"):
        load_weights(_quiet(build_ssd, "train", 300, 91, dataset="coco"), missing)


# -- bad files -------------------------------------------------------------------------------------
def test_missing_file_and_directory(tmp_path, target):
    with pytest.raises(WeightsError, match=r"nope\.pth: no such file"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="not a file"):
        load_weights(target, tmp_path)
    with pytest.raises(WeightsError, match="no such file"):
        model_from_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty or truncated"),
        (b"this is not a checkpoint\n", "not a"),
        ("truncated", "corrupt or truncated"),
    ],
    ids=["empty", "text", "truncated-zip"],
)
def test_unreadable_files(tmp_path, source_sd, content, pattern):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save({"vgg.0.weight": source_sd["vgg.0.weight"]}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=pattern) as info:
        load_state_dict(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg


class _Payload:
    """Unpickling this would create ``marker`` (builtins.open in write mode)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Custom:
    def __init__(self) -> None:
        self.weights = torch.ones(2)


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"vgg.0.weight": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match=r"refused: .*(builtins|io)\.open") as info:
        load_state_dict(path)
    assert not marker.exists()
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_custom_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"model": _Custom()}, path)
    with pytest.raises(WeightsError, match=r"refused: .*_Custom"):
        load_state_dict(path)


def test_not_a_state_dict(tmp_path):
    for obj, pattern in (
        (torch.ones(3), "holds a Tensor"),
        ({"vgg.0.weight": torch.ones(3), "lr": 0.1}, "not named tensors"),
        ({}, "empty"),
    ):
        path = tmp_path / "odd.pth"
        torch.save(obj, path)
        with pytest.raises(WeightsError, match=pattern):
            load_state_dict(path)
    with pytest.raises(WeightsError, match="not an SSD checkpoint"):
        detect_format({"encoder.layer.0.weight": torch.ones(1)}, "x.pth")
