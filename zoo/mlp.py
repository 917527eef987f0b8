"""Multi-layer perceptrons: the tutorials' fully connected classifiers.

Input: float32 features of any trailing shape (e.g. MNIST images (B, 28, 28, 1) in
[0, 1]); they are flattened. Output: logits (B, num_classes), never softmax.
`embed` gives the last hidden layer's activations (B, hidden[-1]).

    from zoo import mlp
    logits = mlp.MLP(hidden=(500, 256)).apply(variables, images)
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import linen as nn

from zoo.layers import Dtype
from zoo.registry import (
    DIGITS,
    MNIST_IMAGES,
    PARITY,
    InputSpec,
    check_input,
    check_positive,
    check_positive_tuple,
    check_rate,
    register,
    register_torch,
)
from zoo.torch_map import LINEAR, Layer, flattened_image


class MLP(nn.Module):
    """Dense -> ReLU (-> Dropout) stacks followed by a linear head.

    Attributes:
      num_classes: output logits; 1 makes a binary classifier (one logit, use BCE).
      hidden: widths of the hidden layers (may be empty: a linear classifier).
      in_shape: per-example input shape; flattened to prod(in_shape) features.
      dropout_rate: dropout after each hidden layer (only with train=True), in [0, 1).
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (500, 256)
    in_shape: tuple[int, ...] = (28, 28, 1)
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        check_positive(owner, num_classes=self.num_classes)
        check_positive_tuple(owner, "hidden", self.hidden)
        check_positive_tuple(owner, "in_shape", self.in_shape, min_length=1)
        check_rate(owner, "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "features in [0, 1], flattened")

    def setup(self):
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.layers = [nn.Dense(w, name=f"dense_{i}", **dense) for i, w in enumerate(self.hidden)]
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes, name="head", **dense)

    def embed(self, x, *, train: bool = False):
        """Input -> the last hidden layer's ReLU activations (B, hidden[-1]), before its dropout."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32).reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for i, layer in enumerate(self.layers):
            if i and self.dropout_rate:
                x = self.dropout(x, deterministic=not train)
            x = nn.relu(layer(x))
        return x

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> logits (B, num_classes)."""
        if self.hidden and self.dropout_rate:
            h = self.dropout(h, deterministic=not train)
        return self.head(h)

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


register(
    "mlp",
    MLP,
    task="classification",
    output=(10,),
    embedding=(256,),
    num_params=523_326,
    description="784-500-256-10 ReLU MLP for MNIST",
    follows="the feed-forward net tutorial (784-500-256-10); returns logits, the loss applies softmax",
    class_names=DIGITS,
    preprocessing=MNIST_IMAGES,
)
register(
    "mlp_small",
    MLP,
    defaults={"hidden": (128, 64)},
    task="classification",
    output=(10,),
    embedding=(64,),
    num_params=109_386,
    description="784-128-64-10 ReLU MLP for MNIST",
    follows="the small MNIST MLP tutorial (784-128-64-10)",
    class_names=DIGITS,
    preprocessing=MNIST_IMAGES,
)
register(
    "mlp_binary",
    MLP,
    defaults={"hidden": (5,), "num_classes": 1, "in_shape": (10,)},
    task="binary",
    output=(1,),
    embedding=(5,),
    num_params=61,
    description="10-5-1 binary classifier returning one logit",
    follows="the binary-classifier tutorial (10-5-1); the sigmoid is left to the BCE-with-logits loss",
    class_names=PARITY,  # logit > 0 -> "odd"
    preprocessing={
        "shape": (10,),
        "dtype": "float32",
        "note": "10 features by default; the shipped mnist_parity weights use in_shape=(28, 28, 1), "
        "MNIST images as for 'mlp' (NHWC in [0, 1], white digit on black)",
    },
)


# --- PyTorch: the twin (torch is imported only when one is built) and its layers -------------


def _torch_twins():
    import torch
    from torch import nn

    class MLP(nn.Module):
        """Flatten -> [Linear -> ReLU (-> Dropout)] per hidden width -> Linear logits. Keys fc1, fc2, ..."""

        def __init__(self, *, num_classes: int, hidden, in_shape, dropout_rate: float):
            super().__init__()
            widths = [math.prod(in_shape), *hidden, num_classes]
            for i in range(len(widths) - 1):
                self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
            self.num_linear = len(widths) - 1
            self.dropout = nn.Dropout(dropout_rate) if dropout_rate else nn.Identity()

        def forward(self, x):
            x = x.flatten(1)  # images: (C, H, W) order
            for i in range(1, self.num_linear):
                x = self.dropout(torch.relu(self.get_submodule(f"fc{i}")(x)))
            return self.get_submodule(f"fc{self.num_linear}")(x)

    return [MLP]


def _torch_layers(m: MLP) -> list[Layer]:
    paths = [f"dense_{i}" for i in range(len(m.hidden))] + ["head"]
    return [
        Layer(f"fc{i + 1}", (p,), LINEAR, image=flattened_image(m.in_shape) if i == 0 else None)
        for i, p in enumerate(paths)
    ]


register_torch(MLP, layers=_torch_layers, twins=_torch_twins)
