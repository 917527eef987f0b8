"""How zoo's layers are computed fast on XLA (the model files say what the networks are).

On XLA:CPU zoo computes standard layers by hand-made formulations (the rewrites below), each
measured faster there; on other platforms (GPU, TPU) the layers run XLA's native ops, since no
measurement there says the rewrites help. `REWRITES` lists every rewrite and the platforms it
applies on; `per_platform` makes the choice when the program is lowered for its platform
(`jax.lax.platform_dependent`), so one traced function is right on every backend.

- `Conv` / `strided_conv`: PyTorch's Conv2d; a strided conv runs as space-to-depth + a
  stride-1 conv, so its input gradient is never an input-dilated conv (slow on XLA:CPU).
- `ConvTranspose` / `conv_transpose`: PyTorch's ConvTranspose2d without input-dilated convs:
  per layer shape (`transpose_method`) one small conv per output phase, or a matmul +
  overlap-add for few output channels, or an einsum for a 1x1 input, or one matmul with a
  dense weight for a small stride-1 input.
- A conv whose window covers its whole (padded) input is an einsum (a dense layer).
- `max_pool_2x2`: reshape + max instead of `reduce_window` (faster on XLA:CPU).
- `LSTMLayer` / `lstm_layer` / `lstm_recurrence` / `lstm_cell`: an LSTM whose recurrence has a
  hand-written backward pass (fewer, larger matmuls than autodiff through `lax.scan`).

Every layer takes flax's `dtype` (computation; None = inferred from inputs and params) and
`param_dtype` (storage). The measurements behind these choices: bench/README.md, "Where the
CPU time goes".
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

Dtype = Any  # a jnp dtype, e.g. jnp.bfloat16


# --- which platforms get the rewrites --------------------------------------------------------

# Each rewrite and the platforms (jax.lax.platform_dependent's names: "cpu", "cuda", "rocm",
# "tpu") it applies on; everywhere else the layer runs the native op named here. Each rewrite
# was measured on XLA:CPU only: add a platform once a measurement there shows it is faster.
REWRITES = {
    "conv": ("cpu",),  # Conv: padding + space-to-depth + im2col/einsum, not lax.conv_general_dilated
    "conv_transpose": ("cpu",),  # ConvTranspose: `conv_transpose`'s methods, not lax.conv_transpose
    "max_pool": ("cpu",),  # max_pool_2x2: reshape + max and a custom gradient, not nn.max_pool
    "lstm": ("cpu",),  # LSTMLayer: `lstm_layer`'s hand-written backward, not autodiff through lax.scan
}
PATHS = ("rewrite", "native")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("zoo_layers_forced_path", default=None)


@contextlib.contextmanager
def forced(path: str):
    """Within the block, layers traced take `path` ("rewrite" or "native") on every platform.

    For tests and benchmarks comparing the two, and for tracers that cannot take a
    platform-dependent program (jax2onnx). It acts at trace time: a function jitted before
    keeps the program it was traced with.
    """
    if path not in PATHS:
        raise ValueError(f"layers.forced: path must be one of {PATHS}, got {path!r}")
    token = _forced.set(path)
    try:
        yield
    finally:
        _forced.reset(token)


def per_platform(name: str, rewrite, native, *args):
    """`rewrite(*args)` on the platforms REWRITES[name] lists, `native(*args)` elsewhere.

    Chosen when the program is lowered (only the chosen branch is compiled), unless `forced`.
    """
    path = _forced.get()
    if path is not None:
        return (rewrite if path == "rewrite" else native)(*args)
    return jax.lax.platform_dependent(*args, **{p: rewrite for p in REWRITES[name]}, default=native)


# --- convolutions ----------------------------------------------------------------------------


def _phase_taps(k: int, s: int, p: int, a: int) -> list[tuple[int, int]]:
    """(input offset o, kernel tap) pairs feeding output index s*m + a from input m + o.

    From PyTorch's definition y = s*i - p + tap: for y = s*m + a, tap = s*(m - i) + a + p.
    """
    return [(-d, a + p + s * d) for d in range(-k, k + 1) if 0 <= a + p + s * d < k]


# Input channels up to which a stride-1 conv runs as im2col + one matmul: a win for the thin
# image layers (1 channel, or 4 after space-to-depth), a loss for wide ones (the A/B figures are
# in bench/README.md).
IM2COL_MAX_CHANNELS = 4


def conv2d(x, kernel, stride: int = 1, padding=((0, 0), (0, 0))):
    """Plain cross-correlation, NHWC x (B, H, W, Cin), kernel (kh, kw, Cin, Cout).

    The padding is a jnp.pad before an unpadded conv: XLA:CPU computes the gradients of a
    padded conv up to ~2x more slowly (bench/README.md, "Where the CPU time goes"). Up to
    IM2COL_MAX_CHANNELS input channels the stride-1 conv is im2col + a matmul.
    """
    (top, bottom), (left, right) = padding
    if top or bottom or left or right:
        x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, cin, cout = kernel.shape
    if stride == 1 and cin <= IM2COL_MAX_CHANNELS:
        # few input channels: (B*H'*W', kh*kw*Cin) patches @ (kh*kw*Cin, Cout) beats XLA:CPU's conv
        b, h, w, _ = x.shape
        ho, wo = h - kh + 1, w - kw + 1
        patches = jnp.concatenate([x[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)], -1)  # (B, ho, wo, k*k*Cin)
        return (patches.reshape(-1, kh * kw * cin) @ kernel.reshape(-1, cout)).reshape(b, ho, wo, cout)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def strided_conv(x, kernel, stride: int, padding: int):
    """Stride-s conv (PyTorch Conv2d semantics) as space-to-depth + a stride-1 conv.

    Same result and parameters as `conv2d(x, kernel, stride, ((p, p), (p, p)))`, but the
    input gradient is an ordinary convolution instead of an input-dilated one (slow on
    XLA:CPU). Tap ky = s*q + a of the kernel becomes tap q over input channel group a.
    """
    k, s, p = kernel.shape[0], stride, padding
    if s == 1:
        return conv2d(x, kernel, 1, ((p, p), (p, p)))
    b, h, w, c = x.shape
    cout = kernel.shape[3]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    kq = -(-k // s)  # taps per axis after space-to-depth
    rows, cols = (oh + kq - 1) * s, (ow + kq - 1) * s
    x = jnp.pad(x, ((0, 0), (p, max(0, rows - h - p)), (p, max(0, cols - w - p)), (0, 0)))[:, :rows, :cols]
    x = x.reshape(b, rows // s, s, cols // s, s, c).transpose(0, 1, 3, 2, 4, 5)  # (B, R, C', s, s, Cin)
    x = x.reshape(b, rows // s, cols // s, s * s * c)
    kern = jnp.pad(kernel, ((0, kq * s - k), (0, kq * s - k), (0, 0), (0, 0)))
    kern = kern.reshape(kq, s, kq, s, c, cout).transpose(0, 2, 1, 3, 4, 5).reshape(kq, kq, s * s * c, cout)
    return conv2d(x, kern)  # (B, oh, ow, Cout)


def _conv_rewrite(x, kernel, stride: int, padding: int):
    p, k = padding, kernel.shape[0]
    if x.shape[1] + 2 * p == k and x.shape[2] + 2 * p == k:  # one output pixel: a dense layer
        return jnp.einsum("bhwi,hwio->bo", jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), kernel)[:, None, None, :]
    return strided_conv(x, kernel, stride, p)


def _conv_native(x, kernel, stride: int, padding: int):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """PyTorch-style Conv2d in NHWC with flax.linen.Conv's parameters (`kernel` (k, k, in, out),
    `bias`) and initialization. Where REWRITES["conv"] applies, strided convs go through
    `strided_conv` and a window covering the whole input is an einsum (XLA:CPU runs that as a
    conv ~5x slower, bench/README.md); elsewhere `lax.conv_general_dilated`."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        shape = dict(stride=self.stride, padding=self.padding)
        y = per_platform("conv", partial(_conv_rewrite, **shape), partial(_conv_native, **shape), x, kernel)
        return y if bias is None else y + bias


# Output channels up to which a strided transposed conv runs as matmul + overlap-add
# ("col2im"); wider ones run as one small conv per output phase ("subpixel"). Measured on the
# 2-core CPU, fwd+bwd at batch 128 (bench/README.md, `cpu_probe.py transpose`): col2im wins
# at 1, 4 and 8 output channels, subpixel at 16 and more.
COL2IM_MAX_FEATURES = 8
# A stride-1 transposed conv whose input has no more pixels than its kernel has taps runs as
# ONE matmul with a dense (H*W*Cin, OH*OW*Cout) weight ("dense"): the same FLOPs as the conv
# with the flipped kernel over the zero-padded input, in one large matmul, which XLA:CPU runs
# faster than the conv for the autoencoder's 4->7 layer (`cpu_probe.py transpose`, bench/README.md).
# Up to this many elements in the dense weight (4M floats, 16 MB).
DENSE_MAX_ELEMENTS = 1 << 22
TRANSPOSE_METHODS = ("einsum", "conv", "subpixel", "col2im", "dense")


def transpose_method(in_hw: tuple[int, int], features: int, kernel_size: int, stride: int, padding: int,
                     in_features: int | None = None) -> str:
    """Which formulation `conv_transpose` uses for a layer of this shape.

    "einsum" for a 1x1 input without padding (a dense layer to k*k*features); at stride 1
    "dense" (one matmul) for an input with at most k*k pixels whose dense weight (given
    `in_features`) has at most `DENSE_MAX_ELEMENTS` elements, "conv" (a conv with the flipped
    kernel) otherwise; above stride 1 "col2im" up to COL2IM_MAX_FEATURES
    output channels and "subpixel" above. No formulation is an input-dilated conv (XLA:CPU
    lowers those to a slow generic loop).
    """
    if tuple(in_hw) == (1, 1) and padding == 0:
        return "einsum"
    if stride == 1:
        small = in_hw[0] * in_hw[1] <= kernel_size * kernel_size
        fits = in_features is None or _dense_weight_size(in_hw, in_features, features, kernel_size, 1) <= DENSE_MAX_ELEMENTS
        return "dense" if small and fits else "conv"
    return "col2im" if features <= COL2IM_MAX_FEATURES else "subpixel"


def _transpose_out(size: int, k: int, s: int, p: int) -> int:
    return (size - 1) * s - 2 * p + k  # PyTorch's ConvTranspose2d output size (no output_padding)


def _conv_transpose_subpixel(x, kernel, s: int, p: int):
    """Sub-pixel form: output phase (a, b) (rows s*m + a, cols s*n + b) is an ordinary conv of
    the input with just that phase's taps, so no zero tap is multiplied; the s*s phase outputs
    are then interleaved (depth-to-space)."""
    k = kernel.shape[0]
    b, h, w, _ = x.shape
    cout = kernel.shape[2]
    out_h, out_w = _transpose_out(h, k, s, p), _transpose_out(w, k, s, p)
    m_h, m_w = -(-out_h // s), -(-out_w // s)  # rows/cols of each phase
    taps = [sorted(_phase_taps(k, s, p, a)) for a in range(s)]  # per phase: (input offset, tap), offsets ascending
    offsets = [o for t in taps for o, _ in t]
    lo, hi = min(offsets), max(offsets)
    pad_lo = max(0, -lo)
    xp = jnp.pad(x, ((0, 0), (pad_lo, max(0, m_h - 1 + hi - (h - 1))), (pad_lo, max(0, m_w - 1 + hi - (w - 1))), (0, 0)))
    kt = jnp.swapaxes(kernel, 2, 3)  # (k, k, Cin, Cout)

    def phase(th, tw):  # (B, m_h, m_w, Cout): output rows s*m + a read input rows m + o, o in th
        if not th or not tw:  # kernel_size < stride: this phase gets no tap
            return jnp.zeros((b, m_h, m_w, cout), jnp.result_type(x, kernel))
        kern = kt[np.array([t for _, t in th])][:, np.array([t for _, t in tw])]  # (len th, len tw, Cin, Cout)
        r0, c0 = pad_lo + th[0][0], pad_lo + tw[0][0]
        return conv2d(xp[:, r0 : r0 + m_h + len(th) - 1, c0 : c0 + m_w + len(tw) - 1], kern)

    y = jnp.stack([jnp.stack([phase(th, tw) for tw in taps], 3) for th in taps], 2)  # (B, m_h, s, m_w, s, Cout)
    return y.reshape(b, m_h * s, m_w * s, cout)[:, :out_h, :out_w]


def _overlap_add_fwd(cols, s: int):
    """cols (B, H, W, kq, s, kq, s, C), the contribution of input (i, j) at tap (s*qy + a,
    s*qx + c) -> their sum at output (s*(i + qy) + a, s*(j + qx) + c): (B, (H+kq-1)*s, (W+kq-1)*s, C)."""
    b, h, w, kq, _, _, _, c = cols.shape
    full = None
    for qy in range(kq):
        for qx in range(kq):
            z = cols[:, :, :, qy, :, qx].transpose(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)  # depth-to-space
            z = jnp.pad(z, ((0, 0), (qy * s, (kq - 1 - qy) * s), (qx * s, (kq - 1 - qx) * s), (0, 0)))
            full = z if full is None else full + z
    return full


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def overlap_add(cols, s: int):
    """col2im: sums each input pixel's k*k tap outputs into the upsampled image (see
    `_overlap_add_fwd`). Its gradient is the matching im2col, a stack of strided slices
    (autodiff would build it from kq*kq zero-padded copies of the whole cols tensor)."""
    return _overlap_add_fwd(cols, s)


def _overlap_add_vjp_fwd(cols, s):
    return _overlap_add_fwd(cols, s), cols.shape


def _overlap_add_vjp_bwd(s, shape, g):
    b, h, w, kq, _, _, _, c = shape
    rows = []
    for qy in range(kq):
        row = [g[:, qy * s : (qy + h) * s, qx * s : (qx + w) * s].reshape(b, h, s, w, s, c) for qx in range(kq)]
        rows.append(jnp.stack(row, 4).transpose(0, 1, 3, 2, 4, 5, 6))  # (B, H, W, s, kq, s, C)
    return (jnp.stack(rows, 3),)  # (B, H, W, kq, s, kq, s, C)


overlap_add.defvjp(_overlap_add_vjp_fwd, _overlap_add_vjp_bwd)


def _conv_transpose_col2im(x, kernel, s: int, p: int):
    """Matmul + overlap-add (PyTorch's CPU formulation): every input pixel times the whole
    kernel, (B*H*W, Cin) @ (Cin, k*k*Cout), then `overlap_add`. Cheap when Cout is small."""
    k = kernel.shape[0]
    b, h, w, _ = x.shape
    cout = kernel.shape[2]
    kq = -(-k // s)
    kern = jnp.pad(kernel, ((0, kq * s - k), (0, kq * s - k), (0, 0), (0, 0)))  # taps to a multiple of s
    cols = jnp.einsum("bhwi,yxoi->bhwyxo", x, kern).reshape(b, h, w, kq, s, kq, s, cout)
    full = overlap_add(cols, s)
    return full[:, p : p + _transpose_out(h, k, s, p), p : p + _transpose_out(w, k, s, p)]


def _dense_weight_size(in_hw, in_features: int, features: int, k: int, s: int) -> int:
    """Elements of `_conv_transpose_dense`'s (H*W*Cin, OH*OW*Cout) weight, before cropping."""
    h, w = in_hw
    return h * w * in_features * ((h - 1) * s + k) * ((w - 1) * s + k) * features


def _conv_transpose_dense(x, kernel, s: int, p: int):
    """One matmul with a dense weight: input pixel (i, j)'s row holds the kernel placed at
    output (s*i, s*j) of the full (H-1)*s + k output, zeros elsewhere, built from H*W padded
    copies of the kernel (so its gradient is slices, not a scatter); the padding is cropped."""
    k = kernel.shape[0]
    b, h, w, cin = x.shape
    cout = kernel.shape[2]
    full_h, full_w = (h - 1) * s + k, (w - 1) * s + k
    size = _dense_weight_size((h, w), cin, cout, k, s)
    if size > DENSE_MAX_ELEMENTS:
        raise ValueError(f"conv_transpose: method 'dense' needs a weight of at most DENSE_MAX_ELEMENTS = "
                         f"{DENSE_MAX_ELEMENTS} elements, this layer's has {size}")
    kt = jnp.transpose(kernel, (3, 0, 1, 2))  # (Cin, k, k, Cout)
    rows = [jnp.pad(kt, ((0, 0), (s * i, full_h - k - s * i), (s * j, full_w - k - s * j), (0, 0)))
            for i in range(h) for j in range(w)]  # each (Cin, full_h, full_w, Cout)
    weight = jnp.stack(rows).reshape(h * w * cin, full_h * full_w * cout)
    y = (x.reshape(b, h * w * cin) @ weight).reshape(b, full_h, full_w, cout)
    return y[:, p : full_h - p, p : full_w - p]


def conv_transpose(x, kernel, stride: int, padding: int, method: str | None = None):
    """PyTorch-semantics transposed conv. x: (B, H, W, Cin); kernel: (k, k, Cout, Cin).

    method: one of TRANSPOSE_METHODS, or None for `transpose_method`'s choice for this shape.
    Every method computes the same function.
    """
    k, s, p = kernel.shape[0], stride, padding
    if method is None:
        method = transpose_method(x.shape[1:3], kernel.shape[2], k, s, p, in_features=x.shape[3])
    if method not in TRANSPOSE_METHODS:
        raise ValueError(f"conv_transpose: method must be one of {TRANSPOSE_METHODS} or None, got {method!r}")
    if method == "einsum":
        if x.shape[1:3] != (1, 1) or p != 0:
            raise ValueError(f"conv_transpose: method 'einsum' needs a 1x1 input and padding 0, got {x.shape[1:3]} and {p}")
        return jnp.einsum("bi,yxoi->byxo", x[:, 0, 0, :], kernel)  # (B, k, k, Cout)
    if method == "conv":
        # the stride-s version is input-dilated, slow on XLA:CPU: only stride 1 goes here
        if s != 1:
            raise ValueError(f"conv_transpose: method 'conv' needs stride 1, got {s}")
        flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (k, k, Cin, Cout)
        return conv2d(x, flipped, 1, ((k - 1 - p, k - 1 - p), (k - 1 - p, k - 1 - p)))
    if method == "col2im":
        return _conv_transpose_col2im(x, kernel, s, p)
    if method == "dense":
        return _conv_transpose_dense(x, kernel, s, p)
    return _conv_transpose_subpixel(x, kernel, s, p)


def _conv_transpose_native(x, kernel, stride: int, padding: int):
    q = kernel.shape[0] - 1 - padding  # PyTorch's padding p crops p from the full output
    return jax.lax.conv_transpose(x, kernel, (stride, stride), ((q, q), (q, q)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)


class ConvTranspose(nn.Module):
    """PyTorch-style ConvTranspose2d in NHWC; parameters `kernel` (k, k, out, in), `bias`.
    Computed by `conv_transpose` where REWRITES["conv_transpose"] applies, else `lax.conv_transpose`."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        # LeCun normal over the true fan-in k*k*in (flax and torch count k*k*out, which for a
        # 1-channel output saturates a sigmoid: the autoencoder stalled at MSE 0.11).
        init = nn.initializers.lecun_normal(in_axis=(0, 1, 3), out_axis=2)
        kernel = self.param("kernel", init, (k, k, self.features, x.shape[-1]), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        rewrite = partial(conv_transpose, stride=self.stride, padding=self.padding)
        native = partial(_conv_transpose_native, stride=self.stride, padding=self.padding)
        y = per_platform("conv_transpose", rewrite, native, x, kernel)
        return y if bias is None else y + bias


# --- pooling ---------------------------------------------------------------------------------


def _pool_windows(x):
    b, h, w, c = x.shape  # even sizes
    return x.reshape(b, h // 2, 2, w // 2, 2, c)  # (B, H/2, 2, W/2, 2, C): the 2x2 windows


def _pool_fwd(x):
    win = _pool_windows(x)
    m = win.max(axis=(2, 4))
    # the first maximum in the window, row-major (PyTorch's MaxPool2d index order)
    taps = [win[:, :, dy, :, dx, :] for dy in (0, 1) for dx in (0, 1)]
    first = jnp.where(taps[0] == m, 0, jnp.where(taps[1] == m, 1, jnp.where(taps[2] == m, 2, 3)))
    return m, first.astype(jnp.int8)


def _pool_bwd(first, g):
    b, hh, ww, c = g.shape
    position = 2 * jnp.arange(2, dtype=jnp.int8)[:, None, None, None] + jnp.arange(2, dtype=jnp.int8)[:, None]
    # (2, 1, 2, 1) window positions against the (B, H/2, 1, W/2, 1, C) winners: one fused pass
    dx = jnp.where(position == first[:, :, None, :, None, :], g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    return (dx.reshape(b, 2 * hh, 2 * ww, c),)


@jax.custom_vjp
def _max_pool_even(x):
    return _pool_windows(x).max(axis=(2, 4))  # the winners are found only when differentiated


_max_pool_even.defvjp(_pool_fwd, _pool_bwd)


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 (floors odd sizes, as PyTorch's MaxPool2d(2) does).

    Equals `nn.max_pool(x, (2, 2), (2, 2))`, forward and gradient: the gradient goes to the
    first maximum of each window (row-major, as PyTorch's MaxPool2d and XLA's
    select-and-scatter route it), not split among ties as autodiff through `max` would.
    Where REWRITES["max_pool"] applies, a reshape + max because XLA:CPU runs `reduce_window`
    pooling (and its gradient) much more slowly; the hand-written gradient keeps one int8
    winner index per window and writes the input gradient in one fused pass (autodiff through
    `max` took compare, count and divide passes over the full input, `bench/cpu_probe.py
    pool`). Elsewhere `nn.max_pool` (reduce_window).
    """
    return per_platform("max_pool", _max_pool_rewrite, _max_pool_native, x)


def _max_pool_rewrite(x):
    b, h, w, c = x.shape
    return _max_pool_even(x[:, : h - h % 2, : w - w % 2, :])


def _max_pool_native(x):
    return nn.max_pool(x, (2, 2), (2, 2))


# --- LSTM ------------------------------------------------------------------------------------


def _torch_uniform(hidden: int):
    # torch.nn.LSTM's default: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
    bound = 1.0 / math.sqrt(hidden)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _gates(z):
    """Pre-activations (..., 4H) -> activations i, f, g, o (PyTorch's order)."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def lstm_cell(wh, carry, gates_x):
    """One LSTM step. gates_x: (B, 4H) input projection incl. bias; carry: (h, c)."""
    h, c = carry
    i, f, g, o = _gates(gates_x + h @ wh)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c


def _scan_fwd(wh, gates_x, b, carry):
    """The recurrence over time-major projections gates_x (T, B, 4H) (+ bias b, or None).
    Returns (hs, final carry) and what the backward pass needs: cell states and activations.
    The bias is added inside the step's fused kernel, not in a separate pass over gates_x."""
    bias = 0.0 if b is None else b

    def step(carry, gx):  # lstm_cell, keeping the gate activations for the backward pass
        h, c = carry
        i, f, g, o = _gates(gx + bias + h @ wh)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c, jnp.concatenate([i, f, g, o], -1))

    final, (hs, cs, acts) = jax.lax.scan(step, carry, gates_x)
    return hs, final, cs, acts


def _scan_bwd(wh, c0, cs, acts, d_hs, d_final):
    """Backward through time with ONE matmul per step (dh_prev = dz @ wh^T).
    Returns dz (T, B, 4H), the gates' pre-activation gradients, and the initial carry's gradient."""
    d_h, d_c = d_final
    c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)
    wh_t = wh.T

    def step(carry, xs):
        dh_next, dc_next = carry
        dh_out, c, cp, a = xs
        i, f, g, o = jnp.split(a, 4, axis=-1)
        dh = dh_out + dh_next
        tc = jnp.tanh(c)
        dc = dc_next + dh * o * (1.0 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], -1)
        return (dz @ wh_t, dc * f), dz

    d_carry, dz = jax.lax.scan(step, (d_h, d_c), (d_hs, cs, c_prev, acts), reverse=True)
    return dz, d_carry


def _h_prev(h0, hs):
    return jnp.concatenate([h0[None], hs[:-1]], 0)  # (T, B, H): the hidden state each step reads


def _recurrence_fwd(wh, gates_x, carry):
    hs, final, cs, acts = _scan_fwd(wh, gates_x, None, carry)
    return (hs, final), (wh, carry, hs, cs, acts)


def _recurrence_bwd(res, cotangents):
    wh, (h0, c0), hs, cs, acts = res
    dz, d_carry = _scan_bwd(wh, c0, cs, acts, *cotangents)
    d_wh = jnp.einsum("tbh,tbg->hg", _h_prev(h0, hs), dz)  # one (H, T*B) @ (T*B, 4H) matmul
    return d_wh, dz, d_carry


@jax.custom_vjp
def lstm_recurrence(wh, gates_x, carry):
    """The LSTM recurrence over time: the same function as scanning `lstm_cell`, with a
    hand-written gradient (`_scan_bwd`).

    Args:
      wh: (H, 4H) recurrent kernel.
      gates_x: (T, B, 4H) input projections of every step, bias included.
      carry: initial (h, c), each (B, H).

    Returns:
      (hs (T, B, H), final carry (h, c)).
    """
    return _recurrence_fwd(wh, gates_x, carry)[0]


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _layer_fwd(x, wi, wh, b, carry):
    hs, final, cs, acts = _scan_fwd(wh, x @ wi, b, carry)
    return (hs, final), (x, wi, wh, carry, hs, cs, acts)


def _layer_bwd(res, cotangents):
    x, wi, wh, (h0, c0), hs, cs, acts = res
    dz, d_carry = _scan_bwd(wh, c0, cs, acts, *cotangents)
    # both kernels' gradients in ONE (F + H, T*B) @ (T*B, 4H) matmul
    d_w = jnp.einsum("tbk,tbg->kg", jnp.concatenate([x, _h_prev(h0, hs)], -1), dz)
    f = x.shape[-1]
    return dz @ wi.T, d_w[:f], d_w[f:], dz.sum((0, 1)), d_carry


@jax.custom_vjp
def lstm_layer(x, wi, wh, b, carry):
    """One LSTM layer over a time-major sequence, with a hand-written gradient.

    The same function as scanning `lstm_cell(wh, carry, x_t @ wi + b)`; the input projection of
    all steps is one matmul before the loop. From the per-step pre-activation gradients the
    backward pass gets dx with one matmul, both kernels' gradients with one more, and the
    bias gradient as a sum (the recurrence itself costs one matmul per step each way).

    Args:
      x: (T, B, F) inputs, time first.
      wi: (F, 4H) input kernel; wh: (H, 4H) recurrent kernel; b: (4H,) bias; gates i, f, g, o.
      carry: initial (h, c), each (B, H).

    Returns:
      (hs (T, B, H), final carry (h, c)).
    """
    return _layer_fwd(x, wi, wh, b, carry)[0]


lstm_layer.defvjp(_layer_fwd, _layer_bwd)


def _lstm_layer_native(x, wi, wh, b, carry):
    """`lstm_layer`'s function as a plain `lax.scan` of `lstm_cell`, differentiated by autodiff."""

    def step(carry, gates_x):
        carry = lstm_cell(wh, carry, gates_x)
        return carry, carry[0]

    final, hs = jax.lax.scan(step, carry, x @ wi + b)
    return hs, final


class LSTMLayer(nn.Module):
    """A single LSTM layer over (B, T, F) -> outputs (B, T, H), final carry (h, c).

    Parameters: one fused input kernel `wi` (F, 4H), one recurrent kernel `wh` (H, 4H) and ONE
    bias `b` (4H), gates in PyTorch's order (i, f, g, o). PyTorch's two biases (b_ih + b_hh)
    only ever appear summed, so this is the same function with 4H fewer parameters. Computed by
    `lstm_layer` where REWRITES["lstm"] applies (elsewhere autodiff through `lax.scan`): the input
    projection of all steps is one matmul; only h @ wh runs inside the recurrence.
    `time_major=True` takes (T, B, F) and returns (T, B, H): stacked layers pass
    time-major sequences between them and skip two (B, T) <-> (T, B) transposes per layer.
    """

    hidden: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, carry=None, *, time_major: bool = False):
        init = _torch_uniform(self.hidden)
        wi = self.param("wi", init, (x.shape[-1], 4 * self.hidden), self.param_dtype)
        wh = self.param("wh", init, (self.hidden, 4 * self.hidden), self.param_dtype)
        b = self.param("b", init, (4 * self.hidden,), self.param_dtype)
        x, wi, wh, b = promote_dtype(x, wi, wh, b, dtype=self.dtype)
        if not time_major:
            x = jnp.swapaxes(x, 0, 1)  # (T, B, F): the recurrence runs over time
        if carry is None:
            zeros = jnp.zeros((x.shape[1], self.hidden), x.dtype)
            carry = (zeros, zeros)
        carry = tuple(jnp.asarray(c, x.dtype) for c in carry)
        hs, carry = per_platform("lstm", lstm_layer, _lstm_layer_native, x, wi, wh, b, carry)
        return (hs if time_major else jnp.swapaxes(hs, 0, 1)), carry
