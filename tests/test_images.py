import io

import numpy as np
import pytest
from PIL import Image

from device.images import ImageError, is_jpeg, read_rgb, resize


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_rgb_jpeg_and_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_encode(Image.fromarray(arr), "PNG"))
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, arr)
    jpeg = _encode(Image.fromarray(arr), "JPEG")
    assert is_jpeg(jpeg) and not is_jpeg(b"<html>error</html>")
    assert read_rgb(jpeg).shape == (20, 30, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_any_mode_becomes_rgb_uint8(mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    out = read_rgb(_encode(img, fmt))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode == "I;16":
        # 16-bit full scale maps to 255, not clipped garbage
        assert out.min() == 255


def test_rgba_alpha_composited_on_black():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    out = read_rgb(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.max() == 0


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path):
    good = _encode(Image.fromarray(np.zeros((32, 32, 3), np.uint8)), "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"<html>500 Internal Server Error</html>")
    for name in ("trunc.jpg", "junk.jpg", "missing.jpg"):
        with pytest.raises(ImageError, match=name):
            read_rgb(tmp_path / name)


def test_resize_new_array_and_documented_filter(tmp_path):
    arr = np.random.default_rng(2).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    small = resize(arr, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    expected = np.array(Image.fromarray(arr).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small, expected)
    same = resize(arr, 128)
    assert same is not arr and np.array_equal(same, arr)
    assert resize(arr, (32, 48)).shape == (32, 48, 3)
    # image_size answers in resize's order, (height, width)
    from device.images import image_size

    Image.fromarray(resize(arr, (32, 48))).save(tmp_path / "wide.png")
    assert image_size(tmp_path / "wide.png") == (32, 48)
    with pytest.raises(ValueError, match="uint8"):
        resize(arr.astype(np.float32), 32)
