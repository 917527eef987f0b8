"""`--init-from`: start training from pretrained or exported weights.

Every parameter must match the new model in path and shape, except the output head
("head..." modules): when num_classes differs, the head is freshly initialized and the
replacement is logged, never silent. Anything else that differs is an error naming the
parameter path and both shapes.
"""

from __future__ import annotations

from pathlib import Path

import zoo


def merge_pretrained(fresh: dict, loaded: dict, *, log=print) -> dict:
    """`fresh` variables with every leaf replaced by `loaded`'s, new heads excepted (see module doc)."""
    try:
        merged, replaced = zoo.finetune.merge_pretrained(fresh, loaded)
    except ValueError as e:
        raise ValueError(f"--init-from: {e}") from None
    if replaced:
        log("init-from: freshly initialized (new head): " + "; ".join(replaced))
    return merged


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
