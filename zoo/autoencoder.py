"""Convolutional autoencoder for 28x28x1 images.

Input: float32 images (B, 28, 28, 1) in [0, 1]. Output: reconstructions of the same
shape in [0, 1] (sigmoid). `encode` gives the (B, 4, 4, latent) code, `decode` maps it
back.

    from zoo import autoencoder
    recon = autoencoder.ConvAutoencoder().apply(variables, images)

Encoder as in the tutorial: conv k4 s2 p1 (28->14), conv k4 s2 p1 (14->7), conv k4 s1 p0
(7->4). The tutorial's decoder used plain convolutions, which cannot upsample 4x4 back to
28x28; here the decoder mirrors the encoder with transposed convolutions
(k4 s1 p0: 4->7, k4 s2 p1: 7->14, k4 s2 p1: 14->28), so the output matches the input
exactly in shape.
"""

from __future__ import annotations

from flax import linen as nn

from zoo.layers import Conv, ConvTranspose
from zoo.registry import InputSpec, check_input, register


class ConvAutoencoder(nn.Module):
    """Conv encoder (28 -> 14 -> 7 -> 4) and transposed-conv decoder (4 -> 7 -> 14 -> 28).

    Attributes:
      features: channels of the first two encoder convs (mirrored by the decoder).
      latent: channels of the 4x4 code.
    """

    features: tuple[int, int] = (32, 64)
    latent: int = 16

    def input_spec(self) -> InputSpec:
        return InputSpec((28, 28, 1), "float32", "images NHWC in [0, 1]")

    def setup(self):
        f1, f2 = self.features
        self.enc_0 = Conv(f1, 4, stride=2, padding=1)
        self.enc_1 = Conv(f2, 4, stride=2, padding=1)
        self.enc_2 = nn.Conv(self.latent, (4, 4), strides=(1, 1), padding="VALID")
        self.dec_0 = ConvTranspose(f2, 4, stride=1, padding=0)
        self.dec_1 = ConvTranspose(f1, 4, stride=2, padding=1)
        self.dec_2 = ConvTranspose(1, 4, stride=2, padding=1)

    def encode(self, x):
        """(B, 28, 28, 1) -> code (B, 4, 4, latent)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = nn.relu(self.enc_0(x))  # (B, 14, 14, f1)
        x = nn.relu(self.enc_1(x))  # (B, 7, 7, f2)
        return self.enc_2(x)  # (B, 4, 4, latent)

    def decode(self, z):
        """code (B, 4, 4, latent) -> reconstruction (B, 28, 28, 1) in [0, 1]."""
        z = nn.relu(self.dec_0(z))  # (B, 7, 7, f2)
        z = nn.relu(self.dec_1(z))  # (B, 14, 14, f1)
        return nn.sigmoid(self.dec_2(z))  # (B, 28, 28, 1)

    def __call__(self, x, *, train: bool = False):
        return self.decode(nn.relu(self.encode(x)))


register(
    "autoencoder",
    ConvAutoencoder,
    task="reconstruction",
    output=(28, 28, 1),
    num_params=99_537,
    description="conv encoder 28->14->7->4 (k4), transposed-conv decoder back to 28x28x1",
    follows="the conv autoencoder tutorial; its decoder used plain convs that cannot upsample: "
    "replaced by mirrored transposed convs so 28x28 is reconstructed exactly",
)
