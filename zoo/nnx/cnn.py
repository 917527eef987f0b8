"""NNX twins of zoo.cnn: `CNN` (the MNIST CNN, and `cnn_cifar` with its registry defaults).

    from flax import nnx
    from zoo.nnx import cnn
    net = cnn.CNN(num_classes=10, rngs=nnx.Rngs(0))
    logits = net(images)          # (B, 28, 28, 1) float32 in [0, 1] -> (B, 10)

Same options, checks and parameter tree as zoo.cnn.CNN (conv_0.., head).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from zoo import cnn as linen
from zoo.layers import max_pool_2x2
from zoo.nnx.layers import Conv, ZooModule
from zoo.registry import check_input


class CNN(ZooModule):
    """[3x3 'same' conv -> ReLU -> 2x2 max pool] per entry of `features`, then a dense head.
    Options: those of zoo.cnn.CNN."""

    linen = linen.CNN

    def __init__(self, *, rngs: nnx.Rngs, **options):
        self._configure(options)
        h, w, channels = self.in_shape
        self.conv_names = tuple(f"conv_{i}" for i in range(len(self.features)))
        for name, ch in zip(self.conv_names, self.features):
            setattr(self, name, Conv(channels, ch, 3, padding=1, rngs=rngs, **self._kw))
            channels, h, w = ch, h // 2, w // 2
        self.dropout = nnx.Dropout(self.dropout_rate, deterministic=True, rngs=rngs)
        self.head = nnx.Linear(h * w * channels, self.num_classes, rngs=rngs, **self._kw)

    def embed(self, x):
        """Images -> flattened conv features (B, H'*W'*C') in NHWC order (dropout not applied)."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32)
        for name in self.conv_names:
            x = max_pool_2x2(nnx.relu(getattr(self, name)(x)))
        return x.reshape(x.shape[0], -1)  # (B, H'*W'*C')

    def from_embedding(self, h):
        """`embed`'s output -> logits (B, num_classes); dropout here in train mode."""
        if self.dropout_rate:
            h = self.dropout(h)
        return self.head(h)

    def __call__(self, x):
        return self.from_embedding(self.embed(x))
