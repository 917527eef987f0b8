"""One .safetensors file (format "safetensors"): the variables under flat keys
"params/conv_0/kernel", the manifest's fields in the header's `__metadata__`. `zoo.load` reads it
with the same strict checks as an export directory; reading runs no code (no pickle).
safetensors is imported inside the functions, so `import zoo` stays light."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from flax import linen as nn
from flax.traverse_util import flatten_dict

from zoo.files import check_regular_file, os_error_of
from zoo.formats.common import check_class_names, check_file_overwrite, file_export, json_metadata, write_file_atomic
from zoo.trees import check_finite, check_tree, expected_variables

__all__ = ["SAFETENSORS_SUFFIX", "SAFETENSORS_FORMAT", "write_safetensors", "read_safetensors", "restore_safetensors",
           "check_overwrite"]


SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_FORMAT = "zoo-safetensors-1"  # __metadata__["format"]: what this module writes and reads


def written_by_zoo(path: Path) -> bool:
    """Whether the regular file `path` is a zoo safetensors export (its metadata says so)."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="np") as f:
            return (f.metadata() or {}).get("format") == SAFETENSORS_FORMAT
    except Exception:  # noqa: BLE001 - unreadable or another format: not ours, so not replaced
        return False


def check_overwrite(path: str | os.PathLike, overwrite: bool = True) -> None:
    """FileExistsError unless `path` is free or (with `overwrite`) a .safetensors file zoo wrote."""
    check_file_overwrite(path, "safetensors", overwrite, written_by_zoo)


def write_safetensors(
    path: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `variables` of registry model `model_name` as one .safetensors file.

    Tensors are stored under flat keys ("params/conv_0/kernel", "batch_stats/..."); the
    header's `__metadata__` (string values) holds "format", "model", "model_overrides"
    (JSON), "dataset" (if given), "metric" (JSON), "class_names" (JSON, if given: the names of
    the output classes in label order), "versions" (JSON) and "created". `zoo.load(model_name, path=<file>)`
    reads it back with the same strict checks as an Orbax export.

    Returns:
      The absolute path of the file.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not an earlier zoo
        export of this format (see `check_overwrite`).
      ValueError: `path` does not end in .safetensors, or `variables` do not match the model.
      OSError: the file cannot be written (e.g. the disk is full); nothing is left behind.
    """
    overrides, _, host = file_export(path, SAFETENSORS_SUFFIX, "a safetensors export", model_name, variables,
                                      model_overrides)
    check_overwrite(path, overwrite)
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    def save(tmp):
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:
            if (error := os_error_of(e, f"cannot write {Path(path).absolute()}")) is None:
                raise
            raise error from e

    tensors = {key: np.ascontiguousarray(leaf) for key, leaf in flatten_dict(host, sep="/").items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        **json_metadata(model_name, overrides, metric, class_names),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if dataset is not None:
        metadata["dataset"] = dataset  # a plain string; absent when unknown
    return write_file_atomic(path, overwrite, save, "safetensors", written_by_zoo)


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(manifest, flat variables) of a .safetensors export, without checking them against a model.

    The manifest has the keys of an export directory's manifest.json ("model",
    "model_overrides", "dataset", "metric", "class_names", "versions", "created"), decoded from JSON. Reading
    a safetensors file runs no code (no pickle): a header and raw little-endian arrays.

    Raises:
      ValueError: not a readable safetensors file (a corrupt or tampered header), no zoo
        metadata, or a metadata value that is not the JSON this module writes.
    """
    from safetensors import SafetensorError, safe_open

    path = check_regular_file(path, "a .safetensors file")
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            flat = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise ValueError(f"{path}: not a zoo safetensors export: its __metadata__ must have "
                         f"format={SAFETENSORS_FORMAT!r}, got {metadata.get('format')!r}")
    manifest = {key: metadata.get(key) for key in ("format", "model", "dataset", "created")}
    for key in ("model_overrides", "metric", "versions", "class_names"):
        try:
            manifest[key] = json.loads(metadata.get(key, "null"))
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: __metadata__ {key!r} must be JSON, got {metadata[key][:200]!r} "
                             f"({e if isinstance(e, json.JSONDecodeError) else 'nested too deeply'})") from None
    if manifest["class_names"] is not None:
        try:
            manifest["class_names"] = check_class_names(manifest["class_names"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: __metadata__ 'class_names' must be a JSON list of distinct names, "
                             f"got {metadata['class_names'][:200]!r}") from None
    if not isinstance(manifest["model_overrides"], (dict, type(None))):
        raise ValueError(f"{path}: __metadata__ 'model_overrides' must be a JSON object, got {manifest['model_overrides']!r}")
    return manifest, flat


def restore_safetensors(path: str | os.PathLike, model: nn.Module, name: str, flat: Mapping) -> dict:
    """The nested variables dict of `flat` (from `read_safetensors`), strictly checked against `model`.

    Raises:
      ValueError: the tensors differ from the model's variables (each parameter path with
        the expected and the found shape and dtype), or hold NaN or inf (`check_finite`).
    """
    from flax.traverse_util import unflatten_dict

    check_tree(expected_variables(model), flat, f"{path} does not match model {name!r}")
    check_finite(flat, str(path))
    return unflatten_dict(dict(flat), sep="/")
