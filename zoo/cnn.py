"""Convolutional classifiers: the MNIST CNN and the CIFAR-10 ConvNet of the tutorials.

Input: float32 images NHWC in [0, 1], (B, 28, 28, 1) for `cnn`, (B, 32, 32, 3) for
`cnn_cifar`. Output: logits (B, num_classes).

    from zoo import cnn
    logits = cnn.CNN(num_classes=10).apply(variables, images)

Fixed from the tutorial: it flattened 64*6*6 features, which crashes on 28x28 inputs
(two 2x2 pools of 'same' 3x3 convs leave 7x7x64 = 3136), and applied a ReLU to the
logits, which clips every negative logit to zero. Here the flatten size follows from
the input and the head returns raw logits.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from zoo.registry import InputSpec, check_input, register


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 (floors odd sizes, as PyTorch's MaxPool2d(2) does).

    A reshape + max instead of `nn.max_pool`: XLA:CPU lowers reduce_window max pooling
    (and especially its gradient) far more slowly than this (measured in bench/).
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # (B, H/2, 2, W/2, 2, C)
    return x.max(axis=(2, 4))


class CNN(nn.Module):
    """[3x3 'same' conv -> ReLU -> 2x2 max pool] per entry of `features`, then a dense head.

    Attributes:
      num_classes: number of logits.
      features: output channels of each conv block.
      in_shape: expected (H, W, C) of one image.
      dropout_rate: dropout before the head (only with train=True).
    """

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64)
    in_shape: tuple[int, int, int] = (28, 28, 1)
    dropout_rate: float = 0.0

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "images NHWC in [0, 1]")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        for i, ch in enumerate(self.features):
            x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), name=f"conv_{i}")(x)
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)  # (B, H'*W'*C'), NHWC order
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)


register(
    "cnn",
    CNN,
    task="classification",
    output=(10,),
    num_params=50_186,
    description="2 conv blocks (32, 64) + dense head for 28x28x1",
    follows="the MNIST CNN tutorial; fixed its flatten size (64*6*6 -> 7*7*64) and removed the ReLU on the logits",
)
register(
    "cnn_cifar",
    CNN,
    defaults={"features": (32, 64, 128), "in_shape": (32, 32, 3)},
    task="classification",
    output=(10,),
    num_params=113_738,
    description="3 conv blocks (32, 64, 128) + dense head for 32x32x3",
    follows="the CIFAR-10 ConvNet tutorial (3 conv/pool blocks, dense 4*4*128 -> 10)",
)
