"""Multi-task classifier: one shared trunk, one linear head per task.

Input: float32 images (B, 28, 28, 1) in [0, 1]. Output: a dict of logits, one entry per
head, by default {"digit": (B, 10), "parity": (B, 2)} (digit class and odd/even).
`embed` gives the shared trunk's output (B, trunk[-1]).

    from zoo import multitask
    out = multitask.MultiTaskNet().apply(variables, images)   # out["digit"], out["parity"]
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
    register,
    register_torch,
)
from zoo.torch_map import LINEAR, Layer, flattened_image


class MultiTaskNet(nn.Module):
    """Flatten -> shared Dense/ReLU trunk -> {name: Dense(n)} heads.

    Attributes:
      heads: (name, num_logits) pairs, one linear head each (parameter path "head_<name>").
      trunk: widths of the shared hidden layers (at least one).
      in_shape: per-example input shape.
      dtype: computation dtype (None: float32); param_dtype: parameter storage dtype.
    """

    heads: tuple[tuple[str, int], ...] = (("digit", 10), ("parity", 2))
    trunk: tuple[int, ...] = (256, 128)
    in_shape: tuple[int, ...] = (28, 28, 1)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        pairs = isinstance(self.heads, (tuple, list)) and all(isinstance(h, (tuple, list)) and len(h) == 2 for h in self.heads)
        names = [h[0] for h in self.heads] if pairs else []
        if not (names and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
            raise ValueError(
                f"{owner}: heads must be a non-empty tuple of (name, size) pairs with unique non-empty "
                f"names, got {self.heads!r}"
            )
        for name, size in self.heads:
            check_positive(owner, **{f"heads[{name!r}]": size})
        check_positive_tuple(owner, "trunk", self.trunk, min_length=1)
        check_positive_tuple(owner, "in_shape", self.in_shape, min_length=1)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "images NHWC in [0, 1]")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.trunk_layers = [nn.Dense(w, name=f"trunk_{i}", **kw) for i, w in enumerate(self.trunk)]
        self.head_layers = {name: nn.Dense(n, name=f"head_{name}", **kw) for name, n in self.heads}

    def embed(self, x, *, train: bool = False):
        """Input -> the shared trunk's ReLU output (B, trunk[-1]), which every head reads."""
        check_input(x, self.input_spec(), type(self).__name__)
        x = jnp.asarray(x, self.dtype or jnp.float32).reshape(x.shape[0], math.prod(self.in_shape))  # (B, prod(in_shape))
        for layer in self.trunk_layers:
            x = nn.relu(layer(x))
        return x

    def from_embedding(self, h, *, train: bool = False):
        """`embed`'s output -> {head name: logits (B, n)}."""
        return {name: head(h) for name, head in self.head_layers.items()}

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


register(
    "multitask",
    MultiTaskNet,
    task="multitask",
    output={"digit": (10,), "parity": (2,)},
    embedding=(128,),
    num_params=235_404,
    description="shared 784-256-128 trunk with digit (10) and parity (2) heads",
    follows="the multi-task tutorial answer (shared layers, one head and loss per task)",
    class_names={"digit": DIGITS, "parity": PARITY},
    preprocessing=MNIST_IMAGES,
)


# --- PyTorch: the twin (torch is imported only when one is built) and its layers -------------


def _torch_twins():
    from torch import nn

    class MultiTaskNet(nn.Module):
        """Flatten -> shared [Linear -> ReLU] trunk -> one Linear head per task (dict of logits).

        Keys shared.{0,2,...}, heads.<name>.
        """

        def __init__(self, *, heads, trunk, in_shape):
            super().__init__()
            layers, width = [], math.prod(in_shape)
            for w in trunk:
                layers += [nn.Linear(width, w), nn.ReLU()]
                width = w
            self.shared = nn.Sequential(*layers)
            self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in heads})

        def forward(self, x):
            h = self.shared(x.flatten(1))
            return {name: head(h) for name, head in self.heads.items()}

    return [MultiTaskNet]


def _torch_layers(m: MultiTaskNet) -> list[Layer]:
    trunk = [
        Layer(f"shared.{2 * i}", (f"trunk_{i}",), LINEAR, image=flattened_image(m.in_shape) if i == 0 else None)
        for i in range(len(m.trunk))
    ]
    return trunk + [Layer(f"heads.{name}", (f"head_{name}",), LINEAR) for name, _ in m.heads]


register_torch(MultiTaskNet, layers=_torch_layers, twins=_torch_twins)
