"""The pretrained weights directory: where it is, its index, and publishing an export into it.

    from zoo.weights_index import publish
    publish("runs/cnn/export", "mnist")      # then zoo.load("cnn", pretrained="mnist")

The directory (`zoo/weights/`, or `$ZOO_WEIGHTS_DIR`) holds one export directory per set of
weights, `<model>.<tag>/`, and an index, manifest.json = {"format": 1, "weights": {"cnn.mnist":
{"dir", "manifest_sha256", "metric", "size_bytes"}}}, which pins each export's manifest.json,
so verification chains from the installed package (zoo/pretrained.py loads them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.files import check_sha256, is_safe_relpath, list_files, sha256_file, write_json_atomic
from zoo.formats.common import FORMAT, MANIFEST, model_from_manifest
from zoo.formats.orbax_export import move_into_place, restore_variables, verify_export

__all__ = ["weights_dir", "read_index", "check_tag", "publish"]


def weights_dir() -> Path:
    """The pretrained weights directory: `$ZOO_WEIGHTS_DIR` if set, else the package's `weights/`."""
    env = os.environ.get("ZOO_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).parent / "weights"


default_weights_dir = weights_dir  # publish()'s parameter of that name hides the function


_TAG = re.compile(r"[A-Za-z0-9_-]+")  # no dots: "<model>.<tag>" must split unambiguously


def check_tag(tag: Any) -> str:
    """`tag` if it is a valid pretrained tag (letters, digits, '_', '-'); else ValueError."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise ValueError(f"tag must be letters, digits, '_' or '-', got {tag!r}")
    return tag


def read_index(directory: str | os.PathLike) -> dict:
    """The shipped-weights index `directory/manifest.json` (an empty index if there is none).

    Raises:
      ValueError: not format 1, or an entry whose "dir" is not its own key or whose
        "manifest_sha256" is not 64 hex digits.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "weights": {}}
    index = json.loads(path.read_text())
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("weights"), dict):
        raise ValueError(f"{path}: not a zoo weights manifest of format {FORMAT}")
    for key, entry in index["weights"].items():
        if not isinstance(entry, dict) or entry.get("dir") != key or not is_safe_relpath(key) or "/" in key:
            raise ValueError(f"{path}: entry {key!r} must be a dict whose 'dir' is {key!r}, got {entry!r}")
        check_sha256(entry.get("manifest_sha256"))
    return index


def publish(
    export_dir: str | os.PathLike,
    tag: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Publishes an export as pretrained weights: copies it to `<model>.<tag>/` and pins it in the index.

    The export is verified and restored once first (strict tree check). Afterwards
    `zoo.load(model, pretrained=tag)` finds it; commit the new directory and manifest.json.

    Args:
      export_dir: an export written by `write_export`.
      tag: the pretrained tag, usually the dataset, e.g. "mnist" (letters, digits, _ and -).
      weights_dir: the weights directory to update; default `weights_dir()`.
      overwrite: replace weights already published under this tag.

    Returns:
      The new index entry: {"dir", "manifest_sha256", "metric", "size_bytes"}.
    """
    check_tag(tag)
    export_dir = Path(export_dir)
    manifest = verify_export(export_dir)
    model = manifest.get("model")
    restore_variables(export_dir, model_from_manifest(manifest), model)
    weights = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    weights.mkdir(parents=True, exist_ok=True)
    index = read_index(weights)
    key = f"{model}.{tag}"
    if key in index["weights"] and not overwrite:
        raise FileExistsError(f"{key} is already shipped in {weights} (pass overwrite=True to replace it)")

    tmp = Path(tempfile.mkdtemp(dir=weights, prefix=f".{key}.tmp-"))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(export_dir, tmp, symlinks=True)
        verify_export(tmp)
        move_into_place(tmp, weights / key, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = weights / key
    entry = {
        "dir": key,
        "manifest_sha256": sha256_file(final / MANIFEST),
        "metric": manifest.get("metric"),
        "size_bytes": sum((final / rel).stat().st_size for rel in list_files(final)),
    }
    index["weights"][key] = entry
    write_json_atomic(weights / MANIFEST, index)
    return entry
