"""timm's evaluation transform on PIL, in TensorFlow ops: decode, resize, centre crop.

`timm.data.create_transform(**resolve_data_config({}, model=m))` on `Image.open(f)
.convert("RGB")` is what a checkpoint's published accuracy was measured with. `EvalTransform`
gives the same uint8 pixels from the same file, in graph ops only, so one implementation
serves tf.data (`keras_vit.data`, `keras-vit validate`), the SavedModel's `serve_image_bytes`
(TensorFlow alone, no Keras, no PIL) and `keras-vit predict`:

- `decode`: bytes -> RGB as PIL opens and converts them. JPEG with libjpeg's accurate integer
  IDCT (PIL's; TensorFlow's default fast IDCT differs by up to 5 levels); PNG of any bit depth
  (16-bit RGB(A) keeps the high byte, 16-bit grey is clipped to 255 as PIL's "I;16" -> "RGB"
  does); grey, palette and alpha images -> RGB (alpha dropped, not composited, as
  `convert("RGB")`); BMP 24/32-bit and 8-bit palette; GIF's first frame. One known
  difference: a GIF's transparent pixels come out black (PIL: the palette colour).
- `resize`: Pillow's `ImagingResample` (`src/libImaging/Resample.c`): a separable filter whose
  support widens by the scale when downscaling, coefficients normalised and rounded to 22-bit
  fixed point, each pass rounded and clipped to uint8, the passes in Pillow's order. The
  coefficients are computed at run time from the image's shape (inside a SavedModel the input
  size is unknown when the graph is traced).
- the geometry of timm's `transforms_imagenet_eval`: crop_mode "center" (shorter side to
  `floor(size / crop_pct)`, torchvision's `Resize` + `CenterCrop`), "squash" (both sides to
  `floor(size / crop_pct)`) and "border" (longer side, then padded with the mean colour).

Output: uint8 `(H, W, 3)`. Normalisation stays in the model (`include_preprocessing`).
Float input (e.g. the `digits` set, 0..16 scaled to 0..255) is resampled as PIL's float "F"
mode does: the same filter, no fixed point and no rounding.

TensorFlow-only: import lazily.
"""

import math
from dataclasses import dataclass

import tensorflow as tf

# timm's defaults for a model without a pretrained config (`timm.data.resolve_data_config`)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"
DEFAULT_INTERPOLATION = "bicubic"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bicubic", "bilinear")

_PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits for the result, 2 for overflow


# --- decoding, as PIL's Image.open(f).convert("RGB") ----------------------------------------
def _le_int(data, offset, length):
    """Little-endian unsigned int of `length` bytes at `offset` of a scalar string."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8), tf.int32)
    return tf.reduce_sum(raw * tf.constant([1, 256, 65536, 16777216][:length], tf.int32))


def _decode_png(data, head):
    # IHDR: bit depth at byte 24, colour type at byte 25 (0 = grey)
    depth_and_type = tf.io.decode_raw(tf.strings.substr(head, 24, 2), tf.uint8)
    grey16 = tf.logical_and(tf.equal(depth_and_type[0], 16), tf.equal(depth_and_type[1], 0))

    def grey_16bit():  # PIL: mode "I;16"; convert("RGB") clips to 255 instead of scaling
        g = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
        g = tf.cast(tf.minimum(g, 255), tf.uint8)
        return tf.tile(g, (1, 1, 3))

    # everything else: libpng expands palette/grey, strips alpha and keeps the high byte of
    # 16-bit samples, as PIL's "RGB;16B"/"RGBA;16B" raw modes do
    return tf.cond(grey16, grey_16bit, lambda: tf.io.decode_png(data, channels=3))


def decode(data):
    """Encoded image (scalar string) -> uint8 `(h, w, 3)` RGB, as PIL's
    `Image.open(f).convert("RGB")`. Bytes that are no image raise `InvalidArgumentError`."""
    # padded, so the header reads below never run past the end of a short file
    head = tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * 32)]), 0, 32)
    is_png = tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    is_gif = tf.equal(tf.strings.substr(head, 0, 3), b"GIF")
    padded = tf.strings.join([data, tf.constant(b"\0" * 1040)])  # for BMP's colour table
    image = tf.case(
        [
            (is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")),
            (is_png, lambda: _decode_png(data, head)),
            (is_bmp, lambda: _decode_bmp(data, padded)),
            (is_gif, lambda: tf.io.decode_gif(data)[0]),
        ],
        # anything else: decode_image names what it could not read (InvalidArgumentError)
        default=lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return tf.ensure_shape(image, (None, None, 3))


def _decode_bmp(data, padded):
    # decode_bmp reads `data`; the colour table is read from `padded` (never short)
    image = tf.io.decode_bmp(data, channels=0)

    def palette():
        header_size = _le_int(padded, 14, 4)
        table = tf.io.decode_raw(tf.strings.substr(padded, 14 + header_size, 1024), tf.uint8)
        table = tf.reshape(table, (256, 4))[:, 2::-1]  # BGRX -> (256, 3) RGB
        return tf.gather(table, tf.cast(image[..., 0], tf.int32))

    channels = tf.shape(image)[-1]
    return tf.cond(tf.equal(channels, 1), palette, lambda: image[..., :3])


# --- Pillow's resampling (Resample.c) ----------------------------------------------------------
def _bicubic(x):  # a = -0.5, as Resample.c
    x = tf.abs(x)
    near = ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _bilinear(x):
    x = tf.abs(x)
    return tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


def _coefficients(in_size, out_size, interpolation):
    """`precompute_coeffs` of Resample.c for one axis, in float64 as there.

    Returns `(first, weights)`: int32 `(out,)` the first input index of each output, and
    float64 `(out, ksize)` the normalised weights of inputs `first .. first + ksize - 1`
    (zero past the window's end)."""
    filt, base_support = _FILTERS[interpolation]
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)  # widen the filter when downscaling
    support = base_support * filterscale
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # (out,)
    # C's (int) casts truncate toward zero, as tf.cast does
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin  # window length
    x = tf.range(ksize)  # (ksize,)
    arg = (tf.cast(x[None, :] + xmin[:, None], tf.float64) - center[:, None] + 0.5) * (
        1.0 / filterscale
    )  # (out, ksize)
    w = tf.where(x[None, :] < xmax[:, None], filt(arg), tf.zeros_like(arg))
    ww = tf.math.cumsum(w, axis=1)[:, -1:]  # left-to-right, as the C loop adds them
    w = tf.where(tf.equal(ww, 0.0), w, w / tf.where(tf.equal(ww, 0.0), tf.ones_like(ww), ww))
    return xmin, w


def _fixed_point(w):
    """`normalize_coeffs_8bpc`: weights -> int32 in units of 2**-22, rounded half away from 0."""
    scaled = w * float(1 << _PRECISION_BITS)
    return tf.cast(tf.where(scaled < 0, scaled - 0.5, scaled + 0.5), tf.int32)


# Above this many gathered elements (out x ksize x w x c), accumulate window tap by tap.
_MAX_GATHER = 1 << 24


def _resample_rows(image, out_size, interpolation, integer):
    """One vertical pass of Resample.c over `(h, w, c)` -> `(out, w, c)`.

    integer (uint8 pixels, whatever the dtype holding them): int32 fixed-point sums,
    `(sum + 2**21) >> 22` clipped to 0..255 (`clip8`), returned in `image`'s dtype.
    Otherwise: double-precision weights, no rounding (Pillow's float "F" mode), float32."""
    in_size = tf.shape(image)[0]
    first, w = _coefficients(in_size, out_size, interpolation)
    ksize = tf.shape(w)[1]
    source = tf.cast(image, tf.int32 if integer else tf.float32)
    weights = _fixed_point(w) if integer else tf.cast(w, tf.float32)  # (out, ksize)
    # input row `first + j` of every output (clamped: its weight is 0 past the window)
    rows = tf.minimum(first[:, None] + tf.range(ksize)[None, :], in_size - 1)  # (out, ksize)

    def all_taps():  # one gather of whole rows: (out, ksize, w, c)
        return tf.reduce_sum(tf.gather(source, rows) * weights[:, :, None, None], axis=1)

    def tap_by_tap():  # large downscales: ksize gathers of (out, w, c), little memory
        acc = tf.zeros(tf.concat([[out_size], tf.shape(image)[1:]], 0), source.dtype)

        def step(j, acc):
            return j + 1, acc + tf.gather(source, rows[:, j]) * weights[:, j, None, None]

        return tf.while_loop(lambda j, _: j < ksize, step, (tf.constant(0), acc))[1]

    gathered = tf.cast(out_size * ksize, tf.int64) * tf.cast(tf.size(image), tf.int64)
    gathered = gathered // tf.cast(tf.maximum(in_size, 1), tf.int64)
    acc = tf.cond(gathered <= _MAX_GATHER, all_taps, tap_by_tap)
    if not integer:
        return acc
    acc = tf.bitwise.right_shift(acc + (1 << (_PRECISION_BITS - 1)), _PRECISION_BITS)
    return tf.cast(tf.clip_by_value(acc, 0, 255), image.dtype)


def _resample_axis(image, out_size, axis, interpolation, integer):
    """One pass along `axis` (0: vertical, 1: horizontal) of a float32 image; the horizontal
    one on the transposed image (gathering whole rows is several times faster than gathering
    columns)."""
    if axis == 0:
        return _resample_rows(image, out_size, interpolation, integer)
    out = _resample_rows(tf.transpose(image, (1, 0, 2)), out_size, interpolation, integer)
    return tf.transpose(out, (1, 0, 2))


def resize(image, size, interpolation="bicubic"):
    """`Image.resize((W, H), resample)` of Pillow on a `(h, w, 3)` uint8 (or float) image;
    `size` = `(H, W)` (ints or int32 scalars). A pass whose size does not change is skipped,
    and the vertical pass runs first when the height shrinks more than twice as much as the
    width, as in `ImagingResampleInner` (the passes round in between, so the order counts)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    out_h, out_w = (tf.cast(s, tf.int32) for s in size)
    in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]
    # uint8 pixels travel as float32 (exact) with `integer` set: oneDNN's uint8 kernels log an
    # error line on CPUs without AVX-512, and the passes round to whole levels anyway
    integer = image.dtype == tf.uint8
    x = tf.cast(image, tf.float32)

    def horizontal(x):
        return tf.cond(
            tf.equal(tf.shape(x)[1], out_w),
            lambda: x,
            lambda: _resample_axis(x, out_w, 1, interpolation, integer),
        )

    def vertical(x):
        return tf.cond(
            tf.equal(tf.shape(x)[0], out_h),
            lambda: x,
            lambda: _resample_axis(x, out_h, 0, interpolation, integer),
        )

    vertical_first = tf.logical_and(in_h - out_h > 0, in_h - out_h > (in_w - out_w) * 2)
    out = tf.cond(vertical_first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    out = tf.cast(out, image.dtype) if integer else out
    return tf.ensure_shape(out, (None, None, image.shape[-1]))


# --- crops ------------------------------------------------------------------------------------
def center_crop(image, size, fill=(0, 0, 0)):
    """torchvision's `CenterCrop` (timm's `CenterCropOrPad` with `fill`): pad to at least
    `size` = `(H, W)` (the odd pixel right/bottom), then crop at `round((h - H) / 2)` (Python's
    round, half to even, as `tf.round`)."""
    crop_h, crop_w = size
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    pad_h, pad_w = tf.maximum(crop_h - h, 0), tf.maximum(crop_w - w, 0)
    pads = [[pad_h // 2, (pad_h + 1) // 2], [pad_w // 2, (pad_w + 1) // 2], [0, 0]]
    fill = tf.constant(fill, image.dtype if image.dtype != tf.uint8 else tf.int32)

    def padded():
        if image.dtype == tf.uint8:  # pad (image - fill) with 0: per-channel fill colour
            x = tf.pad(tf.cast(image, tf.int32) - fill, pads) + fill
            return tf.cast(x, tf.uint8)
        return tf.pad(image - fill, pads) + fill

    image = tf.cond(tf.logical_or(pad_h > 0, pad_w > 0), padded, lambda: image)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top = tf.cast(tf.round(tf.cast(h - crop_h, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(w - crop_w, tf.float64) / 2.0), tf.int32)
    return image[top : top + crop_h, left : left + crop_w]


def _shorter_side_size(h, w, target):
    """torchvision `Resize(int)`: the shorter side to `target`, the longer to
    `int(target * long / short)`."""
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.cast(target * long, tf.float64) / tf.cast(short, tf.float64), tf.int32)
    target = tf.constant(target, tf.int32)
    # (H, W): a portrait image (w <= h) gets width `target`
    return tf.cond(w <= h, lambda: (new_long, target), lambda: (target, new_long))


def _keep_ratio_size(h, w, target, longest):
    """timm's `ResizeKeepRatio.get_params`: both sides divided by the ratio of the shorter
    (`longest=0`) or longer (`longest=1`) side to its target, rounded half to even."""
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    ratio_h, ratio_w = hf / target[0], wf / target[1]
    hi, lo = tf.maximum(ratio_h, ratio_w), tf.minimum(ratio_h, ratio_w)
    ratio = hi * float(longest) + lo * (1.0 - float(longest))
    return tf.cast(tf.round(hf / ratio), tf.int32), tf.cast(tf.round(wf / ratio), tf.int32)


# --- the transform --------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalTransform:
    """timm's `transforms_imagenet_eval` (up to `ToTensor`), in TensorFlow ops.

    Args:
        input_size: `(H, W)` of the output (an int: square).
        crop_pct: the crop's share of the resized image (`floor(size / crop_pct)` is resized).
        crop_mode: "center", "squash" or "border" (see the module doc).
        interpolation: "bicubic" or "bilinear" (Pillow's filters).
        mean: the checkpoint's mean; "border" pads with `round(255 * mean)`, as timm.
    """

    input_size: tuple = (224, 224)
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = DEFAULT_CROP_MODE
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple = IMAGENET_DEFAULT_MEAN

    def __post_init__(self):
        size = self.input_size
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"`input_size` must be (H, W) of positive ints, got {self.input_size!r}."
            )
        object.__setattr__(self, "input_size", size)
        crop_pct = self.crop_pct if self.crop_pct else DEFAULT_CROP_PCT  # timm: `or 0.875`
        if not 0.0 < float(crop_pct) <= 4.0:
            raise ValueError(f"`crop_pct` must be in (0, 4], got {self.crop_pct!r}.")
        object.__setattr__(self, "crop_pct", float(crop_pct))
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"`crop_mode` must be one of {CROP_MODES}, got {self.crop_mode!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {INTERPOLATIONS}, got {self.interpolation!r}."
            )
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))

    @classmethod
    def from_cfg(cls, cfg, input_size=None):
        """From a `PretrainedCfg` (or None: timm's defaults); `input_size` overrides the cfg's
        (a model built at another `image_size` is fed at its own size)."""
        if cfg is None:
            return cls(input_size or (224, 224))
        return cls(
            input_size or tuple(cfg.input_size),
            crop_pct=cfg.crop_pct,
            crop_mode=cfg.crop_mode or DEFAULT_CROP_MODE,
            interpolation=cfg.interpolation or DEFAULT_INTERPOLATION,
            mean=cfg.mean,
        )

    @classmethod
    def from_model(cls, model):
        """The transform timm's `resolve_data_config({}, model=m)` gives: the model's
        checkpoint config (`model.pretrained_cfg`) at the model's input size; timm's defaults
        (0.875, center, bicubic) for a model without one."""
        shape = tuple(model.inputs[0].shape)
        size = (int(shape[1]), int(shape[2])) if None not in shape[1:3] else None
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is None:
            mean = tuple(getattr(model, "mean", None) or IMAGENET_DEFAULT_MEAN)
            return cls(size or (224, 224), mean=mean)
        return cls.from_cfg(cfg, size)

    @property
    def scale_size(self):
        """timm's `scale_size`: `floor(size / crop_pct)` per side."""
        return tuple(math.floor(s / self.crop_pct) for s in self.input_size)

    @property
    def fill(self):
        return tuple(round(255 * m) for m in self.mean)

    def __call__(self, image):
        """`(h, w, 3)` uint8 (exact PIL) or float (PIL "F" mode) -> `(H, W, 3)` same dtype."""
        image = tf.convert_to_tensor(image)
        if image.dtype not in (tf.uint8, tf.float32):
            image = tf.cast(image, tf.float32)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        sh, sw = self.scale_size
        if self.crop_mode == "squash":
            size, fill = (sh, sw), (0, 0, 0)
        elif self.crop_mode == "border":
            size, fill = _keep_ratio_size(h, w, (sh, sw), longest=1.0), self.fill
        elif sh == sw:
            size, fill = _shorter_side_size(h, w, sh), (0, 0, 0)
        else:  # timm: ResizeKeepRatio for a non-square target
            size, fill = _keep_ratio_size(h, w, (sh, sw), longest=0.0), (0, 0, 0)
        image = resize(image, size, self.interpolation)
        out = center_crop(image, self.input_size, fill)
        return tf.ensure_shape(out, (*self.input_size, 3))

    def from_bytes(self, data):
        """Encoded image (scalar string) -> uint8 `(H, W, 3)`."""
        return self(decode(data))

    def batch_from_bytes(self, image_bytes):
        """string `[N]` -> float32 `[N, H, W, 3]` in 0..255 (what the models take)."""
        return tf.map_fn(
            lambda d: tf.cast(self.from_bytes(d), tf.float32),
            image_bytes,
            fn_output_signature=tf.TensorSpec((*self.input_size, 3), tf.float32),
        )


# --- files that do not decode ---------------------------------------------------------------
class UnreadableImageError(ValueError):
    """A file that is not a readable JPEG, PNG, BMP or GIF; the message names it."""

    def __init__(self, path):
        super().__init__(
            f"{path}: not a readable JPEG, PNG, BMP or GIF image (corrupt or truncated?)"
        )
        self.path = path


def first_undecodable(paths):
    """The first of `paths` that `decode` cannot read, or None. (A batch or tf.data pipeline
    that fails reports an op error naming no file: this finds it.)"""
    fn = tf.function(decode)
    for path in paths:
        try:
            fn(tf.io.read_file(path))
        except tf.errors.OpError:
            return path
    return None
