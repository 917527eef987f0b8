"""`--init-from`: start training from pretrained or exported weights.

Every parameter must match the new model in path and shape, except the output head
("head..." modules): when num_classes differs, the head is freshly initialized and the
replacement is logged, never silent. Anything else that differs is an error naming the
parameter path and both shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

import zoo
from train.config import flag

_NAME_TAG = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_-]+")  # cnn.mnist, char_lstm.tiny_shakespeare


def check_source(source: str) -> None:
    """Raises ValueError unless `source` can name weights: an existing path, an http(s) URL or
    NAME.TAG of shipped weights. Cheap (nothing is read), so it runs before any work."""
    from zoo.files import is_url_path

    if is_url_path(source) or Path(source).exists():
        return
    if not _NAME_TAG.fullmatch(source):
        raise ValueError(f"{flag('init_from')} {source!r}: no such file or directory; expected NAME.TAG of shipped "
                         "weights (e.g. cnn.mnist), an export directory, a .safetensors file or an http(s) URL")


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
    from zoo.files import is_url_path
    from zoo.pretrained import load

    check_source(source)
    if Path(source).exists() or is_url_path(source):
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
