"""Convolutional classifiers: the MNIST CNN and the CIFAR-10 ConvNet of the tutorials.

Input: float32 images NHWC in [0, 1], (B, 28, 28, 1) for `cnn`, (B, 32, 32, 3) for
`cnn_cifar`. Output: logits (B, num_classes). `embed` gives the flattened conv features
(B, H'*W'*C'), e.g. (B, 3136) for `cnn`.

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

from zoo.layers import Conv, Dtype, max_pool_2x2
from zoo.registry import (
    DIGITS,
    MNIST_IMAGES,
    InputSpec,
    check_input,
    check_positive,
    check_positive_tuple,
    check_rate,
    register,
    register_torch,
)
from zoo.torch_map import CONV, LINEAR, Layer

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CNN(nn.Module):
    """[3x3 'same' conv -> ReLU -> 2x2 max pool] per entry of `features`, then a dense head.

    Attributes:
      num_classes: number of logits.
      features: output channels of each conv block (at least one block).
      in_shape: expected (H, W, C) of one image.
      dropout_rate: dropout before the head (only with train=True), in [0, 1).
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64)
    in_shape: tuple[int, int, int] = (28, 28, 1)
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        check_positive(owner, num_classes=self.num_classes)
        check_positive_tuple(owner, "features", self.features, min_length=1)
        check_positive_tuple(owner, "in_shape", self.in_shape, length=3)
        check_rate(owner, "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "images NHWC in [0, 1]")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # zoo.layers.Conv: flax.linen.Conv's parameters, padding applied before the conv (faster gradients on XLA:CPU)
        self.convs = [Conv(ch, 3, padding=1, name=f"conv_{i}", **kw) for i, ch in enumerate(self.features)]
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes, name="head", **kw)

    def embed(self, x, *, train: bool = False):
        """Images -> flattened conv features (B, H'*W'*C') in NHWC order (dropout not applied)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32)
        for conv in self.convs:
            x = max_pool_2x2(nn.relu(conv(x)))
        return x.reshape(x.shape[0], -1)  # (B, H'*W'*C')

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> logits (B, num_classes); dropout here in train mode."""
        if self.dropout_rate:
            h = self.dropout(h, deterministic=not train)
        return self.head(h)

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


register(
    "cnn",
    CNN,
    task="classification",
    output=(10,),
    embedding=(7 * 7 * 64,),
    num_params=50_186,
    description="2 conv blocks (32, 64) + dense head for 28x28x1",
    follows="the MNIST CNN tutorial; fixed its flatten size (64*6*6 -> 7*7*64) and removed the ReLU on the logits",
    class_names=DIGITS,
    preprocessing=MNIST_IMAGES,
)
register(
    "cnn_cifar",
    CNN,
    defaults={"features": (32, 64, 128), "in_shape": (32, 32, 3)},
    task="classification",
    output=(10,),
    embedding=(4 * 4 * 128,),
    num_params=113_738,
    description="3 conv blocks (32, 64, 128) + dense head for 32x32x3",
    follows="the CIFAR-10 ConvNet tutorial (3 conv/pool blocks, dense 4*4*128 -> 10)",
    class_names=CIFAR10_CLASSES,
    preprocessing={"shape": (32, 32, 3), "layout": "NHWC", "dtype": "float32", "range": (0.0, 1.0), "channels": "RGB"},
)


# --- PyTorch: the twin (torch is imported only when one is built) and its layers -------------


def _torch_twins():
    import torch
    from torch import nn

    class CNN(nn.Module):
        """[Conv2d 3x3 pad 1 -> ReLU -> MaxPool2d(2)] per feature count (-> Dropout) -> Linear logits.

        Keys conv1, conv2, ..., fc.
        """

        def __init__(self, *, num_classes: int, features, in_shape, dropout_rate: float):
            super().__init__()
            h, w, c = in_shape
            chans = [c, *features]
            for i in range(len(features)):
                self.add_module(f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
                h, w = h // 2, w // 2
            self.num_convs = len(features)
            self.pool = nn.MaxPool2d(2)
            self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()
            self.fc = nn.Linear(h * w * features[-1], num_classes)

        def forward(self, x):
            for i in range(1, self.num_convs + 1):
                x = self.pool(torch.relu(self.get_submodule(f"conv{i}")(x)))
            return self.fc(self.dropout(x.flatten(1)))  # NCHW flatten: (C, H, W) order

    return [CNN]


def _torch_layers(m: CNN) -> list[Layer]:
    h, w, _ = m.in_shape
    for _ in m.features:  # 3x3 'same' conv then a 2x2 pool that floors odd sizes
        h, w = h // 2, w // 2
    convs = [Layer(f"conv{i + 1}", (f"conv_{i}",), CONV) for i in range(len(m.features))]
    return convs + [Layer("fc", ("head",), LINEAR, image=(h, w, m.features[-1]))]


register_torch(CNN, layers=_torch_layers, twins=_torch_twins)
