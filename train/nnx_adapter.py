"""Train NNX modules with the engine: a Linen-shaped view of an nnx.Module.

`LinenView(net)` splits `net` once (`nnx.split`) and offers what the engine asks of a Linen
module: `apply(variables, x, train=, rngs=, mutable=, method=)` and `init`. `apply` merges the
static graphdef with the given variables inside the traced step, so the jit-compiled step is
a pure function of arrays, as for Linen (the graph is walked only while tracing). Variables
are the Linen dict {"params", "batch_stats"?} (`zoo.nnx.variables`): checkpoints, exports and
`init_from` are the Linen ones.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

import zoo.nnx


class LinenView:
    """`net` as the engine sees a Linen module (see the module docstring).

    Other attributes (e.g. `latent_dim`, `num_classes`, `heads`) are read from `net`.
    Variables other than nnx.Param and nnx.BatchStat (RNG streams, your own counters) are
    held fixed at their values in `net`; dropout keys come from the engine's `rngs`.
    """

    def __init__(self, net: nnx.Module):
        if not isinstance(net, nnx.Module):
            raise TypeError(f"expected an nnx.Module, got {type(net).__name__}")
        self.net = net
        self.graphdef, self._params, self._stats, self._rest = nnx.split(net, nnx.Param, nnx.BatchStat, ...)
        self.name = type(net).__name__

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("net", "graphdef") or name == "input_spec":
            raise AttributeError(name)  # no input_spec: the engine then calls `init`, which returns `net`'s values
        return getattr(self.net, name)

    def variables(self) -> dict:
        return zoo.nnx.variables(self.net)

    def init(self, rngs, *args, **kwargs) -> dict:
        """`net`'s current variables (an NNX module is created initialized)."""
        return self.variables()

    def merged(self, variables: dict, *, train: bool = False, rng=None) -> nnx.Module:
        """A fresh module from the graphdef and `variables` (inside a trace: traced arrays)."""
        params = jax.tree.map(lambda a: a, self._params)
        nnx.replace_by_pure_dict(params, variables["params"])
        stats = jax.tree.map(lambda a: a, self._stats)
        if variables.get("batch_stats"):
            nnx.replace_by_pure_dict(stats, variables["batch_stats"])
        rest = jax.tree.map(lambda a: a, self._rest)  # fresh Variables of this trace (reseed writes them)
        module = nnx.merge(self.graphdef, params, stats, rest)
        module.train() if train else module.eval()
        if rng is not None:
            tags = {s.key.tag for _, s in nnx.iter_graph(module) if isinstance(s, nnx.RngStream)}
            if tags:
                nnx.reseed(module, **{tag: rng for tag in tags})
        return module

    def apply(self, variables: dict, *args, train: bool = False, rngs: dict | None = None, mutable=False,
              method: str | None = None, **kwargs):
        """Linen's `apply`: out, or (out, {"batch_stats": ...}) when `mutable` is given."""
        rng = None if not rngs else next(iter(rngs.values())) if len(rngs) == 1 else rngs.get("dropout")
        module = self.merged(variables, train=train, rng=rng)
        out = getattr(module, method)(*args, **kwargs) if method else module(*args, **kwargs)
        if mutable is False:  # as Linen: mutable=[] still returns (out, {})
            return out
        stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
        return out, ({"batch_stats": stats} if jax.tree.leaves(stats) else {})

    def update_net(self, variables: dict) -> nnx.Module:
        """Writes trained `variables` into `net` (in place, eval mode) and returns it."""
        zoo.nnx.assign(self.net, variables)
        self.net.eval()
        return self.net
