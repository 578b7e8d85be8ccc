"""`keras_vit.data.transform` gives timm's evaluation pixels: on 26 generated files (JPEG 4:2:0
and 4:4:4 at several qualities, PNG RGB/RGBA/L/P/16-bit, BMP 24-bit and palette, GIF, from
64x48 to 1600x1200, portrait and landscape, up- and downscaled) its uint8 output equals
`timm.data.create_transform` on `Image.open(f).convert("RGB")` within 1 level, for bicubic and
bilinear, the three crop modes, square and non-square inputs; decoding equals PIL's; float
images resample as PIL's "F" mode; unreadable bytes raise `InvalidArgumentError`."""

import io

import numpy as np
import pytest
from export_fixtures import timm_eval_pixels, timm_eval_steps
from PIL import Image

tf = pytest.importorskip("tensorflow")
timm_data = pytest.importorskip("timm.data")

from keras_vit.data.transform import EvalTransform, decode, resize  # noqa: E402

MAX_LEVELS = 1  # the acceptance bound; measured: 0 on every file and configuration


def _picture(h, w, seed):
    """uint8 `(h, w, 3)`: smooth colour waves (resampling errors show on edges and ramps)
    plus noise (so JPEG quantisation and subsampling have work to do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    f = rng.uniform(2, 12, 3)
    base = np.stack(
        [np.sin(f[0] * xx + 3 * yy), np.cos(f[1] * yy - 2 * xx), np.sin(f[2] * xx * yy)]
    )
    noise = 20 * rng.standard_normal((h, w, 3))
    return np.clip(127.5 + 90 * np.moveaxis(base, 0, -1) + noise, 0, 255).astype(np.uint8)


def _encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _files():
    """name -> encoded bytes, 26 files."""
    files = {}
    sizes = [(48, 64), (64, 48), (224, 224), (300, 200), (200, 333), (257, 256), (90, 500)]
    for i, (h, w) in enumerate(sizes):
        rgb = Image.fromarray(_picture(h, w, i))
        for q in (60, 95):
            files[f"jpeg420_q{q}_{h}x{w}"] = _encode(rgb, "JPEG", quality=q, subsampling=2)
        files[f"jpeg444_q85_{h}x{w}"] = _encode(rgb, "JPEG", quality=85, subsampling=0)
    big = Image.fromarray(_picture(1200, 1600, 20))
    files["jpeg420_q75_1200x1600"] = _encode(big, "JPEG", quality=75)
    files["png_rgb_1600x1200"] = _encode(big.transpose(Image.Transpose.ROTATE_90), "PNG")
    pic = _picture(150, 210, 30)
    rgba = np.concatenate([pic, _picture(150, 210, 31)[..., :1]], -1)
    files["png_rgb"] = _encode(Image.fromarray(pic), "PNG")
    files["png_rgba"] = _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    files["png_l"] = _encode(Image.fromarray(pic[..., 0]), "PNG")
    palette = Image.fromarray(pic).convert("P", palette=Image.Palette.ADAPTIVE)
    files["png_p"] = _encode(palette, "PNG")
    grey16 = (pic[..., 0].astype(np.uint16) * 3).astype(np.uint16)  # PIL clips these at 255
    files["png_i16"] = _encode(Image.fromarray(grey16), "PNG")
    files["png_rgb16"] = tf.io.encode_png(pic.astype(np.uint16) * 257 + 100).numpy()
    files["bmp_rgb"] = _encode(Image.fromarray(_picture(96, 128, 40)), "BMP")
    files["bmp_palette"] = _encode(palette, "BMP")
    files["gif"] = _encode(palette, "GIF")
    assert len(files) >= 24
    return files


@pytest.fixture(scope="module")
def files():
    return _files()


def test_decode_is_pil_convert_rgb(files):
    fn = tf.function(decode)
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as im:
            ref = np.asarray(im.convert("RGB"))
        out = fn(tf.constant(data)).numpy()
        assert out.shape == ref.shape, name
        diff = int(np.abs(out.astype(int) - ref).max())
        assert diff <= MAX_LEVELS, f"{name}: decoded pixels differ from PIL by {diff}"


CONFIGS = [
    # (input_size, crop_pct, crop_mode, interpolation)
    ((224, 224), 0.875, "center", "bicubic"),  # DeiT
    ((224, 224), 0.9, "center", "bilinear"),
    ((256, 256), 0.9, "center", "bicubic"),  # MobileViT
    ((192, 256), 0.95, "center", "bicubic"),  # non-square: timm's ResizeKeepRatio
    ((224, 224), 1.1, "center", "bicubic"),  # crop_pct > 1: padded
    ((224, 224), 0.875, "squash", "bilinear"),
    ((160, 224), 1.0, "squash", "bicubic"),
    ((224, 224), 1.0, "border", "bicubic"),
    ((224, 192), 0.95, "border", "bilinear"),
]


@pytest.mark.parametrize("input_size,crop_pct,crop_mode,interpolation", CONFIGS)
def test_transform_matches_timm_on_pil(files, input_size, crop_pct, crop_mode, interpolation):
    transform = EvalTransform(input_size, crop_pct, crop_mode, interpolation, mean=(0.5, 0.3, 0.7))
    steps, _ = timm_eval_steps(transform)
    fn = tf.function(transform.from_bytes)
    worst = {}
    for name, data in files.items():
        ref = timm_eval_pixels(data, steps)
        out = fn(tf.constant(data)).numpy()
        assert out.shape == ref.shape == (*input_size, 3), name
        worst[name] = int(np.abs(out.astype(int) - ref).max())
    assert max(worst.values()) <= MAX_LEVELS, {k: v for k, v in worst.items() if v > MAX_LEVELS}


def test_float_images_resample_as_pil_float_mode():
    """Float input (not uint8) follows PIL's "F" mode: the same filter, no rounding."""
    grey = _picture(70, 90, 5)[..., 0].astype(np.float32) + 0.25
    for interpolation, pil_filter in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        for size in ((31, 200), (140, 45)):
            ref = np.asarray(Image.fromarray(grey).resize(size[::-1], pil_filter))
            image = tf.constant(np.repeat(grey[..., None], 3, -1))
            out = resize(image, size, interpolation).numpy()
            np.testing.assert_allclose(out[..., 1], ref, atol=1e-3, rtol=0)


def test_unreadable_bytes_raise_invalid_argument(files):
    fn = tf.function(decode)
    bad = {
        "empty": b"",
        "text": b"this is plain text, not an image",
        "truncated jpeg": files["jpeg420_q95_300x200"][:2000],
        "truncated png": files["png_rgb"][:300],
    }
    for name, data in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError):
            fn(tf.constant(data))
            pytest.fail(f"{name} decoded without an error")


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="crop_mode.*'middle'"):
        EvalTransform((224, 224), crop_mode="middle")
    with pytest.raises(ValueError, match="interpolation.*'lanczos'"):
        EvalTransform((224, 224), interpolation="lanczos")
    with pytest.raises(ValueError, match="input_size"):
        EvalTransform((0, 224))
