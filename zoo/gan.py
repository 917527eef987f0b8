"""DCGAN for 28x28x1 images: a generator and a discriminator, usable apart or together.

Generator: latent z (B, 100) -> images (B, 28, 28, 1) in [0, 1]. Discriminator: images
(B, 28, 28, 1) in [0, 1] -> one real/fake logit (B, 1). `DCGAN` holds both:
`__call__(z)` generates, `discriminate(x)` scores; the training engine updates the
"generator" and "discriminator" parameter subtrees with separate optimizers.

    from zoo import gan
    images = gan.Generator().apply(g_vars, z)   # or zoo.create("dcgan")

Follows the tutorial's DCGAN answer (transposed convs + BatchNorm + ReLU with a tanh
output; convs + LeakyReLU(0.2) + BatchNorm with one logit), sized for MNIST:
7x7 -> 14x14 -> 28x28. The tanh output is mapped to [0, 1] ((t + 1) / 2) and the
discriminator maps its input back to [-1, 1], so both follow zoo's image convention.
The discriminator returns a logit (no sigmoid): the loss is BCE-with-logits.
Widths (generator 128/64, discriminator 32/64) are half the usual 256/128 and 64/128:
the full-width generator costs ~20 GFLOP per step of 128 images, too slow for the 2-core
CPU runs this zoo's recipes are measured on, and MNIST digits do not need it.
"""

from __future__ import annotations

from flax import linen as nn

from zoo.layers import Conv, ConvTranspose
from zoo.registry import InputSpec, check_input, register

_IMAGE_SPEC = InputSpec((28, 28, 1), "float32", "images NHWC in [0, 1]")
# torch BatchNorm2d defaults: momentum 0.1 (flax counts the complement), eps 1e-5.
_BN = dict(momentum=0.9, epsilon=1e-5)


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, 28, 28, 1) in [0, 1]."""

    latent_dim: int = 100
    features: tuple[int, int] = (128, 64)

    def input_spec(self) -> InputSpec:
        return InputSpec((self.latent_dim,), "float32", "latent noise, e.g. N(0, 1)")

    @nn.compact
    def __call__(self, z, *, train: bool = False):
        check_input(z, self.input_spec(), type(self).__name__)
        f1, f2 = self.features
        x = z.reshape(z.shape[0], 1, 1, self.latent_dim)  # (B, 1, 1, Z)
        # torch ConvTranspose2d(Z, f1, 7, 1, 0): 1 -> 7
        x = ConvTranspose(f1, 7, stride=1, padding=0, use_bias=False, name="deconv_0")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_0", **_BN)(x))  # (B, 7, 7, f1)
        # torch ConvTranspose2d(f1, f2, 4, 2, 1): 7 -> 14
        x = ConvTranspose(f2, 4, stride=2, padding=1, use_bias=False, name="deconv_1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_1", **_BN)(x))  # (B, 14, 14, f2)
        x = ConvTranspose(1, 4, stride=2, padding=1, name="deconv_2")(x)
        return (nn.tanh(x) + 1.0) / 2.0  # (B, 28, 28, 1)


class Discriminator(nn.Module):
    """images (B, 28, 28, 1) in [0, 1] -> real/fake logit (B, 1)."""

    features: tuple[int, int] = (32, 64)

    def input_spec(self) -> InputSpec:
        return _IMAGE_SPEC

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        f1, f2 = self.features
        x = x * 2.0 - 1.0  # the generator's tanh range
        x = Conv(f1, 4, stride=2, padding=1, name="conv_0")(x)
        x = nn.leaky_relu(x, 0.2)  # (B, 14, 14, f1)
        x = Conv(f2, 4, stride=2, padding=1, use_bias=False, name="conv_1")(x)
        x = nn.leaky_relu(nn.BatchNorm(use_running_average=not train, name="bn_1", **_BN)(x), 0.2)  # (B, 7, 7, f2)
        x = nn.Conv(1, (7, 7), padding="VALID", name="conv_2")(x)  # (B, 1, 1, 1)
        return x.reshape(x.shape[0], 1)


class DCGAN(nn.Module):
    """Generator + discriminator under one set of variables ("generator", "discriminator")."""

    latent_dim: int = 100
    g_features: tuple[int, int] = (128, 64)
    d_features: tuple[int, int] = (32, 64)

    def input_spec(self) -> InputSpec:
        return InputSpec((self.latent_dim,), "float32", "latent noise, e.g. N(0, 1)")

    def setup(self):
        self.generator = Generator(self.latent_dim, self.g_features)
        self.discriminator = Discriminator(self.d_features)

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


register(
    "dcgan",
    DCGAN,
    task="gan",
    output=(28, 28, 1),
    num_params=796_258,
    description="DCGAN: generator 100 -> 7x7x128 -> 14x14x64 -> 28x28x1 (BN, ReLU, tanh), discriminator 32/64 channels with LeakyReLU(0.2) + BN",
    follows="the DCGAN tutorial answer sized for MNIST; outputs mapped to [0, 1], discriminator returns a logit",
)
