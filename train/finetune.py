"""`--init-from`: start training from pretrained or exported weights.

Every parameter must match the new model in path and shape, except the output head
("head..." modules): when num_classes differs, the head is freshly initialized and the
replacement is logged, never silent. Anything else that differs is an error naming the
parameter path and both shapes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict


def _is_head(path: tuple[str, ...]) -> bool:
    return any(part == "head" or part.startswith("head_") for part in path)


def merge_pretrained(fresh: dict, loaded: dict, *, log=print) -> dict:
    """`fresh` variables with every leaf replaced by `loaded`'s, heads excepted (see module doc)."""
    fresh_flat, loaded_flat = flatten_dict(jax.device_get(fresh)), flatten_dict(jax.device_get(loaded))
    merged, replaced = {}, []
    for path, leaf in fresh_flat.items():
        name = "/".join(path)
        if path not in loaded_flat:
            if _is_head(path):
                replaced.append(f"{name} (new)")
                merged[path] = leaf
                continue
            raise ValueError(f"--init-from: the pretrained weights have no {name} (expected shape {np.shape(leaf)})")
        src = loaded_flat[path]
        if np.shape(src) != np.shape(leaf):
            if not _is_head(path):
                raise ValueError(
                    f"--init-from: {name} has shape {np.shape(src)} in the pretrained weights "
                    f"but the model expects {np.shape(leaf)}"
                )
            replaced.append(f"{name} {np.shape(src)} -> {np.shape(leaf)}")
            merged[path] = leaf
        else:
            merged[path] = np.asarray(src, np.asarray(leaf).dtype)
    extra = sorted("/".join(p) for p in loaded_flat if p not in fresh_flat)
    if extra:
        raise ValueError(f"--init-from: the pretrained weights have parameters the model lacks: {', '.join(extra)}")
    if replaced:
        log("init-from: freshly initialized (new head): " + "; ".join(replaced))
    return unflatten_dict(merged)


def init_from(source: str, model, fresh: dict, *, log=print) -> dict:
    """Loads `source` ("name.tag" shipped weights, or an export dir / URL) and merges it into `fresh`."""
    from zoo.pretrained import load

    if Path(source).exists() or "://" in source:
        _, loaded = load(_model_name_of(source), path=source)
    else:
        name, sep, tag = source.rpartition(".")
        if not sep:
            raise ValueError(f"--init-from expects NAME.TAG (e.g. cnn.mnist) or an export dir, got {source!r}")
        _, loaded = load(name, pretrained=tag)
    log(f"init-from: {source}")
    return merge_pretrained(fresh, loaded, log=log)


def _model_name_of(path: str) -> str:
    from zoo.pretrained import read_manifest

    return read_manifest(None, path=path)["model"]
