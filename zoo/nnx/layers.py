"""NNX layers whose math is zoo.layers' (one definition for both APIs), and the base of every
NNX twin of a registry model.

Each layer here holds its parameters as `nnx.Param` under the names and layouts of its Linen
counterpart in zoo.layers, and computes by applying that Linen layer to them: the CPU rewrites
of zoo.layers (space-to-depth convs, per-phase transposed convs, the LSTM's hand-written
backward) run unchanged, and whatever zoo.layers chooses per platform, both APIs get.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from zoo import layers
from zoo.registry import _check_overrides, _module_fields
from zoo.trees import as_variables

__all__ = ["Conv", "ConvTranspose", "LSTMLayer", "ZooModule", "variables"]


# Here, not in zoo/nnx/__init__: the models use it, and __init__ imports the models.
def variables(net: nnx.Module) -> dict:
    """{"params": ..., and "batch_stats" if the net has BatchNorm}: the Linen variables dict of
    `net`, the input of the `zoo.formats` writers, `zoo.to_torch` and the Linen twin's `apply`."""
    if not isinstance(net, nnx.Module):
        raise TypeError(f"expected an nnx.Module, got {type(net).__name__}")
    return as_variables(net)


class _LinenLayer(nnx.Module):
    """Parameters of a zoo.layers Linen layer (`self.linen`, static) as nnx.Params."""

    def _init_params(self, example, rngs: nnx.Rngs) -> None:
        # the Linen layer's own initializers, on the smallest input that fixes the shapes
        for name, value in self.linen.init(rngs.params(), example)["params"].items():
            setattr(self, name, nnx.Param(value))

    def _variables(self) -> dict:
        names = [n for n, v in vars(self).items() if isinstance(v, nnx.Param)]
        return {"params": {n: getattr(self, n)[...] for n in names}}


class Conv(_LinenLayer):
    """zoo.layers.Conv (PyTorch Conv2d in NHWC): parameters `kernel` (k, k, in, out) and `bias`."""

    def __init__(self, in_features: int, features: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                 use_bias: bool = True, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.linen = layers.Conv(features, kernel_size, stride, padding, use_bias, dtype, param_dtype)
        self._init_params(jnp.zeros((1, kernel_size, kernel_size, in_features), param_dtype), rngs)

    def __call__(self, x):
        return self.linen.apply(self._variables(), x)


class ConvTranspose(_LinenLayer):
    """zoo.layers.ConvTranspose (PyTorch ConvTranspose2d in NHWC): `kernel` (k, k, out, in), `bias`."""

    def __init__(self, in_features: int, features: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                 use_bias: bool = True, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.linen = layers.ConvTranspose(features, kernel_size, stride, padding, use_bias, dtype, param_dtype)
        self._init_params(jnp.zeros((1, 1, 1, in_features), param_dtype), rngs)

    def __call__(self, x):
        return self.linen.apply(self._variables(), x)


class LSTMLayer(_LinenLayer):
    """zoo.layers.LSTMLayer: `wi` (F, 4H), `wh` (H, 4H), one bias `b` (4H), gates i, f, g, o."""

    def __init__(self, in_features: int, hidden: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.linen = layers.LSTMLayer(hidden, dtype, param_dtype)
        self._init_params(jnp.zeros((1, 1, in_features), param_dtype), rngs)

    def __call__(self, x, carry=None, *, time_major: bool = False):
        """(B, T, F) [or (T, B, F) with time_major] -> outputs, final carry (h, c)."""
        return self.linen.apply(self._variables(), x, carry, time_major=time_major)


class ZooModule(nnx.Module):
    """Base of the NNX twin of a zoo Linen model (`linen`, a class attribute).

    The constructor takes the Linen model's fields as keyword options and builds the Linen
    module once to validate them, so options, defaults and error messages are the Linen
    model's. The options become plain (static) attributes; `input_spec()` is the Linen one.
    Dropout and BatchNorm start in evaluation mode (Linen's `train=False` default):
    `net.train()` / `net.eval()` switch.
    """

    linen: ClassVar[type[nn.Module]]

    def _configure(self, options: dict) -> Any:
        _check_overrides(self.linen, options, type(self).__name__)
        config = self.linen(**options)  # the Linen __post_init__ checks the values
        for name in _module_fields(self.linen):
            setattr(self, name, getattr(config, name))
        self._input_spec = config.input_spec()
        return config

    def options(self) -> dict:
        """The model's configuration: the Linen module's fields and their values."""
        return {name: getattr(self, name) for name in _module_fields(self.linen)}

    def to_linen(self) -> nn.Module:
        """The Linen twin with the same configuration (its `apply` takes `zoo.nnx.variables(self)`)."""
        return self.linen(**self.options())

    def input_spec(self):
        return self._input_spec

    @property
    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

