import json

import pytest

from ssd_deploy.config import (
    COCO300,
    VOC300,
    ConfigError,
    DetectParams,
    SSDConfig,
    make_config,
    preset,
)


def test_presets():
    v = preset("voc300")
    assert (v.size, v.num_classes, v.prior.name, v.num_priors) == (300, 21, "voc300", 8732)
    assert v.class_names[0] == "background" and v.class_names[15] == "person"
    c = preset("coco512")
    assert (c.size, c.num_classes, c.prior.name, c.num_priors) == (512, 81, "coco512", 24564)
    assert c.class_names[1] == "person"
    assert v.detect == DetectParams(conf_thresh=0.01, nms_thresh=0.45, top_k=200, keep_top_k=None)
    assert v.channel_order == "RGB" and v.mean == (123.0, 117.0, 104.0)


def test_prior_config_is_explicit_not_from_class_count():
    # ssd.pytorch chose COCO priors for any class count other than 21; we never do that silently.
    assert make_config(300, "voc", num_classes=5).prior == VOC300
    assert make_config(300, "voc", num_classes=5, prior="coco300").prior == COCO300


def test_old_201_class_coco_checkpoints_get_names():
    c = make_config(300, "coco", num_classes=201)
    assert len(c.class_names) == 201 and c.class_names[80] == "toothbrush" and c.class_names[81] == "class_81"


def test_bgr_default_mean():
    c = make_config(300, "voc", channel_order="BGR")
    assert c.mean == (104.0, 117.0, 123.0)


def test_json_round_trip():
    c = make_config(
        512, "coco", num_classes=91, channel_order="BGR", detect=DetectParams(conf_thresh=0.2, keep_top_k=200)
    )
    d = json.loads(c.to_json())
    assert d["schema"] == 1 and d["prior"]["name"] == "coco512"
    assert SSDConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "not valid JSON"),
        ("[]", "must be an object"),
        ('{"size": 300}', "malformed"),
    ],
)
def test_bad_json(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SSDConfig.from_json(text)


def test_validation():
    with pytest.raises(ConfigError, match="size"):
        make_config(size=320)
    with pytest.raises(ConfigError, match="class names"):
        make_config(300, "voc", class_names=["background", "a"])
    with pytest.raises(ConfigError, match="nms_thresh"):
        DetectParams(nms_thresh=0).validate()
    with pytest.raises(ConfigError, match="is for 512"):
        SSDConfig(size=300, num_classes=2, class_names=("bg", "a"), prior=preset("voc512").prior)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("voc321")


def test_detect_params_replace():
    p = DetectParams()
    assert p.replace(conf_thresh=None, nms_thresh=0.5).nms_thresh == 0.5
    assert p.replace(conf_thresh=None).conf_thresh == 0.01
    assert p.replace(keep_top_k=200).keep_top_k == 200
    with pytest.raises(ConfigError):
        p.replace(top_k=0)


def test_detect_params_of_old_artifacts_and_torchvision():
    import json
    import math

    from ssd_deploy.config import ConfigError, DetectParams, SSDConfig, preset

    # A config written before clip_boxes/wh_clamp/nms_nan_suppresses existed reads as ssd.pytorch.
    d = json.loads(preset("voc300").to_json())
    for key in ("clip_boxes", "wh_clamp", "nms_nan_suppresses"):
        del d["detect"][key]
    old = SSDConfig.from_dict(d).detect
    assert (old.clip_boxes, old.wh_clamp, old.nms_nan_suppresses) == (False, None, True)
    tv = DetectParams(
        top_k=400, keep_top_k=200, clip_boxes=True, wh_clamp=math.log(1000 / 16), nms_nan_suppresses=False
    )
    cfg = preset("coco300").replace(detect=tv)
    assert SSDConfig.from_json(cfg.to_json()).detect == tv
    # Per-call overrides keep the format's rules.
    assert tv.replace(conf_thresh=0.3).clip_boxes and tv.replace(keep_top_k=None).wh_clamp == tv.wh_clamp
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="wh_clamp"):
            DetectParams(wh_clamp=bad).validate()
