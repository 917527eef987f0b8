"""Multi-task classifier: one shared trunk, one linear head per task.

Input: float32 images (B, 28, 28, 1) in [0, 1]. Output: a dict of logits, one entry per
head, by default {"digit": (B, 10), "parity": (B, 2)} (digit class and odd/even).

    from zoo import multitask
    out = multitask.MultiTaskNet().apply(variables, images)   # out["digit"], out["parity"]
"""

from __future__ import annotations

import math

from flax import linen as nn

from zoo.registry import InputSpec, check_input, register


class MultiTaskNet(nn.Module):
    """Flatten -> shared Dense/ReLU trunk -> {name: Dense(n)} heads.

    Attributes:
      heads: (name, num_logits) pairs, one linear head each (parameter path "head_<name>").
      trunk: widths of the shared hidden layers.
      in_shape: per-example input shape.
    """

    heads: tuple[tuple[str, int], ...] = (("digit", 10), ("parity", 2))
    trunk: tuple[int, ...] = (256, 128)
    in_shape: tuple[int, ...] = (28, 28, 1)

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "images NHWC in [0, 1]")

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        x = x.reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for i, width in enumerate(self.trunk):
            x = nn.relu(nn.Dense(width, name=f"trunk_{i}")(x))
        return {name: nn.Dense(n, name=f"head_{name}")(x) for name, n in self.heads}


register(
    "multitask",
    MultiTaskNet,
    task="multitask",
    output={"digit": (10,), "parity": (2,)},
    num_params=235_404,
    description="shared 784-256-128 trunk with digit (10) and parity (2) heads",
    follows="the multi-task tutorial answer (shared layers, one head and loss per task)",
)
