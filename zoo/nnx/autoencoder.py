"""NNX twin of zoo.autoencoder: `ConvAutoencoder` (28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28).

    from flax import nnx
    from zoo.nnx import autoencoder
    recon = autoencoder.ConvAutoencoder(rngs=nnx.Rngs(0))(images)

Same options, checks and parameter tree as zoo.autoencoder.ConvAutoencoder (enc_*, dec_*).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from zoo import autoencoder as linen
from zoo.nnx.layers import Conv, ConvTranspose, ZooModule
from zoo.registry import check_input


class ConvAutoencoder(ZooModule):
    """Conv encoder and transposed-conv decoder; `encode` (= `embed`) and `decode`.
    Options: those of zoo.autoencoder.ConvAutoencoder."""

    linen = linen.ConvAutoencoder

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        f1, f2 = self.features
        kw = dict(rngs=rngs, **self._kw)
        self.enc_0 = Conv(1, f1, 4, stride=2, padding=1, **kw)
        self.enc_1 = Conv(f1, f2, 4, stride=2, padding=1, **kw)
        self.enc_2 = nnx.Conv(f2, self.latent, (4, 4), strides=(1, 1), padding="VALID", **kw)
        self.dec_0 = ConvTranspose(self.latent, f2, 4, stride=1, padding=0, **kw)
        self.dec_1 = ConvTranspose(f2, f1, 4, stride=2, padding=1, **kw)
        self.dec_2 = ConvTranspose(f1, 1, 4, stride=2, padding=1, **kw)

    def encode(self, x):
        """(B, 28, 28, 1) -> code (B, 4, 4, latent), non-negative (ends with a ReLU)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32)
        x = nnx.relu(self.enc_0(x))  # (B, 14, 14, f1)
        x = nnx.relu(self.enc_1(x))  # (B, 7, 7, f2)
        return nnx.relu(self.enc_2(x))  # (B, 4, 4, latent)

    def decode(self, z):
        """code (B, 4, 4, latent) -> reconstruction (B, 28, 28, 1) in [0, 1]."""
        z = nnx.relu(self.dec_0(z))  # (B, 7, 7, f2)
        z = nnx.relu(self.dec_1(z))  # (B, 14, 14, f1)
        return nnx.sigmoid(self.dec_2(z))  # (B, 28, 28, 1)

    def embed(self, x):
        """The code, as `encode` returns it."""
        return self.encode(x)

    def from_embedding(self, z):
        """The code -> reconstruction, as `decode`."""
        return self.decode(z)

    def __call__(self, x):
        return self.decode(self.encode(x))
