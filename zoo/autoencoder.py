"""Convolutional autoencoder for 28x28x1 images.

Input: float32 images (B, 28, 28, 1) in [0, 1]. Output: reconstructions of the same
shape in [0, 1] (sigmoid). `encode` (= `embed`) gives the (B, 4, 4, latent) code, after its
ReLU, and `decode` maps it back: `decode(encode(x))` is the forward pass.

    from zoo import autoencoder
    recon = autoencoder.ConvAutoencoder().apply(variables, images)

Encoder as in the tutorial: conv k4 s2 p1 (28->14), conv k4 s2 p1 (14->7), conv k4 s1 p0
(7->4). The tutorial's decoder used plain convolutions, which cannot upsample 4x4 back to
28x28; here the decoder mirrors the encoder with transposed convolutions
(k4 s1 p0: 4->7, k4 s2 p1: 7->14, k4 s2 p1: 14->28), so the output matches the input
exactly in shape.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from zoo.layers import Conv, ConvTranspose, Dtype
from zoo.registry import (
    MNIST_IMAGES,
    InputSpec,
    check_input,
    check_positive,
    check_positive_tuple,
    register,
    register_torch,
)
from zoo.torch_map import CONV, CONV_TRANSPOSE, Layer


class ConvAutoencoder(nn.Module):
    """Conv encoder (28 -> 14 -> 7 -> 4) and transposed-conv decoder (4 -> 7 -> 14 -> 28).

    Attributes:
      features: channels of the first two encoder convs (mirrored by the decoder).
      latent: channels of the 4x4 code.
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.

    Float input of any precision (float16, bfloat16, ...) is cast to the computation dtype.
    """

    features: tuple[int, int] = (32, 64)
    latent: int = 16
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        check_positive_tuple(owner, "features", self.features, length=2)
        check_positive(owner, latent=self.latent)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec((28, 28, 1), "float32", "images NHWC in [0, 1]")

    def setup(self):
        f1, f2 = self.features
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.enc_0 = Conv(f1, 4, stride=2, padding=1, **kw)
        self.enc_1 = Conv(f2, 4, stride=2, padding=1, **kw)
        self.enc_2 = nn.Conv(self.latent, (4, 4), strides=(1, 1), padding="VALID", **kw)
        self.dec_0 = ConvTranspose(f2, 4, stride=1, padding=0, **kw)
        self.dec_1 = ConvTranspose(f1, 4, stride=2, padding=1, **kw)
        self.dec_2 = ConvTranspose(1, 4, stride=2, padding=1, **kw)

    def encode(self, x, *, train: bool = False):
        """(B, 28, 28, 1) -> code (B, 4, 4, latent), non-negative (ends with a ReLU)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32)
        x = nn.relu(self.enc_0(x))  # (B, 14, 14, f1)
        x = nn.relu(self.enc_1(x))  # (B, 7, 7, f2)
        return nn.relu(self.enc_2(x))  # (B, 4, 4, latent)

    def decode(self, z, *, train: bool = False):
        """code (B, 4, 4, latent) -> reconstruction (B, 28, 28, 1) in [0, 1]."""
        z = nn.relu(self.dec_0(z))  # (B, 7, 7, f2)
        z = nn.relu(self.dec_1(z))  # (B, 14, 14, f1)
        return nn.sigmoid(self.dec_2(z))  # (B, 28, 28, 1)

    def embed(self, x, *, train: bool = False):
        """The representation before the "head": the code, as `encode` returns it."""
        return self.encode(x, train=train)

    def from_embedding(self, z, *, train: bool = False):
        """The code -> reconstruction, as `decode`."""
        return self.decode(z, train=train)

    def __call__(self, x, *, train: bool = False):
        return self.decode(self.encode(x, train=train), train=train)


register(
    "autoencoder",
    ConvAutoencoder,
    task="reconstruction",
    output=(28, 28, 1),
    embedding=(4, 4, 16),
    num_params=99_537,
    description="conv encoder 28->14->7->4 (k4), transposed-conv decoder back to 28x28x1",
    follows="the conv autoencoder tutorial; its decoder used plain convs that cannot upsample: "
    "replaced by mirrored transposed convs so 28x28 is reconstructed exactly",
    class_names=None,
    preprocessing=MNIST_IMAGES,
)


# --- PyTorch: the twin (torch is imported only when one is built) and its layers -------------


def _torch_twins():
    from torch import nn

    class ConvAutoencoder(nn.Module):
        """Conv encoder 28 -> 14 -> 7 -> 4 and transposed-conv decoder 4 -> 7 -> 14 -> 28.

        Keys encoder.{0,2,4}, decoder.{0,2,4}. The encoder ends with the ReLU that zoo applies in
        `__call__` (zoo's `encode` returns the code before it).
        """

        def __init__(self, *, features, latent: int):
            super().__init__()
            f1, f2 = features
            self.encoder = nn.Sequential(
                nn.Conv2d(1, f1, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(f1, f2, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(f2, latent, 4, 1, 0), nn.ReLU(),
            )  # fmt: skip
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(latent, f2, 4, 1, 0), nn.ReLU(),
                nn.ConvTranspose2d(f2, f1, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(f1, 1, 4, 2, 1), nn.Sigmoid(),
            )  # fmt: skip

        def forward(self, x):
            return self.decoder(self.encoder(x))

    return [ConvAutoencoder]


def _torch_layers(m: ConvAutoencoder) -> list[Layer]:
    return [Layer(f"encoder.{2 * i}", (f"enc_{i}",), CONV) for i in range(3)] + [
        Layer(f"decoder.{2 * i}", (f"dec_{i}",), CONV_TRANSPOSE) for i in range(3)
    ]


register_torch(ConvAutoencoder, layers=_torch_layers, twins=_torch_twins)
