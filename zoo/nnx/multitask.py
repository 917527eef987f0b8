"""NNX twin of zoo.multitask: `MultiTaskNet` (shared trunk, one linear head per task).

    from flax import nnx
    from zoo.nnx import multitask
    out = multitask.MultiTaskNet(rngs=nnx.Rngs(0))(images)   # out["digit"], out["parity"]

Same options, checks and parameter tree as zoo.multitask.MultiTaskNet (trunk_0.., head_<name>).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from zoo import multitask as linen
from zoo.nnx.layers import ZooModule
from zoo.registry import check_input


class MultiTaskNet(ZooModule):
    """Flatten -> shared Dense/ReLU trunk -> {name: Dense(n)} heads. Options: those of
    zoo.multitask.MultiTaskNet."""

    linen = linen.MultiTaskNet

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        self.heads = tuple((name, size) for name, size in self.heads)
        self.trunk_names = tuple(f"trunk_{i}" for i in range(len(self.trunk)))
        width = math.prod(self.in_shape)
        for name, w in zip(self.trunk_names, self.trunk):
            setattr(self, name, nnx.Linear(width, w, rngs=rngs, **self._kw))
            width = w
        for name, n in self.heads:
            setattr(self, f"head_{name}", nnx.Linear(width, n, rngs=rngs, **self._kw))

    def embed(self, x):
        """Input -> the shared trunk's ReLU output (B, trunk[-1]), which every head reads."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32).reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for name in self.trunk_names:
            x = nnx.relu(getattr(self, name)(x))
        return x

    def from_embedding(self, h):
        """`embed`'s output -> {head name: logits (B, n)}."""
        return {name: getattr(self, f"head_{name}")(h) for name, _ in self.heads}

    def __call__(self, x):
        return self.from_embedding(self.embed(x))
