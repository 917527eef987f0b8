"""Multi-layer perceptrons: the tutorials' fully connected classifiers.

Input: float32 features of any trailing shape (e.g. MNIST images (B, 28, 28, 1) in
[0, 1]); they are flattened. Output: logits (B, num_classes), never softmax.

    from zoo import mlp
    logits = mlp.MLP(hidden=(500, 256)).apply(variables, images)
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import linen as nn

from zoo.registry import InputSpec, check_input, register


class MLP(nn.Module):
    """Dense -> ReLU (-> Dropout) stacks followed by a linear head.

    Attributes:
      num_classes: output logits; 1 makes a binary classifier (one logit, use BCE).
      hidden: widths of the hidden layers.
      in_shape: per-example input shape; flattened to prod(in_shape) features.
      dropout_rate: dropout after each hidden layer (only with train=True).
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (500, 256)
    in_shape: tuple[int, ...] = (28, 28, 1)
    dropout_rate: float = 0.0

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "features in [0, 1], flattened")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        x = x.reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)


register(
    "mlp",
    MLP,
    task="classification",
    output=(10,),
    num_params=523_326,
    description="784-500-256-10 ReLU MLP for MNIST",
    follows="the feed-forward net tutorial (784-500-256-10); returns logits, the loss applies softmax",
)
register(
    "mlp_small",
    MLP,
    defaults={"hidden": (128, 64)},
    task="classification",
    output=(10,),
    num_params=109_386,
    description="784-128-64-10 ReLU MLP for MNIST",
    follows="the small MNIST MLP tutorial (784-128-64-10)",
)
register(
    "mlp_binary",
    MLP,
    defaults={"hidden": (5,), "num_classes": 1, "in_shape": (10,)},
    task="binary",
    output=(1,),
    num_params=61,
    description="10-5-1 binary classifier returning one logit",
    follows="the binary-classifier tutorial (10-5-1); the sigmoid is left to the BCE-with-logits loss",
)
