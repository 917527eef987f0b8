"""Shared layers: a transposed convolution built from ordinary convolutions.

`ConvTranspose` computes exactly PyTorch's `ConvTranspose2d(in, out, k, stride, padding)`
(and flax's `nn.ConvTranspose(..., transpose_kernel=True)` with padding k-1-p), with the
same parameters: `kernel` (kh, kw, out, in) and `bias` (out,). It never emits an
input-dilated convolution, which XLA:CPU lowers to a slow generic loop (measured: 31 s
for the forward+backward of one 7->14, 256->128 layer at batch 128):
- stride 1: a plain convolution with the spatially flipped kernel;
- stride s > 1: s*s output phases computed by one plain stride-1 convolution whose
  output channels are (phase, channel), interleaved back (depth-to-space);
- a 1x1 input with padding 0 (the latent of a generator): an einsum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def _phase_taps(k: int, s: int, p: int, a: int) -> list[tuple[int, int]]:
    """(input offset o, kernel tap) pairs feeding output index s*m + a from input m + o.

    From PyTorch's definition y = s*i - p + tap: for y = s*m + a, tap = s*(m - i) + a + p.
    """
    return [(-d, a + p + s * d) for d in range(-k, k + 1) if 0 <= a + p + s * d < k]


def conv2d(x, kernel, stride: int = 1, padding=((0, 0), (0, 0))):
    """Plain cross-correlation, NHWC x (B, H, W, Cin), kernel (kh, kw, Cin, Cout)."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


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


class Conv(nn.Module):
    """PyTorch-style Conv2d in NHWC with flax.linen.Conv's parameters (`kernel` (k, k, in, out),
    `bias`) and initialization; strided convs go through `strided_conv`."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        y = strided_conv(x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def conv_transpose(x, kernel, stride: int, padding: int):
    """PyTorch-semantics transposed conv. x: (B, H, W, Cin); kernel: (k, k, Cout, Cin)."""
    k, s, p = kernel.shape[0], stride, padding
    b, h, w, _ = x.shape
    out_h, out_w = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
    if h == 1 and w == 1 and p == 0:  # (B, Cin) -> (B, k, k, Cout)
        return jnp.einsum("bi,yxoi->byxo", x[:, 0, 0, :], kernel)
    if s == 1:
        flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (k, k, Cin, Cout)
        pad = ((k - 1 - p, k - 1 - p), (k - 1 - p, k - 1 - p))
        return conv2d(x, flipped, 1, pad)
    taps = [_phase_taps(k, s, p, a) for a in range(s)]
    lo = min(o for t in taps for o, _ in t)
    hi = max(o for t in taps for o, _ in t)
    m_h, m_w = -(-out_h // s), -(-out_w // s)  # phase rows/cols needed
    span = hi - lo + 1
    cin, cout = kernel.shape[3], kernel.shape[2]
    # One (span, span, Cin, s*s*Cout) kernel holding every phase's taps, zeros elsewhere.
    # A single conv measured faster on XLA:CPU than s*s small per-phase convs. It is cut
    # out of the kernel by ONE gather with a trace-time index table (entry k = a zero
    # tap), rather than s*s*taps scatters, which made the program larger and slower to compile.
    table = np.full((span, s), k, np.int32)  # (input offset, phase) -> kernel tap
    for a in range(s):
        for o, tap in taps[a]:
            table[o - lo, a] = tap
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # (k+1, k+1, Cout, Cin), last tap 0
    full = padded[table[:, None, :, None], table[None, :, None, :]]  # (span, span, s, s, Cout, Cin)
    full = full.transpose(0, 1, 5, 2, 3, 4).reshape(span, span, cin, s * s * cout)
    pad_lo = max(0, -lo)
    xp = jnp.pad(x, ((0, 0), (pad_lo, max(0, m_h - 1 + hi - (h - 1))), (pad_lo, max(0, m_w - 1 + hi - (w - 1))), (0, 0)))
    y0 = pad_lo + lo  # output row m reads input rows m + lo .. m + hi
    xp = xp[:, y0 : y0 + m_h + span - 1, y0 : y0 + m_w + span - 1]
    y = conv2d(xp, full)  # (B, m_h, m_w, s*s*Cout)
    y = y.reshape(b, m_h, m_w, s, s, cout).transpose(0, 1, 3, 2, 4, 5)  # (B, m_h, s, m_w, s, Cout)
    return y.reshape(b, m_h * s, m_w * s, cout)[:, :out_h, :out_w]


class ConvTranspose(nn.Module):
    """PyTorch-style ConvTranspose2d in NHWC; parameters `kernel` (k, k, out, in), `bias`."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        # LeCun normal over the true fan-in, k*k*in. (flax's ConvTranspose and torch's
        # ConvTranspose2d count k*k*out instead: for a 1-channel output layer that is 16,
        # which saturates a sigmoid output and stalled the autoencoder at MSE 0.11.)
        init = nn.initializers.lecun_normal(in_axis=(0, 1, 3), out_axis=2)
        kernel = self.param("kernel", init, (k, k, self.features, x.shape[-1]))
        y = conv_transpose(x, kernel, self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y
