"""A model family written the way a family file in zoo/ is, but outside zoo/: one module, its
registration with its pinned numbers, its PyTorch twin and layer mapping. Nothing else names it.

`register()` adds it to the registry. As a pytest plugin (`pytest -p tests.tiny_family`) it does
so before collection, so the registry-driven tests parametrize over "tiny" as over zoo's own
models (tests/test_models.py::test_a_new_family_gets_the_registry_driven_checks).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from zoo.registry import InputSpec, check_input, check_positive, register_torch
from zoo.registry import register as register_model
from zoo.torch_map import CONV, LINEAR, Layer

NAME = "tiny"


class TinyNet(nn.Module):
    """3x3 'same' conv -> ReLU -> flatten -> dense logits, on small multi-channel images."""

    num_classes: int = 3
    features: int = 5
    in_shape: tuple[int, int, int] = (4, 4, 2)
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        check_positive(type(self).__name__, num_classes=self.num_classes, features=self.features)
        super().__post_init__()

    def input_spec(self) -> InputSpec:
        return InputSpec(tuple(self.in_shape), "float32", "images NHWC in [0, 1]")

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.conv = nn.Conv(self.features, (3, 3), padding=1, name="conv", **kw)
        self.head = nn.Dense(self.num_classes, name="head", **kw)

    def embed(self, x, *, train: bool = False):
        check_input(x, self.input_spec(), type(self).__name__)
        x = nn.relu(self.conv(jnp.asarray(x, self.dtype or jnp.float32)))
        return x.reshape(x.shape[0], -1)  # NHWC order

    def from_embedding(self, h, *, train: bool = False):
        return self.head(h)

    def __call__(self, x, *, train: bool = False):
        return self.from_embedding(self.embed(x, train=train), train=train)


def _torch_twins():
    import torch
    from torch import nn as tnn

    class TinyNet(tnn.Module):
        def __init__(self, *, num_classes: int, features: int, in_shape):
            super().__init__()
            h, w, c = in_shape
            self.conv = tnn.Conv2d(c, features, 3, padding=1)
            self.fc = tnn.Linear(h * w * features, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))  # NCHW flatten: (C, H, W) order

    return [TinyNet]


def _torch_layers(m: TinyNet) -> list[Layer]:
    h, w, _ = m.in_shape
    return [Layer("conv", ("conv",), CONV), Layer("fc", ("head",), LINEAR, image=(h, w, m.features))]


def register() -> None:
    """Registers "tiny" and TinyNet's PyTorch mapping, as a family file does when zoo imports it."""
    register_model(
        NAME,
        TinyNet,
        task="classification",
        output=(3,),
        embedding=(4 * 4 * 5,),
        num_params=3 * 3 * 2 * 5 + 5 + 80 * 3 + 3,
        description="a conv and a dense head, for the tests",
        follows="no tutorial",
        class_names=("a", "b", "c"),
        preprocessing={"shape": (4, 4, 2), "layout": "NHWC", "dtype": "float32", "range": (0.0, 1.0)},
    )
    register_torch(TinyNet, layers=_torch_layers, twins=_torch_twins)


def pytest_configure(config):
    register()
