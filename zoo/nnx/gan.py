"""NNX twins of zoo.gan: `Generator`, `Discriminator` and `DCGAN` (both under one module).

    from flax import nnx
    from zoo.nnx import gan
    g = gan.Generator(rngs=nnx.Rngs(0))
    images = g(z)                 # z (B, 100) -> (B, 28, 28, 1) in [0, 1]

Same options, checks and variables as zoo.gan: BatchNorm statistics are nnx.BatchStat
("batch_stats" in Linen); `net.train()` normalizes with batch statistics and updates them.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from zoo import gan as linen
from zoo.nnx.layers import Conv, ConvTranspose, ZooModule
from zoo.registry import check_input


def _batch_norm(features: int, rngs: nnx.Rngs, kw: dict) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, use_running_average=True, **linen._BN, rngs=rngs, **kw)


class Generator(ZooModule):
    """z (B, latent_dim) -> images (B, 28, 28, 1) in [0, 1]. Options: those of zoo.gan.Generator."""

    linen = linen.Generator

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        f1, f2 = self.features
        kw = self._kw
        self.deconv_0 = ConvTranspose(self.latent_dim, f1, 7, stride=1, padding=0, use_bias=False, rngs=rngs, **kw)
        self.bn_0 = _batch_norm(f1, rngs, kw)
        self.deconv_1 = ConvTranspose(f1, f2, 4, stride=2, padding=1, use_bias=False, rngs=rngs, **kw)
        self.bn_1 = _batch_norm(f2, rngs, kw)
        self.deconv_2 = ConvTranspose(f2, 1, 4, stride=2, padding=1, rngs=rngs, **kw)

    def __call__(self, z):
        check_input(z, self.input_spec(), type(self).__name__)
        x = jnp.asarray(z, self.dtype or jnp.float32).reshape(z.shape[0], 1, 1, self.latent_dim)  # (B, 1, 1, Z)
        x = nnx.relu(self.bn_0(self.deconv_0(x)))  # (B, 7, 7, f1)
        x = nnx.relu(self.bn_1(self.deconv_1(x)))  # (B, 14, 14, f2)
        return (nnx.tanh(self.deconv_2(x)) + 1.0) / 2.0  # (B, 28, 28, 1)


class Discriminator(ZooModule):
    """images (B, 28, 28, 1) in [0, 1] -> real/fake logit (B, 1). Options: those of zoo.gan.Discriminator."""

    linen = linen.Discriminator

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        f1, f2 = self.features
        kw = self._kw
        self.conv_0 = Conv(1, f1, 4, stride=2, padding=1, rngs=rngs, **kw)
        self.conv_1 = Conv(f1, f2, 4, stride=2, padding=1, use_bias=False, rngs=rngs, **kw)
        self.bn_1 = _batch_norm(f2, rngs, kw)
        self.conv_2 = Conv(f2, 1, linen._D_SIDE, rngs=rngs, **kw)

    def embed(self, x):
        """Images -> the last feature map (after BatchNorm + LeakyReLU), flattened (B, 7*7*f2)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32) * 2.0 - 1.0  # the generator's tanh range
        x = nnx.leaky_relu(self.conv_0(x), 0.2)  # (B, 14, 14, f1)
        x = nnx.leaky_relu(self.bn_1(self.conv_1(x)), 0.2)  # (B, 7, 7, f2)
        return x.reshape(x.shape[0], -1)  # (B, 7*7*f2)

    def from_embedding(self, h):
        """`embed`'s output -> real/fake logit (B, 1): the final 7x7 conv."""
        x = h.reshape(h.shape[0], linen._D_SIDE, linen._D_SIDE, self.features[1])  # (B, 7, 7, f2)
        return self.conv_2(x).reshape(h.shape[0], 1)

    def __call__(self, x):
        return self.from_embedding(self.embed(x))


class DCGAN(ZooModule):
    """`generator` + `discriminator`; calling it generates. Options: those of zoo.gan.DCGAN."""

    linen = linen.DCGAN

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        self.generator = Generator(latent_dim=self.latent_dim, features=self.g_features, rngs=rngs, **self._kw)
        self.discriminator = Discriminator(features=self.d_features, rngs=rngs, **self._kw)

    def __call__(self, z):
        """Generates images (B, 28, 28, 1)."""
        return self.generator(z)

    def generate(self, z):
        return self.generator(z)

    def discriminate(self, x):
        return self.discriminator(x)

    def embed(self, x):
        """IMAGES (B, 28, 28, 1) -> the discriminator's flattened last feature map (B, 7*7*64)."""
        return self.discriminator.embed(x)

    def from_embedding(self, h):
        """`embed`'s output -> the discriminator's logit (B, 1), as `discriminate` returns it."""
        return self.discriminator.from_embedding(h)
