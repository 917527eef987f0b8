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


def init_from(source: str, model, fresh: dict, *, log=print, class_names=None) -> dict:
    """Loads `source` ("name.tag" shipped weights, or an export dir / URL) and merges it into `fresh`.

    `class_names`: this run's classes in label order (`config.class_names_of`). Where they differ
    from the source's, the output head is re-initialised and the log says which classes are new,
    also when only their number matches (the loaded head would silently map outputs to other classes).
    """
    from zoo.files import is_url_path
    from zoo.pretrained import load, read_manifest

    check_source(source)
    if Path(source).exists() or is_url_path(source):
        manifest = read_manifest(None, path=source)
        _, loaded = load(manifest["model"], path=source)
    else:
        name, sep, tag = source.rpartition(".")
        if not sep:
            raise ValueError(f"--init-from expects NAME.TAG (e.g. cnn.mnist) or an export dir, got {source!r}")
        manifest = read_manifest(name, pretrained=tag)
        _, loaded = load(name, pretrained=tag)
    log(f"init-from: {source}")
    if class_names and (theirs := source_class_names(manifest)) and list(theirs) != list(class_names):
        log(class_change(source, list(theirs), list(class_names)))
        loaded = {col: _without_heads(tree) if col == "params" else tree for col, tree in loaded.items()}
    return merge_pretrained(fresh, loaded, log=log)


def source_class_names(manifest: dict) -> list[str] | None:
    """The class names of exported weights: the manifest's, else the registry's names of its
    model where they fit its head; None where its outputs are not one head of named classes."""
    from zoo.formats.common import model_from_manifest

    if manifest.get("class_names"):
        return list(manifest["class_names"])
    spec = zoo.get_spec(manifest["model"])
    n = getattr(model_from_manifest(manifest), "num_classes", None)
    names = spec.class_names
    if n is None or not isinstance(names, tuple) or len(names) != (2 if n == 1 else n):
        return None
    return list(names)


def class_change(source: str, theirs: list[str], ours: list[str]) -> str:
    """The init-from line saying how this run's classes differ from the source's."""
    def shown(names):
        return ", ".join(names[:12]) + (f", ... ({len(names)} classes)" if len(names) > 12 else "") or "none"

    new = [n for n in ours if n not in theirs]
    if not new and len(ours) == len(theirs):
        how = "the same classes in another order"
    elif len(ours) == len(theirs):
        how = f"as many classes, but new: {shown(new)}"
    else:
        how = f"new: {shown(new)}"
    return (f"init-from: this run's classes ({shown(ours)}) differ from {source}'s ({shown(theirs)}): {how}; "
            "the output head is re-initialised")


def _without_heads(params: dict) -> dict:
    """`params` without its output heads (zoo.finetune.is_head), so they are initialised afresh."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    return unflatten_dict({p: v for p, v in flatten_dict(dict(params)).items() if not zoo.finetune.is_head(p)})
