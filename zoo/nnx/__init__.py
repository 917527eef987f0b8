"""zoo's models as native Flax NNX modules, with the same parameter tree as the Linen ones.

    from flax import nnx
    import zoo.nnx
    from zoo.nnx import cnn
    net = cnn.CNN(num_classes=10, rngs=nnx.Rngs(0))          # direct
    net = zoo.nnx.create("cnn", rngs=nnx.Rngs(0))              # by registry name
    net = zoo.nnx.load("cnn", pretrained="mnist")              # shipped weights (eval mode)
    logits = net(images)
    variables = zoo.nnx.variables(net)    # {"params", "batch_stats"?}: what zoo.create(name).apply,
                                          # the export writers and from_torch/to_torch use

`nnx.to_pure_dict(nnx.state(net, nnx.Param))` equals the Linen model's `variables["params"]`
(names, shapes, layouts) and the BatchNorm statistics (nnx.BatchStat) its "batch_stats", so
shipped weights, exports, checkpoints and PyTorch conversions serve both APIs. Train with
`train.fit(net, data)` or your own loop (`nnx.Optimizer(net, tx, wrt=nnx.Param)`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen
from flax import nnx

from zoo import registry
from zoo.nnx import autoencoder, cnn, gan, mlp, multitask, rnn
from zoo.nnx.layers import Conv, ConvTranspose, LSTMLayer, ZooModule, variables

__all__ = [
    "Conv",
    "ConvTranspose",
    "LSTMLayer",
    "ZooModule",
    "autoencoder",
    "cnn",
    "create",
    "from_variables",
    "gan",
    "list_models",
    "load",
    "mlp",
    "multitask",
    "rnn",
    "twin_of",
    "variables",
]

_TWINS = {cls.linen: cls for module in (autoencoder, cnn, gan, mlp, multitask, rnn)
          for cls in vars(module).values()
          if isinstance(cls, type) and issubclass(cls, ZooModule) and cls is not ZooModule}


def twin_of(linen_class: type[linen.Module]) -> type[ZooModule]:
    """The NNX class of a zoo Linen model class (TypeError if it has none)."""
    try:
        return _TWINS[linen_class]
    except KeyError:
        raise TypeError(f"{getattr(linen_class, '__name__', linen_class)} has no zoo NNX twin") from None


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """The registry's names (every registered model with an NNX twin), as `zoo.list_models`."""
    return [n for n in registry.list_models(pattern, pretrained=pretrained) if registry.get_spec(n).module in _TWINS]


def create(name: str, *, rngs: nnx.Rngs, **overrides: Any) -> ZooModule:
    """A new NNX module for registry entry `name`; keyword overrides replace its defaults.

    Raises as `zoo.create`: UnknownModelError, TypeError (unknown option), ValueError (bad value).
    """
    spec = registry.get_spec(name)
    registry._check_overrides(spec.module, overrides, f"create({name!r})")
    return twin_of(spec.module)(rngs=rngs, **{**spec.defaults, **overrides})


def _pure(tree) -> dict:
    return nnx.to_pure_dict(tree)


def _paths(tree) -> dict:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assign(net: nnx.Module, values: Mapping) -> nnx.Module:
    """Sets `net`'s parameters (and BatchNorm statistics) from a Linen variables dict, in place.

    Strict: every path must exist on both sides with the same shape; a mismatch raises
    ValueError naming the path, the expected and the found shape. Returns `net`.
    """
    for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(net, kind)
        have, given = _paths(_pure(state)), _paths(values.get(collection, {}))
        if collection == "batch_stats" and not have and not given:
            continue
        for path in sorted(set(have) | set(given)):
            if path not in given:
                raise ValueError(f"{collection}/{path}: missing from the given variables (expected shape {tuple(have[path].shape)})")
            if path not in have:
                raise ValueError(f"{collection}/{path}: not a variable of {type(net).__name__} (found shape {tuple(np.shape(given[path]))})")
            if tuple(have[path].shape) != tuple(np.shape(given[path])):
                raise ValueError(f"{collection}/{path}: expected shape {tuple(have[path].shape)}, found {tuple(np.shape(given[path]))}")
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(values.get(collection, {}))))
        nnx.update(net, state)
    return net


def from_variables(name_or_model: str | linen.Module, values: Mapping, **overrides: Any) -> ZooModule:
    """The NNX module of a registry name (with `overrides`) or of a zoo Linen module, holding
    `values` (a Linen variables dict, e.g. from `zoo.load` or `zoo.init`). Evaluation mode."""
    if isinstance(name_or_model, str):
        net = create(name_or_model, rngs=nnx.Rngs(0), **overrides)
    else:
        options = {f: getattr(name_or_model, f) for f in registry._module_fields(type(name_or_model))}
        net = twin_of(type(name_or_model))(rngs=nnx.Rngs(0), **{**options, **overrides})
    return assign(net, values)


def load(name: str, *, pretrained: str | None = None, path: str | None = None, num_classes: int | None = None,
         **kwargs: Any) -> ZooModule:
    """Shipped (`pretrained=TAG`) or exported (`path=`) weights as an NNX module in eval mode.

    The same loading, verification and strict checks as `zoo.load` (which it calls with
    these arguments, e.g. `num_classes=` for a fresh head); only the returned object differs.
    """
    from zoo.pretrained import load as load_linen

    model, values = load_linen(name, pretrained=pretrained, path=path, num_classes=num_classes, **kwargs)
    return from_variables(model, values)
