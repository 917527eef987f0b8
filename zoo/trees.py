"""Strict checks of variable trees: every path, shape and dtype against what a model expects."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax.traverse_util import flatten_dict

from zoo.registry import init

__all__ = ["check_tree", "expected_variables"]


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


def expected_variables(model: nn.Module) -> dict:
    """The model's variables as a tree of jax.ShapeDtypeStruct (no memory, no device)."""
    shapes = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)
