"""Fine-tuning helpers: which parameters train, and pretrained weights under a new head.

    labels = zoo.param_labels(variables, trainable="head")        # {"head": {"kernel": "trainable", ...}, ...}
    tx = optax.multi_transform({"trainable": optax.adam(1e-3), "frozen": optax.set_to_zero()}, labels)
"""

from __future__ import annotations

import fnmatch
from typing import Mapping, Sequence

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

__all__ = ["param_labels", "merge_pretrained", "is_head"]


def _patterns(trainable: str | Sequence[str]) -> list[str]:
    patterns = [p.strip() for p in (trainable.split(",") if isinstance(trainable, str) else trainable)]
    patterns = [p.strip("/") for p in patterns if p.strip("/")]
    if not patterns:
        raise ValueError(f"trainable must name at least one parameter pattern, got {trainable!r}")
    return patterns


def param_labels(variables_or_params: Mapping, trainable: str | Sequence[str] = "head") -> dict:
    """A label tree for `optax.multi_transform`: "trainable" or "frozen" per parameter.

    Args:
      variables_or_params: a variables dict (its "params" are used) or a params tree.
      trainable: patterns over parameter paths such as "head/kernel" (a list, or one string
        of comma-separated patterns). A pattern matches a path by fnmatch ("conv_*/kernel")
        or as a prefix of whole path parts ("head" matches "head/kernel" and "head/bias").

    Returns:
      The params tree with each leaf replaced by "trainable" or "frozen".

    Raises:
      ValueError: a pattern matches no parameter (the message lists the parameter paths).
    """
    params = variables_or_params.get("params", variables_or_params) if isinstance(variables_or_params, Mapping) else variables_or_params
    flat = flatten_dict(dict(params), sep="/")
    patterns = _patterns(trainable)

    def matches(path: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + "/") or path == pattern

    unused = [p for p in patterns if not any(matches(path, p) for path in flat)]
    if unused:
        raise ValueError(f"trainable pattern(s) {unused} match no parameter; the parameters are: {', '.join(flat)}")
    labels = {path: "trainable" if any(matches(path, p) for p in patterns) else "frozen" for path in flat}
    return unflatten_dict(labels, sep="/")


def is_head(path: tuple[str, ...]) -> bool:
    """Whether a parameter path belongs to an output head ("head", or "head_<task>" of multitask)."""
    return any(part == "head" or part.startswith("head_") for part in path)


def merge_pretrained(fresh: Mapping, loaded: Mapping, *, what: str = "the pretrained weights") -> tuple[dict, list[str]]:
    """`fresh` variables with every leaf taken from `loaded`, except output heads whose shape differs.

    Returns (merged variables as numpy, the paths freshly initialized with their shapes).
    Anything else that differs (a missing, extra or reshaped non-head leaf) raises one
    ValueError naming each path and both shapes: strict, with declared gaps only.
    """
    fresh_flat, loaded_flat = flatten_dict(jax.device_get(dict(fresh))), flatten_dict(jax.device_get(dict(loaded)))
    merged, replaced, problems = {}, [], []
    for path, leaf in fresh_flat.items():
        name = "/".join(map(str, path))
        src = loaded_flat.get(path)
        if src is not None and np.shape(src) == np.shape(leaf):
            merged[path] = np.asarray(src, np.asarray(leaf).dtype)
        elif is_head(path):
            replaced.append(f"{name} (new)" if src is None else f"{name} {np.shape(src)} -> {np.shape(leaf)}")
            merged[path] = np.asarray(leaf)
        elif src is None:
            problems.append(f"{name}: missing in {what} (the model expects shape {np.shape(leaf)})")
        else:
            problems.append(f"{name} has shape {np.shape(src)} in {what} but the model expects {np.shape(leaf)}")
    problems += [f"{'/'.join(map(str, p))}: in {what} but not in the model" for p in loaded_flat if p not in fresh_flat]
    if problems:
        raise ValueError("; ".join(problems))
    return unflatten_dict(merged), replaced
