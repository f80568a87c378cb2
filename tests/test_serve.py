"""The request handling behind ``ssd-serve`` (no Ray needed): multipart parsing, content types,
limits, query parameters, and batched runs that equal direct Detector calls."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from ssd_deploy.config import DetectParams
from ssd_deploy.serve.service import (
    DetectionService,
    Limits,
    RequestError,
    _image_dimensions,
    extract_image,
    params_from_query,
    split_multipart,
)


def _jpeg(w=64, h=48, seed=0, **kw) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(w=64, h=48) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _multipart(
    fields: list[tuple[str, str | None, str | None, bytes]], boundary="b0undary-x1"
) -> tuple[str, bytes]:
    """(name, filename, content type, data) -> (Content-Type header, body), as browsers send them."""
    out = b""
    for name, filename, ctype, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f'multipart/form-data; boundary="{boundary}"', out


# -- multipart ----------------------------------------------------------------------------------------


def test_multipart_keeps_binary_data_intact():
    # CRLFs and dashes inside the payload must not be taken for boundaries.
    tricky = b"\r\n--\r\n--b0undary\r\n\r\n" + bytes(range(256)) * 4 + b"\r\n"
    ctype, body = _multipart([("note", None, None, b"hello"), ("image", "x.jpg", "image/jpeg", tricky)])
    parts = split_multipart(body, "b0undary-x1")
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("note", None, None), ("image", "x.jpg", "image/jpeg")]  # fmt: skip
    assert parts[0].data == b"hello" and parts[1].data == tricky


def test_multipart_from_a_real_client_encoder():
    filepost = pytest.importorskip("urllib3.filepost")
    img = _jpeg()
    body, ctype = filepost.encode_multipart_formdata({"image": ("photo.jpg", img, "image/jpeg"), "x": "1"})
    assert extract_image(ctype, body) == img


@pytest.mark.parametrize(
    "body, message",
    [
        (b'--b0undary-x1\r\nContent-Disposition: form-data; name="a"\r\n\r\nabc\r\n', "closing boundary"),
        (b"no boundaries at all", "closing boundary"),
        (b"--b0undary-x1\r\nbroken header\r\n\r\nabc\r\n--b0undary-x1--", "bad part header"),
    ],
)
def test_malformed_multipart_is_400(body, message):
    with pytest.raises(RequestError, match=message) as e:
        split_multipart(body, "b0undary-x1")
    assert e.value.status == 400


# -- content types and bodies ------------------------------------------------------------------------


def test_accepted_bodies():
    jpg, png = _jpeg(), _png()
    assert extract_image("image/jpeg", jpg) == jpg
    assert extract_image("image/png; charset=binary", png) == png
    assert extract_image("application/octet-stream", png) == png  # sniffed
    assert extract_image(*_multipart([("image", "a.png", "image/png", png)])) == png
    # a single file under another field name is fine too
    assert extract_image(*_multipart([("upload", "a.jpg", None, jpg)])) == jpg


@pytest.mark.parametrize(
    "ctype, body, status, message",
    [
        (None, b"x", 415, "missing Content-Type"),
        ("text/plain", b"hello", 415, "unsupported Content-Type 'text/plain'"),
        ("application/json", b"{}", 415, "unsupported Content-Type"),
        ("image/jpeg", b"", 400, "empty request body"),
        ("image/jpeg", b"GIF89a...", 400, "not a JPEG or PNG"),
    ],
)
def test_refused_bodies(ctype, body, status, message):
    with pytest.raises(RequestError, match=message) as e:
        extract_image(ctype, body)
    assert e.value.status == status


def test_refused_multipart_bodies():
    jpg = _jpeg()
    cases = [
        (_multipart([("note", None, None, b"hi")]), 400, "no file part"),
        (
            _multipart([("image", "a.jpg", None, jpg), ("image2", "b.jpg", None, jpg)]),
            400,
            "one image per request",
        ),
        (_multipart([("image", "a.txt", "text/plain", b"hi")]), 415, "text/plain"),
        (_multipart([("image", "a.jpg", "image/jpeg", b"")]), 400, "empty image"),
        (("multipart/form-data", b"--x--"), 400, "boundary"),
    ]
    for (ctype, body), status, message in cases:
        with pytest.raises(RequestError, match=message) as e:
            extract_image(ctype, body)
        assert e.value.status == status, message


# -- image header dimensions ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["png", "jpeg", "progressive", "exif"])
def test_header_dimensions_match_pillow(kind):
    from PIL import Image

    w, h = 123, 77
    if kind == "png":
        data = _png(w, h)
    elif kind == "progressive":
        data = _jpeg(w, h, progressive=True)
    elif kind == "exif":  # an APP1 segment before the frame header
        exif = Image.Exif()
        exif[0x010F] = "maker" * 50
        data = _jpeg(w, h, exif=exif.tobytes())
    else:
        data = _jpeg(w, h)
    assert _image_dimensions(data) == Image.open(io.BytesIO(data)).size == (w, h)


def test_header_dimensions_of_a_huge_png_without_decoding():
    # A valid PNG signature + IHDR claiming 30000 x 30000; nothing past the header exists.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    assert _image_dimensions(b"\x89PNG\r\n\x1a\n" + chunk) == (30000, 30000)
    assert _image_dimensions(_jpeg()[:4]) is None


# -- query parameters --------------------------------------------------------------------------------


def test_query_parameters():
    base = DetectParams(keep_top_k=200)
    p = params_from_query({"conf_thresh": "0.5", "top_k": "50", "nms_thresh": "0.3"}, base)
    assert (p.conf_thresh, p.top_k, p.nms_thresh, p.keep_top_k) == (0.5, 50, 0.3, 200)
    assert params_from_query({}, base) == base
    # The artifact's uncapped default (keep_top_k=None) is capped at the server's limit.
    limits = Limits(max_top_k=100, max_detections=50)
    p = params_from_query({}, DetectParams(top_k=200, keep_top_k=None), limits)
    assert (p.top_k, p.keep_top_k) == (100, 50)
    p = params_from_query({"top_k": "100", "keep_top_k": "50"}, base, limits)
    assert (p.top_k, p.keep_top_k) == (100, 50)


@pytest.mark.parametrize(
    "query, message",
    [
        ({"conf": "0.5"}, "unknown query parameter"),
        ({"conf_thresh": "high"}, "must be a number"),
        ({"conf_thresh": "nan"}, "finite"),
        ({"conf_thresh": "1.5"}, r"conf_thresh must be in \[0, 1\)"),
        ({"top_k": "2.5"}, "must be an integer"),
        ({"top_k": "0"}, r"top_k must be in \[1, 1000\]"),
        ({"top_k": "1001"}, r"top_k must be in \[1, 1000\] \(this server's limit\), got 1001"),
        ({"top_k": str(10**9)}, r"top_k must be in \[1, 1000\]"),
        ({"keep_top_k": "none"}, "keep_top_k='none' is not served"),
        ({"keep_top_k": "all"}, "is not served"),
        ({"keep_top_k": "1001"}, r"keep_top_k must be in \[1, 1000\]"),
        ({"keep_top_k": "0"}, r"keep_top_k must be in \[1, 1000\]"),
        ({"nms_thresh": "0"}, r"nms_thresh must be in \(0, 1\]"),
        ({"conf_thresh": "-1e-9"}, r"conf_thresh must be in \[0, 1\)"),
    ],
)
def test_bad_query_parameters_are_400(query, message):
    with pytest.raises(RequestError, match=message) as e:
        params_from_query(query, DetectParams())
    assert e.value.status == 400


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_top_k must be <= 10000"):
        Limits(max_top_k=10**6)
    with pytest.raises(ValueError, match="positive"):
        Limits(max_detections=0)


def test_library_caps_top_k_before_allocating():
    from ssd_deploy.config import MAX_TOP_K, ConfigError

    assert DetectParams(top_k=MAX_TOP_K).replace(conf_thresh=0.5).top_k == MAX_TOP_K
    with pytest.raises(ConfigError, match=r"top_k must be in \[1, 10000\], got 1000000000"):
        DetectParams().replace(top_k=10**9)


# -- the service over a real export ------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(ssd300_onnx):
    svc = DetectionService(ssd300_onnx, limits=Limits(max_body_bytes=2_000_000, max_pixels=1_000_000))
    yield svc
    svc.close()


def _encoded(path, fmt="JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, fmt)
    return buf.getvalue()


def test_batched_requests_equal_direct_detector_calls(service, sample_paths):
    from ssd_deploy.runtime import Detector

    blobs = [_encoded(p, "JPEG" if i % 2 else "PNG") for i, p in enumerate(sample_paths[:4])]
    queries = [{"conf_thresh": "0.3"}, {"conf_thresh": "0.5", "top_k": "20"}, {"conf_thresh": "0.3"},
               {"conf_thresh": "0.4", "keep_top_k": "5"}]  # fmt: skip
    types = ["image/png", "image/jpeg", "image/png", "image/jpeg"]
    prepared = [service.prepare(t, b, q) for t, b, q in zip(types, blobs, queries)]
    got = service.run_batch(prepared)
    det = Detector.load(service.engine)
    for blob, q, g in zip(blobs, queries, got):
        kw = {k: (float(v) if k == "conf_thresh" else int(v)) for k, v in q.items()}
        want = det.detect(blob, **kw).to_dict()
        assert (g["width"], g["height"]) == (want["width"], want["height"])
        assert len(g["detections"]) == len(want["detections"]) > 0
        key = lambda d: (d["class_id"], -d["score"])  # noqa: E731 - ties: compare as sets
        for a, b in zip(sorted(g["detections"], key=key), sorted(want["detections"], key=key)):
            assert a["class_name"] == b["class_name"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            np.testing.assert_allclose(a["box"], b["box"], atol=0.05)
    assert len(got[3]["detections"]) <= 5
    assert service.info()["images"] >= 4


def test_detector_refuses_a_huge_top_k_at_once(service):
    from ssd_deploy.config import ConfigError

    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ConfigError, match="top_k must be in"):
        service.detector.detect_array([image], top_k=10**9)
    _, array = service.detector.detect_array([image], top_k=10_000, conf_thresh=0.5)
    assert array.shape == (1, 21, 10_000, 5)  # the largest array the cap allows: 4.2 MB


def test_service_limits(service):
    with pytest.raises(RequestError, match="exceeds the upload limit of 2000000 bytes") as e:
        service.prepare("image/jpeg", b"\xff\xd8\xff" + b"0" * 2_000_000)
    assert e.value.status == 413
    big = _png(1100, 1000)  # 1.1 MP > 1 MP, tiny when encoded
    with pytest.raises(RequestError, match=r"1100x1000 = 1.1 megapixels; the limit is 1.0") as e:
        service.prepare("image/png", big)
    assert e.value.status == 413
    truncated = _jpeg(200, 200)[:300]
    with pytest.raises(RequestError, match="cannot decode the image") as e:
        service.prepare("image/jpeg", truncated)
    assert e.value.status == 400
