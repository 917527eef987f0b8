"""The export directory (format "orbax"): what `zoo export` writes by default, `zoo.load` reads
and pretrained weights are.

    out = write_export("runs/cnn/export", "cnn", variables, dataset="mnist",
                       metric={"name": "accuracy", "value": 0.991, "split": "test"},
                       command="zoo train cnn --dataset mnist")
    manifest = verify_export(out)                      # every file against its sha256
    variables = restore_variables(out, model_from_manifest(manifest), "cnn")  # strict, host numpy

An exported checkpoint is a directory of regular files (no links, FIFOs or devices):

    manifest.json   {"format": 1, "model": "cnn", "model_overrides": {...}, "files": {path: sha256},
                     "dataset", "metric": {"name", "value", "split"}, "command", "train_config",
                     "versions", "created"}
    params/         a params-only Orbax PyTree checkpoint of the variables dict
                    ({"params": ..., "batch_stats": ...}) saved from numpy arrays (no pickle)

`manifest.json` pins every other file. Orbax is imported inside the functions that need it,
so `import zoo` stays light.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
import stat
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn

from zoo.files import check_sha256, file_kind, is_safe_relpath, list_files, os_error_of, sha256_file, write_json_atomic
from zoo.formats.common import (FORMAT, MANIFEST, check_class_names, checked_host_variables, refuse, replaceable, to_json,
                                versions)
from zoo.trees import check_finite, check_tree, expected_variables

__all__ = ["PARAMS_DIR", "read_manifest", "verify_export", "restore_variables", "check_overwrite", "write_export"]


PARAMS_DIR = "params"  # the Orbax checkpoint inside an export dir


def read_manifest(directory: str | os.PathLike, manifest_sha256: str | None = None) -> dict:
    """The parsed, validated manifest.json of an export, without checking its other files.

    Args:
      directory: the export directory.
      manifest_sha256: if given, the expected sha256 of its manifest.json.

    Raises:
      ValueError: not a directory, no manifest.json (or not a regular file), another hash,
        not JSON, not format 1, or a 'files' entry that is not a safe relative path.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory (expected an exported checkpoint)")
    try:
        mode = os.lstat(manifest_path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{directory} is not an exported checkpoint: it has no {MANIFEST}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{manifest_path}: is {file_kind(mode)}, not a regular file")
    if manifest_sha256 is not None:
        expected, found = check_sha256(manifest_sha256), sha256_file(manifest_path)
        if found != expected:
            raise ValueError(f"{manifest_path}: sha256 mismatch: expected {expected}, found {found}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest_path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{manifest_path}: not valid JSON (nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: not a zoo export manifest of format {FORMAT}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise ValueError(f"{manifest_path}: 'files' must map relative paths to sha256 hex digests")
    bad = [rel for rel in listed if not is_safe_relpath(rel) or rel == MANIFEST]
    if bad:
        raise ValueError(f"{manifest_path}: invalid file paths in 'files': {bad}")
    return manifest


def verify_export(directory: str | os.PathLike, manifest_sha256: str | None = None) -> dict:
    """Checks an exported checkpoint's files against its manifest and returns the manifest.

    Args:
      directory: the export directory.
      manifest_sha256: if given, the expected sha256 of its manifest.json.

    Raises:
      ValueError: see `read_manifest`; a symlink or special file anywhere in the directory
        (refused before anything is opened); or a file that is changed, truncated, missing
        or unlisted (every such file is named, with the expected and the found sha256).
    """
    directory = Path(directory)
    manifest = read_manifest(directory, manifest_sha256)
    listed = manifest["files"]
    on_disk = set(list_files(directory)) - {MANIFEST}
    problems = []
    for rel in sorted(set(listed) | on_disk):
        if rel not in on_disk:
            problems.append(f"{rel}: missing (expected sha256 {listed[rel]})")
        elif rel not in listed:
            problems.append(f"{rel}: not listed in {MANIFEST} (found sha256 {sha256_file(directory / rel)})")
        else:
            found = sha256_file(directory / rel)
            if found != listed[rel].lower():
                problems.append(f"{rel}: sha256 mismatch: expected {listed[rel]}, found {found}")
    if problems:
        raise ValueError(f"exported checkpoint {directory} failed verification:\n  " + "\n  ".join(problems))
    if not (directory / PARAMS_DIR).is_dir():
        raise ValueError(f"{directory} is not an exported checkpoint: it has no {PARAMS_DIR}/ directory")
    return manifest


def _checkpointer():
    """A synchronous Orbax PyTree checkpointer that involves only this process.

    No cross-host barriers: one process of a multi-host job can export or load alone.
    """
    import orbax.checkpoint as ocp

    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=mp), multiprocessing_options=mp)


def restore_variables(directory: str | os.PathLike, model: nn.Module, name: str) -> dict:
    """Strictly checks, then restores an export's variables as host numpy arrays.

    Call `verify_export` first: this reads the Orbax files without checking their hashes.

    Args:
      directory: the export directory.
      model: the module the variables are for (see `model_from_manifest`).
      name: its registry name, for the error message.

    Raises:
      ValueError: the checkpoint's tree differs from the model's (each parameter path with
        the expected and the found shape and dtype); nothing is restored then. Or a
        restored leaf holds NaN or inf (see `check_finite`).
    """
    import orbax.checkpoint as ocp

    params_dir = (Path(directory) / PARAMS_DIR).absolute()
    ckptr = _checkpointer()
    stored = ckptr.metadata(params_dir).item_metadata.tree
    expected = expected_variables(model)
    check_tree(expected, stored, f"checkpoint {directory} does not match model {name!r}")
    restore_args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype), expected)
    variables = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(item=expected, restore_args=restore_args))
    check_finite(variables, f"checkpoint {directory}")
    return variables


def _swap(tmp: Path, final: Path) -> bool:
    """Atomically exchanges two directory entries (Linux renameat2 RENAME_EXCHANGE); False where
    the call is missing or the filesystem does not support it, so the caller falls back."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # the C library already loaded
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(final), rename_exchange)
    return done == 0


def move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Renames the complete directory `tmp` to `final`, replacing it if `overwrite`.

    Only a zoo export is ever replaced (`check_overwrite`). The new directory is complete before
    the swap: an atomic exchange where the OS offers one, else rename the old aside and the new in
    (undone if the second rename fails), so `final` never ends up holding neither; the old export
    is deleted only after the new one is in place.
    """
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    check_overwrite(final, overwrite)
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
    if _swap(tmp, final):
        os.rename(tmp, old / final.name)  # tmp now holds the old export
    else:
        os.rename(final, old / final.name)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old / final.name, final)
            old.rmdir()
            raise
    shutil.rmtree(old)


def check_overwrite(path: str | os.PathLike, overwrite: bool = True) -> None:
    """Raises FileExistsError unless writing an export directory to `path` loses nothing: `path`
    is free, or `overwrite` is set and `path` is an earlier zoo export (a directory with its
    manifest.json and no files it does not list), never a link, a file, another folder, the
    current directory or one of its parents."""
    path = Path(path).absolute()
    mode = replaceable(path, overwrite)
    if mode is None:
        return
    if not stat.S_ISDIR(mode):
        raise refuse(path, f"it is {'a file' if stat.S_ISREG(mode) else file_kind(mode)}, not an export directory")
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise refuse(path, "it is the current directory or one of its parents")
    try:
        listed = set(read_manifest(path)["files"]) | {MANIFEST}
        extra = sorted(set(list_files(path)) - listed)
    except (ValueError, OSError) as e:
        raise refuse(path, f"it is not a zoo export ({str(e).splitlines()[0]})") from None
    if extra:
        raise refuse(path, f"it holds files its {MANIFEST} does not list ({', '.join(extra[:5])})")


def write_export(
    directory: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    command: str | Sequence[str] | None = None,
    train_config: Mapping[str, Any] | None = None,
    quality: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `variables` of registry model `model_name` as an exported checkpoint directory.

    The export is written to a temporary sibling and renamed into place once complete, so
    a reader never sees a half-written export.

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
      quality: generative models' sample-quality measures (train/gen_metrics.py: Frechet
        distance, confident share, classes covered, image count, the classifier), JSON-able.
      training: how the weights were trained, as model cards show it: {"device": str,
        "wall_s": float, "recorded": when and from what these were recorded}, JSON-able.
      class_names: the output classes' names in label order (the manifest's "class_names").
      overwrite: replace an existing `directory` (see `move_into_place`).

    Returns:
      The absolute path of the export.

    Raises:
      FileExistsError: `directory` exists and `overwrite` is False, or it is not an earlier
        zoo export (see `check_overwrite`).
      ValueError: `variables` do not match the model (each path with expected and found shape).
    """
    directory = Path(directory).absolute()  # orbax needs absolute paths
    check_overwrite(directory, overwrite)  # before any work; again at the swap
    overrides = to_json(dict(model_overrides or {}), "model_overrides")
    if metric is not None and not {"name", "value"} <= set(metric):
        raise ValueError(f"metric needs at least 'name' and 'value' (and ideally 'split'), got {dict(metric)}")
    _, host = checked_host_variables(model_name, variables, overrides)
    if command is not None and not isinstance(command, str):
        command = shlex.join(command)

    fields = {"dataset": dataset, "metric": metric, "command": command, "train_config": train_config, "quality": quality,
              "training": training, "class_names": check_class_names(class_names) if class_names is not None else None}
    return _write_directory(directory, host, lambda tmp: _manifest(tmp, model_name, overrides, **fields), overwrite)


def _write_directory(directory: Path, host: dict, manifest_of: Callable[[Path], dict], overwrite: bool) -> Path:
    """Saves `host` and its manifest in a temporary sibling of `directory`, then moves it into place."""
    import orbax.checkpoint as ocp

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        try:
            _checkpointer().save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(host))
        except ValueError as e:
            if (error := os_error_of(e, f"cannot write the export {directory}")) is None:
                raise
            raise error from e
        write_json_atomic(tmp / MANIFEST, manifest_of(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        move_into_place(tmp, directory, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _manifest(tmp: Path, model_name: str, overrides: dict, *, dataset, metric, command, train_config, quality,
              training, class_names) -> dict:
    """The manifest.json of the export being written in `tmp` (every file there pinned)."""
    optional = {"quality": quality, "training": training}  # absent, not null, where not given
    return {
        "format": FORMAT,
        "model": model_name,
        "model_overrides": overrides,
        "files": {rel: sha256_file(tmp / rel) for rel in list_files(tmp)},
        "dataset": dataset,
        "metric": to_json(dict(metric), "metric") if metric is not None else None,
        "command": command,
        "train_config": to_json(dict(train_config), "train_config") if train_config is not None else None,
        **{key: to_json(dict(value), key) for key, value in optional.items() if value is not None},
        **({"class_names": class_names} if class_names is not None else {}),
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
