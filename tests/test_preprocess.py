"""ssd_deploy.preprocess: decoding every common image kind, refusing bad input, the OpenCV-style
resize, and batching with the model's channel order and mean."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssd_deploy.config import preset
from ssd_deploy.preprocess import ImageError, load_image, preprocess, resize_bilinear

#: Every test here runs on the numba kernels and on the numpy path (conftest.runtime_path).
pytestmark = pytest.mark.usefixtures("runtime_path")


def rgb_pattern(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 7 % 256, y * 11 % 256, (x + y) * 5 % 256], -1).astype(np.uint8)


# -- load_image: image kinds -----------------------------------------------------------------------
def test_rgb_png_from_path_bytes_pil_and_array(tmp_path: Path) -> None:
    arr = rgb_pattern()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    for src in (path, str(path), path.read_bytes(), Image.open(path), arr):
        got = load_image(src)
        assert got.dtype == np.uint8 and got.shape == (24, 32, 3)
        np.testing.assert_array_equal(got, arr)


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = rgb_pattern()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    got = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(got, np.repeat(gray[:, :, None], 3, 2))
    Image.fromarray(gray > 100).save(tmp_path / "b.png")  # mode "1"
    got = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(got[:, :, 1], np.where(gray > 100, 255, 0))


def test_rgba_drops_alpha_without_compositing(tmp_path: Path) -> None:
    arr = rgb_pattern()
    alpha = np.zeros(arr.shape[:2], np.uint8)  # fully transparent: compositing would change colours
    Image.fromarray(np.dstack([arr, alpha]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), arr)
    np.testing.assert_array_equal(load_image(np.dstack([arr, alpha])), arr)
    Image.fromarray(np.dstack([arr[:, :, 0], alpha]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[:, :, 2], arr[:, :, 0])


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (8, 6))
    palette = [0, 0, 0, 250, 10, 20, 30, 240, 90] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.putdata([1] * 24 + [2] * 24)
    im.info["transparency"] = 1
    im.save(tmp_path / "p.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns on P->RGB with transparency; we must not
        got = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(got[0, 0], [250, 10, 20])
    np.testing.assert_array_equal(got[5, 7], [30, 240, 90])


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535], [1000, 20000, 50000, 65280]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode in ("I;16", "I")  # a real 16-bit file
    got = load_image(tmp_path / "d.png")
    want = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(got[:, :, 0], want)
    np.testing.assert_array_equal(got[:, :, 0], got[:, :, 2])
    assert got.max() == 255 and (got[0, 2] == 128).all()  # clipping would give 255 for everything >= 255


def test_cmyk_jpeg(tmp_path: Path) -> None:
    arr = rgb_pattern()
    cmyk = Image.fromarray(arr).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    got = load_image(tmp_path / "c.jpg")
    assert got.shape == arr.shape
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))
    assert np.abs(got.astype(int) - arr).mean() < 8  # and close to the original colours


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide x 20 high: left half red, right half blue; orientation 6 means "rotate 90 degrees
    # clockwise to display", after which the image is 20 wide x 40 high with red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    got = load_image(tmp_path / "r.jpg").astype(int)
    assert got.shape == (40, 20, 3)
    assert got[:15, :, 0].mean() > 200 and got[:15, :, 2].mean() < 50
    assert got[25:, :, 2].mean() > 200 and got[25:, :, 0].mean() < 50
    # A caller's PIL image is not modified.
    with Image.open(tmp_path / "r.jpg") as im:
        load_image(im)
        assert im.size == (40, 20)


# -- load_image: bad input -------------------------------------------------------------------------
def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and name in msg
    return msg


def test_truncated_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb_pattern(64, 64)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert "truncated" in _one_line_naming(e, str(path))
    buf = io.BytesIO()
    Image.fromarray(rgb_pattern(64, 64)).save(buf, "PNG")
    with pytest.raises(ImageError) as e:
        load_image(buf.getvalue()[:-40])
    _one_line_naming(e, "<bytes>")


def test_empty_missing_text_and_directory(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "empty.png")
    assert "empty" in _one_line_naming(e, "empty.png")
    (tmp_path / "notes.jpg").write_text("this is not a JPEG\n")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "notes.jpg")
    assert "not an image" in _one_line_naming(e, "notes.jpg")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "missing.jpg")
    assert "no such file" in _one_line_naming(e, "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_bad_arrays_and_types() -> None:
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="unsupported"):
        load_image(12345)  # type: ignore[arg-type]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but carries no pixel data (a decompression-bomb
    stand-in: opening it reads the header only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(9000, 8000))  # 72 MP: over our 50 MP default
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert "limit" in _one_line_naming(e, "big.png")
    with pytest.raises(ImageError, match="limit"):
        load_image(Image.fromarray(rgb_pattern()), max_pixels=100)
    # Past Pillow's own bomb limit even with ours lifted: still one ImageError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError) as e:
            load_image(_png_header_only(20000, 20000), max_pixels=None)
    _one_line_naming(e, "<bytes>")


# -- resize ----------------------------------------------------------------------------------------
def resize_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Separable linear interpolation with np.interp (float64): pixel centres aligned, edges
    clamped, which is what OpenCV's INTER_LINEAR does."""
    img = img.astype(np.float64)
    in_h, in_w = img.shape[:2]
    ys = (np.arange(out_h) + 0.5) * in_h / out_h - 0.5
    xs = (np.arange(out_w) + 0.5) * in_w / out_w - 0.5
    rows = np.stack([[np.interp(xs, np.arange(in_w), img[y, :, c]) for c in range(img.shape[2])]
                     for y in range(in_h)])  # [in_h, C, out_w]  # fmt: skip
    out = np.stack([[np.interp(ys, np.arange(in_h), rows[:, c, x]) for c in range(img.shape[2])]
                    for x in range(out_w)])  # [out_w, C, out_h]  # fmt: skip
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "shape,size", [((37, 53), 64), ((120, 80), 45), ((9, 9), 30), ((1, 5), 7), ((64, 64), 64)]
)
def test_resize_matches_reference(shape: tuple[int, int], size: int) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    got = resize_bilinear(img, size)
    assert got.dtype == np.float32 and got.shape == (size, size, 3)
    np.testing.assert_allclose(got, resize_reference(img, size, size), atol=2e-3)


def test_resize_hand_computed() -> None:
    # Identity.
    img = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_bilinear(img, 12), img)
    # 2x down: each output is the mean of a 2x2 block.
    ramp = np.tile((np.arange(8) * 10)[None, :, None], (8, 1, 3)).astype(np.uint8)
    np.testing.assert_allclose(resize_bilinear(ramp, 4)[0, :, 0], [5, 25, 45, 65])
    # 2x up: output x maps to x/2 - 0.25, clamped to the edge pixels.
    up = resize_bilinear(ramp[:4, :4], 8)[0, :, 0]
    want = np.clip(np.arange(8) / 2 - 0.25, 0, 3) * 10
    np.testing.assert_allclose(up, want, atol=1e-5)
    # Non-square target, (height, width).
    assert resize_bilinear(img, (5, 9)).shape == (5, 9, 3)


def test_resize_matches_opencv_when_installed() -> None:
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for size in (300, 512):
        want = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(resize_bilinear(img, size), want, atol=1e-3)


# -- preprocess ------------------------------------------------------------------------------------
def test_preprocess_channel_order_mean_and_sizes(tmp_path: Path) -> None:
    solid = np.zeros((30, 50, 3), np.uint8)
    solid[...] = (200, 100, 50)  # R, G, B
    Image.fromarray(solid).save(tmp_path / "s.png")
    rgb_cfg = preset("voc300")  # RGB, mean (123, 117, 104)
    batch, sizes = preprocess([tmp_path / "s.png", solid[:20, :10]], rgb_cfg)
    assert batch.shape == (2, 3, 300, 300) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert sizes == [(50, 30), (10, 20)]
    np.testing.assert_allclose(batch[:, :, 150, 150], [[77, -17, -54]] * 2)
    bgr_cfg = preset("voc512", channel_order="BGR")  # mean (104, 117, 123) in BGR order
    batch, sizes = preprocess(solid, bgr_cfg)  # a single image, not a list
    assert batch.shape == (1, 3, 512, 512) and sizes == [(50, 30)]
    np.testing.assert_allclose(batch[0, :, 7, 300], [50 - 104, 100 - 117, 200 - 123])
    # No division by 255 and the image content survives the resize.
    ramp = np.tile(np.arange(0, 250, 5, dtype=np.uint8)[None, :, None], (50, 1, 3))
    x, _ = preprocess([ramp], rgb_cfg)
    assert x[0, 0].max() - x[0, 0].min() > 200


def test_preprocess_propagates_image_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(ImageError, match="bad.jpg"):
        preprocess([rgb_pattern(), tmp_path / "bad.jpg"], preset("voc300"))
