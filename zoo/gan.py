"""DCGAN for 28x28x1 images: a generator and a discriminator, usable apart or together.

Generator: latent z (B, 100) -> images (B, 28, 28, 1) in [0, 1]. Discriminator: images
(B, 28, 28, 1) in [0, 1] -> one real/fake logit (B, 1). `DCGAN` holds both:
`__call__(z)` generates, `discriminate(x)` scores; the training engine updates the
"generator" and "discriminator" parameter subtrees with separate optimizers.
`embed(x)` (of the Discriminator or the DCGAN) takes IMAGES and returns the discriminator's
last feature map (after BatchNorm + LeakyReLU), flattened: (B, 7*7*64) = (B, 3136); its
final 7x7 conv maps that to the logit (`from_embedding`).

    from zoo import gan
    images = gan.Generator().apply(g_vars, z)   # or zoo.create("dcgan")

Follows the tutorial's DCGAN answer (transposed convs + BatchNorm + ReLU with a tanh
output; convs + LeakyReLU(0.2) + BatchNorm with one logit), sized for MNIST:
7x7 -> 14x14 -> 28x28. The tanh output is mapped to [0, 1] ((t + 1) / 2) and the
discriminator maps its input back to [-1, 1], so both follow zoo's image convention.
The discriminator returns a logit (no sigmoid): the loss is BCE-with-logits.
Widths (generator 128/64, discriminator 32/64) are half the usual 256/128 and 64/128, to
fit CPU training (see bench/README.md); MNIST digits do not need more.
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
from zoo.torch_map import BATCHNORM, CONV, CONV_TRANSPOSE, Layer, nested

_IMAGE_SPEC = InputSpec((28, 28, 1), "float32", "images NHWC in [0, 1]")
# torch BatchNorm2d defaults: momentum 0.1 (flax counts the complement), eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)
_D_SIDE = 7  # side of the discriminator's last feature map: 28 -> 14 -> 7


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, 28, 28, 1) in [0, 1].

    dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    latent_dim: int = 100
    features: tuple[int, int] = (128, 64)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        check_positive(type(self).__name__, latent_dim=self.latent_dim)
        check_positive_tuple(type(self).__name__, "features", self.features, length=2)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec((self.latent_dim,), "float32", "latent noise, e.g. N(0, 1)")

    @nn.compact
    def __call__(self, z, *, train: bool = False):
        check_input(z, self.input_spec(), type(self).__name__)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = dict(use_running_average=not train, **_BN, **kw)
        f1, f2 = self.features
        x = jnp.asarray(z, self.dtype or jnp.float32).reshape(z.shape[0], 1, 1, self.latent_dim)  # (B, 1, 1, Z)
        # torch ConvTranspose2d(Z, f1, 7, 1, 0): 1 -> 7
        x = ConvTranspose(f1, 7, stride=1, padding=0, use_bias=False, name="deconv_0", **kw)(x)
        x = nn.relu(nn.BatchNorm(name="bn_0", **bn)(x))  # (B, 7, 7, f1)
        # torch ConvTranspose2d(f1, f2, 4, 2, 1): 7 -> 14
        x = ConvTranspose(f2, 4, stride=2, padding=1, use_bias=False, name="deconv_1", **kw)(x)
        x = nn.relu(nn.BatchNorm(name="bn_1", **bn)(x))  # (B, 14, 14, f2)
        x = ConvTranspose(1, 4, stride=2, padding=1, name="deconv_2", **kw)(x)
        return (nn.tanh(x) + 1.0) / 2.0  # (B, 28, 28, 1)


class Discriminator(nn.Module):
    """images (B, 28, 28, 1) in [0, 1] -> real/fake logit (B, 1).

    dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    features: tuple[int, int] = (32, 64)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        check_positive_tuple(type(self).__name__, "features", self.features, length=2)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return _IMAGE_SPEC

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        f1, f2 = self.features
        self.conv_0 = Conv(f1, 4, stride=2, padding=1, **kw)
        self.conv_1 = Conv(f2, 4, stride=2, padding=1, use_bias=False, **kw)
        self.bn_1 = nn.BatchNorm(**_BN, **kw)
        self.conv_2 = Conv(1, _D_SIDE, **kw)  # covers the whole 7x7 map: computed as a dense layer

    def embed(self, x, *, train: bool = False):
        """Images -> the last feature map (after BatchNorm + LeakyReLU), flattened (B, 7*7*f2)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32) * 2.0 - 1.0  # the generator's tanh range
        x = nn.leaky_relu(self.conv_0(x), 0.2)  # (B, 14, 14, f1)
        x = nn.leaky_relu(self.bn_1(self.conv_1(x), use_running_average=not train), 0.2)  # (B, 7, 7, f2)
        return x.reshape(x.shape[0], -1)  # (B, 7*7*f2)

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> real/fake logit (B, 1): the final 7x7 conv."""
        x = h.reshape(h.shape[0], _D_SIDE, _D_SIDE, self.features[1])  # (B, 7, 7, f2)
        return self.conv_2(x).reshape(h.shape[0], 1)

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


class DCGAN(nn.Module):
    """Generator + discriminator under one set of variables ("generator", "discriminator").

    dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    latent_dim: int = 100
    g_features: tuple[int, int] = (128, 64)
    d_features: tuple[int, int] = (32, 64)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        check_positive(owner, latent_dim=self.latent_dim)
        check_positive_tuple(owner, "g_features", self.g_features, length=2)
        check_positive_tuple(owner, "d_features", self.d_features, length=2)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec((self.latent_dim,), "float32", "latent noise, e.g. N(0, 1)")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.generator = Generator(self.latent_dim, self.g_features, **kw)
        self.discriminator = Discriminator(self.d_features, **kw)

    def __call__(self, z, *, train: bool = False):
        """Generates images (B, 28, 28, 1); at init also creates the discriminator."""
        images = self.generator(z, train=train)
        if self.is_initializing():
            self.discriminator(images, train=train)
        return images

    def generate(self, z, *, train: bool = False):
        return self.generator(z, train=train)

    def discriminate(self, x, *, train: bool = False):
        return self.discriminator(x, train=train)

    def embed(self, x, *, train: bool = False):
        """IMAGES (B, 28, 28, 1) -> the discriminator's flattened last feature map (B, 7*7*64)."""
        return self.discriminator.embed(x, train=train)

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> the discriminator's logit (B, 1), as `discriminate` returns it."""
        return self.discriminator.from_embedding(h, train=train)


register(
    "dcgan",
    DCGAN,
    task="gan",
    output=(28, 28, 1),
    embedding=(_D_SIDE * _D_SIDE * 64,),
    num_params=796_258,
    description="DCGAN: generator 100 -> 7x7x128 -> 14x14x64 -> 28x28x1 (BN, ReLU, tanh), discriminator 32/64 channels with LeakyReLU(0.2) + BN",
    follows="the DCGAN tutorial answer sized for MNIST; outputs mapped to [0, 1], discriminator returns a logit",
    class_names=None,
    preprocessing={**MNIST_IMAGES, "input": "latent z (B, 100) ~ N(0, 1); images as MNIST for discriminate/embed"},
)


# --- PyTorch: the twins (torch is imported only when one is built) and their layers ----------
# The twins keep the tutorial's [-1, 1] image range: zoo_generate(z) == (torch_generator(z) + 1) / 2
# and zoo_discriminate(x) == torch_discriminator(2 * x - 1).


def _torch_twins():
    from torch import nn

    class Generator(nn.Module):
        """z (B, latent) -> images (B, 1, 28, 28) in [-1, 1] (tanh). Keys main.{0,1,3,4,6}."""

        def __init__(self, *, latent_dim: int, features):
            super().__init__()
            f1, f2 = features
            self.latent_dim = latent_dim
            self.main = nn.Sequential(
                nn.ConvTranspose2d(latent_dim, f1, 7, 1, 0, bias=False), nn.BatchNorm2d(f1), nn.ReLU(),
                nn.ConvTranspose2d(f1, f2, 4, 2, 1, bias=False), nn.BatchNorm2d(f2), nn.ReLU(),
                nn.ConvTranspose2d(f2, 1, 4, 2, 1), nn.Tanh(),
            )  # fmt: skip

        def forward(self, z):
            return self.main(z.reshape(z.shape[0], self.latent_dim, 1, 1))

    class Discriminator(nn.Module):
        """images (B, 1, 28, 28) in [-1, 1] -> one logit (B, 1). Keys main.{0,2,3,5}."""

        def __init__(self, *, features):
            super().__init__()
            f1, f2 = features
            self.main = nn.Sequential(
                nn.Conv2d(1, f1, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(f1, f2, 4, 2, 1, bias=False), nn.BatchNorm2d(f2), nn.LeakyReLU(0.2),
                nn.Conv2d(f2, 1, 7, 1, 0),
            )  # fmt: skip

        def forward(self, x):
            return self.main(x).reshape(x.shape[0], 1)

    class DCGAN(nn.Module):
        """Generator + discriminator; `forward(z)` generates. Keys generator.*, discriminator.*."""

        def __init__(self, *, latent_dim: int, g_features, d_features):
            super().__init__()
            self.generator = Generator(latent_dim=latent_dim, features=g_features)
            self.discriminator = Discriminator(features=d_features)

        def forward(self, z):
            return self.generator(z)

        def discriminate(self, x):
            return self.discriminator(x)

    return [Generator, Discriminator, DCGAN]


def _generator_torch_layers(m: Generator) -> list[Layer]:
    return [
        Layer("main.0", ("deconv_0",), CONV_TRANSPOSE),
        Layer("main.1", ("bn_0",), BATCHNORM),
        Layer("main.3", ("deconv_1",), CONV_TRANSPOSE),
        Layer("main.4", ("bn_1",), BATCHNORM),
        Layer("main.6", ("deconv_2",), CONV_TRANSPOSE),
    ]


def _discriminator_torch_layers(m: Discriminator) -> list[Layer]:
    return [
        Layer("main.0", ("conv_0",), CONV),
        Layer("main.2", ("conv_1",), CONV),
        Layer("main.3", ("bn_1",), BATCHNORM),
        Layer("main.5", ("conv_2",), CONV),
    ]


def _dcgan_torch_layers(m: DCGAN) -> list[Layer]:
    return nested("generator", _generator_torch_layers(m)) + nested("discriminator", _discriminator_torch_layers(m))


register_torch(Generator, layers=_generator_torch_layers, twins=_torch_twins)
register_torch(Discriminator, layers=_discriminator_torch_layers, twins=_torch_twins)
register_torch(DCGAN, layers=_dcgan_torch_layers, twins=_torch_twins)
