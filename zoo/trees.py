"""Strict checks of variable trees: every path, shape and dtype against what a model expects, and finite."""

from __future__ import annotations

import sys
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

from zoo.registry import init

__all__ = ["as_variables", "check_tree", "expected_variables", "check_finite"]


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    dtype = getattr(leaf, "dtype", None)
    return tuple(np.shape(leaf)), (np.dtype(dtype) if dtype is not None else None)


def _describe(leaf: Any) -> str:
    shape, dtype = _shape_dtype(leaf)
    return f"shape {shape} {dtype if dtype is not None else '?'}"


def check_tree(expected: Mapping, found: Mapping, what: str) -> None:
    """Raises one ValueError listing every path where `found` differs from `expected`.

    Both are nested (or already flat "a/b") dicts of array-likes: anything with .shape and
    .dtype (arrays, jax.ShapeDtypeStruct, orbax ArrayMetadata). A leaf must match in path,
    shape and dtype; paths are written "params/conv_0/kernel".

    Args:
      expected: what the caller needs (the model's variables, a restore target).
      found: what is there (a checkpoint's metadata, variables to export).
      what: the message's first line, e.g. "checkpoint X does not match model 'cnn'".
    """
    exp = flatten_dict(expected, sep="/")
    got = flatten_dict(found, sep="/")
    problems = []
    for path in sorted(exp.keys() | got.keys()):
        if path not in got:
            problems.append(f"{path}: missing (expected {_describe(exp[path])})")
        elif path not in exp:
            problems.append(f"{path}: unexpected (found {_describe(got[path])})")
        else:
            (e_shape, e_dtype), (g_shape, g_dtype) = _shape_dtype(exp[path]), _shape_dtype(got[path])
            if e_shape != g_shape or e_dtype is None or g_dtype != e_dtype:
                problems.append(f"{path}: expected {_describe(exp[path])}, found {_describe(got[path])}")
    if problems:
        raise ValueError(f"{what}:\n  " + "\n  ".join(problems))


def _nonfinite_counts(leaf: Any) -> tuple[int, int]:
    """(NaN count, inf count) of a floating-point leaf: numpy on this host, else a device reduction
    (a leaf sharded over other processes cannot be fetched whole)."""
    if getattr(leaf, "is_fully_addressable", True):
        a = np.asarray(jax.device_get(leaf))
        return int(np.isnan(a).sum()), int(np.isinf(a).sum())
    import jax.numpy as jnp

    nan, inf = jax.jit(lambda a: (jnp.isnan(a).sum(), jnp.isinf(a).sum()))(leaf)
    return int(nan), int(inf)


def check_finite(variables: Mapping, what: str) -> None:
    """Raises one ValueError naming every floating-point leaf of `variables` that holds NaN or inf.

    Such weights predict NaN for every input (argmax class 0), so they are refused wherever
    weights come in: loading, exporting, `--init-from`. Leaves are named "params/head/kernel",
    with their NaN and inf counts.

    Args:
      variables: a nested (or flat "a/b") dict of arrays.
      what: the start of the message, e.g. "cnn.safetensors".
    """
    import jax.numpy as jnp

    problems = []
    for path, leaf in sorted(flatten_dict(unfreeze(dict(variables)), sep="/").items()):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        nan, inf = _nonfinite_counts(leaf)
        if nan or inf:
            counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
            problems.append(f"{path} ({counts} of {int(np.size(leaf))} values)")
    if problems:
        shown = problems[:10] + ([f"and {len(problems) - 10} more leaves"] if len(problems) > 10 else [])
        raise ValueError(f"{what}: non-finite weights (NaN or inf) in {', '.join(shown)}; refusing them")


def expected_variables(model: nn.Module) -> dict:
    """The model's variables as a tree of jax.ShapeDtypeStruct (no memory, no device)."""
    shapes = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)


def as_variables(obj: Any) -> Any:
    """`obj` as a Linen variables dict: a mapping is returned as it is; an `nnx.Module` (a
    `zoo.nnx` model or your own) gives {"params": its nnx.Param state, "batch_stats": its
    nnx.BatchStat state, if any} as plain dicts, the one tree both APIs share."""
    nnx = sys.modules.get("flax.nnx")  # an nnx.Module can only exist once flax.nnx is imported
    if nnx is None or not isinstance(obj, nnx.Module):
        return obj
    out = {"params": nnx.to_pure_dict(nnx.state(obj, nnx.Param))}
    stats = nnx.to_pure_dict(nnx.state(obj, nnx.BatchStat))
    if jax.tree.leaves(stats):
        out["batch_stats"] = stats
    return out
