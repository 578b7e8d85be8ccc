import keras

from keras_vit.layers.trace_context import compiling_with_xla, onednn_graph, tracing_standard_ops


@keras.saving.register_keras_serializable(package="keras_vit")
class ShiftAddDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` computed as `k * k` shifted multiply-adds when compiled by XLA.

    Same weights, layout and outputs as the Keras layer (so checkpoints map as for it). Why:
    XLA's CPU depthwise convolution is about 100x slower than TensorFlow's oneDNN kernel
    (8 x 128 x 128 x 64, 3x3: 790 ms against 8 ms), while the shifted products fuse into one
    elementwise loop; with it MobileViT-XXS runs fully under XLA at 1.25x its graph-mode speed.
    Outside XLA (TF graph mode, and so TFLite/SavedModel exports, which keep the fused
    DEPTHWISE_CONV_2D op phones are fast at) it is the ordinary convolution, as it is for
    dilation, depth multipliers, channels-first and "same" padding with strides.
    """

    def _shift_add_supported(self):
        return (
            self.data_format == "channels_last"
            and self.depth_multiplier == 1
            and tuple(self.dilation_rate) == (1, 1)
            and (self.padding == "valid" or tuple(self.strides) == (1, 1))
        )

    def call(self, x):
        y = self.convolve(x, self.kernel, self.bias if self.use_bias else None)
        return y if self.activation is None else self.activation(y)

    def convolve(self, x, kernel, bias=None):
        """This layer's convolution of `x` (B, H, W, C) with `kernel` (kh, kw, C, 1) plus `bias`
        (C,) or None, no activation: what `ConvNormAct` calls with BatchNorm folded in."""
        static = x.shape[1] is not None and x.shape[2] is not None  # the slices need it
        if static and self._shift_add_supported() and compiling_with_xla():
            if self.padding == "same":  # stride 1, odd or even kernel: Keras pads (k-1)//2 first
                ph, pw = self.kernel_size[0] - 1, self.kernel_size[1] - 1
                pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
                x = keras.ops.pad(x, pads)
            y = self.shift_add(x, kernel)
        else:
            y = keras.ops.depthwise_conv(
                x,
                keras.ops.cast(kernel, x.dtype),
                strides=self.strides,
                padding=self.padding,
                data_format=self.data_format,
                dilation_rate=self.dilation_rate,
            )
        if bias is None:
            return y
        channel_axis = -1 if self.data_format == "channels_last" else 1
        shape = [1] * len(y.shape)
        shape[channel_axis] = -1
        return y + keras.ops.reshape(keras.ops.cast(bias, y.dtype), shape)

    def shift_add(self, x, kernel=None):
        """The "valid" convolution of `x` (static H, W; zero padding, if any, already in it)
        with `kernel` (the layer's by default), as `k * k` shifted multiply-adds, whatever the
        layer's `padding`; no bias, no activation."""
        kernel = self.kernel if kernel is None else kernel
        kh, kw = self.kernel_size
        sh, sw = self.strides
        height, width = x.shape[1], x.shape[2]
        out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        kernel = keras.ops.cast(kernel[..., 0], x.dtype)  # (kh, kw, C)
        y = None
        for i in range(kh):
            for j in range(kw):
                # (B, out_h, out_w, C): the input pixels that tap (i, j) of the kernel sees
                tap = x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
                y = tap * kernel[i, j] if y is None else y + tap * kernel[i, j]
        return y


def grouped_form_here(x):
    """`grouped_depthwise_conv` applies: TF's oneDNN CPU graph, not traced for a converter
    (TFLite's and ONNX's keep the depthwise op), float32 / bfloat16."""
    if not onednn_graph() or tracing_standard_ops():
        return False
    return keras.backend.standardize_dtype(x.dtype) in ("float32", "bfloat16")


def grouped_depthwise_conv(x, kernel, strides, pad):
    """The depthwise conv of `x` (B, H, W, C) with `kernel` (k, k, C, 1), zero padding `pad`
    on each side of H and W ('same' for stride 1 and pad (k - 1) / 2), as a grouped `Conv2D`
    (one group per channel, filter (k, k, 1, C)). Same products and sums; why: on oneDNN's
    graph grappler fuses BiasAdd + SiLU into a `Conv2D` (`_FusedConv2D`), not into a
    `DepthwiseConv2dNative` (BiasAdd only, SiLU a separate pass over the map), and takes the
    explicit padding into the op (a strided conv otherwise pads in a separate pass). oneDNN
    runs both as its depthwise kernel (`brdgmm_dw`). MobileViT-S f32 (8 x 256^2): Pad + Swish
    were 9 and 11 ms of 266 per batch."""
    import tensorflow as tf

    kh, kw, channels, _ = kernel.shape
    filters = tf.reshape(kernel, (kh, kw, 1, channels))
    padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    return tf.nn.conv2d(x, filters, strides, padding)
