"""Export trained variables as a self-describing checkpoint that `zoo.load` verifies and restores.

    from train.export import export, archive, ship
    out = export("runs/cnn/export", "cnn", state.variables(), dataset="mnist",
                 metric={"name": "accuracy", "value": 0.991, "split": "test"},
                 command="zoo train cnn --dataset mnist")
    model, variables = zoo.load("cnn", path=out)
    sha = archive(out, "cnn-mnist.tar.gz")        # host it, then zoo.load("cnn", path=url, sha256=sha)
    ship(out, "mnist")                            # copy into zoo/weights: zoo.load("cnn", pretrained="mnist")

The export format (directory layout and manifest.json) is described in zoo/pretrained.py and
zoo/weights/README.md. Writes are atomic: everything goes to a temporary sibling that is
renamed into place once complete, so a reader never sees a half-written export.
"""

from __future__ import annotations

import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.core import unfreeze

import zoo
from zoo import pretrained

__all__ = ["export", "archive", "ship"]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "zoo": zoo.__version__}
    for package, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("orbax", "orbax-checkpoint"), ("numpy", "numpy")):
        try:
            versions[package] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _to_json(value: Any, what: str) -> Any:
    """`value` as JSON (tuples become lists); raises TypeError if it is not JSON-able."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable: {e}") from None


def _file_hashes(directory: Path) -> dict[str, str]:
    files, links = pretrained._files_on_disk(directory)
    if links:
        raise ValueError(f"{directory}: symlinks cannot be exported: {links}")
    return {rel: pretrained._sha256(directory / rel) for rel in sorted(files) if rel != pretrained.MANIFEST}


def _write_json(path: Path, data: Any) -> None:
    """Writes `path` atomically (a temporary file in the same directory, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Renames the complete directory `tmp` to `final`, replacing it if `overwrite`.

    POSIX cannot swap two directories atomically, so an existing `final` is first renamed
    aside: readers see the old export, briefly none, then the new one; never a mix.
    """
    if not final.exists():
        os.rename(tmp, final)
        return
    if not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
    os.rename(final, old / final.name)
    os.rename(tmp, final)
    shutil.rmtree(old)


def export(
    directory: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    command: str | Sequence[str] | None = None,
    train_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `variables` of registry model `model_name` as an exported checkpoint directory.

    Args:
      directory: the export directory to create (missing parents are created).
      model_name: registry name; `zoo.load(model_name, path=directory)` rebuilds the model.
      variables: the variables dict ({"params": ..., "batch_stats": ...}); jax or numpy
        arrays, gathered to this host.
      model_overrides: keyword arguments of `zoo.create` (JSON-able; tuples are stored as
        lists and turned back into tuples on load).
      dataset: the dataset the weights were trained on, e.g. "mnist".
      metric: e.g. {"name": "accuracy", "value": 0.991, "split": "test"}.
      command: the `zoo train ...` command that produced the weights (a string or argv).
      train_config: the resolved training config (JSON-able); `zoo eval --pretrained`
        rebuilds the same data view (dataset, seq_len, ...) from it.
      overwrite: replace an existing `directory` (atomically, see `_move_into_place`).

    Returns:
      The absolute path of the export.

    Raises:
      FileExistsError: `directory` exists and `overwrite` is False.
      ValueError: `variables` do not match the model (each path with expected and found shape).
    """
    directory = Path(directory).absolute()  # orbax needs absolute paths
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists (pass overwrite=True to replace it)")
    overrides = _to_json(dict(model_overrides or {}), "model_overrides")
    model = zoo.create(model_name, **pretrained._from_json(overrides))
    if metric is not None and not {"name", "value"} <= set(metric):
        raise ValueError(f"metric needs at least 'name' and 'value' (and ideally 'split'), got {dict(metric)}")
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), unfreeze(variables))
    what = f"variables do not match model {model_name!r}" + (f" with overrides {overrides}" if overrides else "")
    pretrained.check_tree(pretrained.expected_variables(model), host, what)
    if command is not None and not isinstance(command, str):
        command = shlex.join(command)

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        pretrained._checkpointer().save(tmp / pretrained.PARAMS_DIR, args=ocp.args.PyTreeSave(host))
        manifest = {
            "format": pretrained.FORMAT,
            "model": model_name,
            "model_overrides": overrides,
            "files": _file_hashes(tmp),
            "dataset": dataset,
            "metric": _to_json(dict(metric), "metric") if metric is not None else None,
            "command": command,
            "train_config": _to_json(dict(train_config), "train_config") if train_config is not None else None,
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_json(tmp / pretrained.MANIFEST, manifest)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _move_into_place(tmp, directory, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def archive(export_dir: str | os.PathLike, archive_path: str | os.PathLike) -> str:
    """Packs an export into a reproducible tar.gz (one top directory) and returns its sha256.

    Host the file anywhere; `zoo.load(name, path=url, sha256=<the returned hash>)` then
    downloads, verifies and caches it. The export is verified before packing.
    """
    export_dir = Path(export_dir)
    pretrained.verify_export(export_dir)
    archive_path = Path(archive_path)
    top = export_dir.resolve().name
    files = sorted(pretrained._files_on_disk(export_dir)[0])

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:  # same bytes for the same export
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o644
        return info

    fd, tmp = tempfile.mkstemp(dir=archive_path.parent, prefix=f".{archive_path.name}.")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in files:
                    tar.add(export_dir / rel, arcname=f"{top}/{rel}", recursive=False, filter=normalize)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return pretrained._sha256(archive_path)


def ship(
    export_dir: str | os.PathLike,
    tag: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Copies an export into the shipped weights as `<model>.<tag>/` and pins it in the manifest.

    The export is loaded once first (verification, strict tree check, restore). Afterwards
    `zoo.load(model, pretrained=tag)` finds it; commit the new directory and manifest.json.

    Args:
      export_dir: an export written by `export`.
      tag: the pretrained tag, usually the dataset, e.g. "mnist" (letters, digits, _ and -).
      weights_dir: the weights directory to update; default `zoo.pretrained.weights_dir()`.
      overwrite: replace weights already shipped under this tag.

    Returns:
      The new manifest entry: {"dir", "manifest_sha256", "metric", "size_bytes"}.
    """
    if not isinstance(tag, str) or not pretrained._TAG.fullmatch(tag):
        raise ValueError(f"tag must be letters, digits, '_' or '-', got {tag!r}")
    export_dir = Path(export_dir)
    manifest = pretrained.verify_export(export_dir)
    model = manifest.get("model")
    pretrained.load(model, path=export_dir)
    weights = Path(weights_dir) if weights_dir is not None else pretrained.weights_dir()
    weights.mkdir(parents=True, exist_ok=True)
    package = pretrained._package_manifest(weights)
    key = f"{model}.{tag}"
    if key in package["weights"] and not overwrite:
        raise FileExistsError(f"{key} is already shipped in {weights} (pass overwrite=True to replace it)")

    tmp = Path(tempfile.mkdtemp(dir=weights, prefix=f".{key}.tmp-"))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(export_dir, tmp, symlinks=True)
        pretrained.verify_export(tmp)
        _move_into_place(tmp, weights / key, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = weights / key
    entry = {
        "dir": key,
        "manifest_sha256": pretrained._sha256(final / pretrained.MANIFEST),
        "metric": manifest.get("metric"),
        "size_bytes": sum((final / rel).stat().st_size for rel in pretrained._files_on_disk(final)[0]),
    }
    package["weights"][key] = entry
    _write_json(weights / pretrained.MANIFEST, package)
    return entry
