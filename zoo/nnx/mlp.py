"""NNX twin of zoo.mlp: `MLP` (mlp, mlp_small, mlp_binary).

    from flax import nnx
    from zoo.nnx import mlp
    net = mlp.MLP(hidden=(500, 256), rngs=nnx.Rngs(0))

Same options, checks and parameter tree as zoo.mlp.MLP (dense_0.., head).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from zoo import mlp as linen
from zoo.nnx.layers import ZooModule
from zoo.registry import check_input


class MLP(ZooModule):
    """Dense -> ReLU (-> Dropout) stacks followed by a linear head. Options: those of zoo.mlp.MLP."""

    linen = linen.MLP

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        self.dense_names = tuple(f"dense_{i}" for i in range(len(self.hidden)))
        width = math.prod(self.in_shape)
        for name, w in zip(self.dense_names, self.hidden):
            setattr(self, name, nnx.Linear(width, w, rngs=rngs, **self._kw))
            width = w
        self.dropout = nnx.Dropout(self.dropout_rate, deterministic=True, rngs=rngs)
        self.head = nnx.Linear(width, self.num_classes, rngs=rngs, **self._kw)

    def embed(self, x):
        """Input -> the last hidden layer's ReLU activations (B, hidden[-1]), before its dropout."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32).reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for i, name in enumerate(self.dense_names):
            if i and self.dropout_rate:
                x = self.dropout(x)
            x = nnx.relu(getattr(self, name)(x))
        return x

    def from_embedding(self, h):
        """`embed`'s output -> logits (B, num_classes)."""
        if self.hidden and self.dropout_rate:
            h = self.dropout(h)
        return self.head(h)

    def __call__(self, x):
        return self.from_embedding(self.embed(x))
