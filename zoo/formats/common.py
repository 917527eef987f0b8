"""What the export formats share: the manifest's fields, the versions recorded, the model a
manifest names, and the overwrite rule (only an earlier zoo export is ever replaced)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax.core import unfreeze

from zoo.files import file_kind
from zoo.registry import create
from zoo.trees import as_variables, check_finite, check_tree, expected_variables
from zoo.version import __version__


FORMAT = 1
MANIFEST = "manifest.json"  # in an export dir, and in the shipped weights dir (the index)


def from_json(value: Any) -> Any:
    """JSON lists back to the tuples module fields use."""
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    return value


def to_json(value: Any, what: str) -> Any:
    """`value` as JSON (tuples become lists); raises TypeError if it is not JSON-able."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable: {e}") from None


def model_from_manifest(manifest: Mapping) -> nn.Module:
    """The registry model an export's manifest names, built with its `model_overrides`."""
    if not isinstance(manifest.get("model"), str):
        raise ValueError(f"an export manifest names its registry model in 'model', got {manifest.get('model')!r}")
    overrides = manifest.get("model_overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"an export manifest's 'model_overrides' must be a JSON object of model fields, "
                         f"got {type(overrides).__name__} {overrides!r}")
    return create(manifest["model"], **from_json(overrides))


def versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "zoo": __version__}
    for package, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("orbax", "orbax-checkpoint"), ("numpy", "numpy")):
        try:
            versions[package] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def refuse(path: Path, why: str) -> FileExistsError:
    return FileExistsError(f"refusing to overwrite {path}: {why}; overwrite replaces only an earlier zoo export "
                           f"(choose another output path)")


def replaceable(path: Path, overwrite: bool) -> int | None:
    """The lstat mode of an existing `path` that `overwrite` may replace once its format's own
    check passes; None where nothing is there. FileExistsError without `overwrite`, or for a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    if stat.S_ISLNK(mode):
        raise refuse(path, "it is a symlink")
    return mode


def check_file_overwrite(path: str | os.PathLike, fmt: str, overwrite: bool, ours: Callable[[Path], bool]) -> None:
    """A one-file format's `check_overwrite`: `path` is free, or (with `overwrite`) a regular file
    that `ours` recognizes as a zoo export of `fmt`."""
    path = Path(path).absolute()
    mode = replaceable(path, overwrite)
    if mode is None:
        return
    if not stat.S_ISREG(mode):
        raise refuse(path, f"it is {'a directory' if stat.S_ISDIR(mode) else file_kind(mode)}, not a .{fmt} file")
    if not ours(path):
        raise refuse(path, f"it is not a {fmt} file written by zoo")


def write_file_atomic(path: Path, overwrite: bool, write, fmt: str, ours: Callable[[Path], bool]) -> Path:
    """Calls `write(tmp_path)` for a temporary sibling of `path`, then renames it into place
    (replacing only an earlier zoo export of `fmt`, see `check_file_overwrite`)."""
    path = Path(path).absolute()
    check_file_overwrite(path, fmt, overwrite, ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        check_file_overwrite(path, fmt, overwrite, ours)  # still ours after the (slow) write
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_export(path, suffix: str, kind: str, model_name: str, variables: Mapping,
                 model_overrides: Mapping | None) -> tuple[dict, nn.Module, dict]:
    """A one-file export's checks: the suffix, JSON-able overrides, the strict tree check.
    Returns (overrides, model, variables as host numpy)."""
    if not str(path).endswith(suffix):
        raise ValueError(f"{kind} must be a file ending in {suffix}, got {str(path)!r}")
    overrides = to_json(dict(model_overrides or {}), "model_overrides")
    return (overrides, *checked_host_variables(model_name, variables, overrides))


def json_metadata(model_name: str, overrides: dict, metric: Mapping | None,
                  class_names=None) -> dict[str, str]:
    """The string metadata both one-file formats carry: model, overrides, metric, versions and,
    where given, class names (JSON)."""
    return {
        "model": model_name,
        "model_overrides": json.dumps(overrides, sort_keys=True),
        "metric": json.dumps(to_json(dict(metric), "metric") if metric is not None else None, sort_keys=True),
        "versions": json.dumps(versions(), sort_keys=True),
        **({"class_names": json.dumps(check_class_names(class_names))} if class_names is not None else {}),
    }


def check_class_names(names) -> list[str]:
    """`names` as the list of distinct strings an export records (ValueError otherwise)."""
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct non-empty strings in label order, got {names!r}")
    return list(names)


def checked_host_variables(model_name: str, variables: Mapping, overrides: dict) -> tuple[nn.Module, dict]:
    """(model, variables as host numpy), after the strict tree check against the model.
    `variables` may be an nnx.Module: its own variables are written (`zoo.trees.as_variables`)."""
    model = model_from_manifest({"model": model_name, "model_overrides": overrides})
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), unfreeze(as_variables(variables)))
    what = f"variables do not match model {model_name!r}" + (f" with overrides {overrides}" if overrides else "")
    check_tree(expected_variables(model), host, what)
    check_finite(host, f"variables of {model_name!r}")  # an export of them would predict NaN
    return model, host
