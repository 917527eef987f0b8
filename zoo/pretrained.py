"""Load exported, sha256-verified checkpoints: shipped pretrained weights, a directory or a URL.

    import zoo
    model, variables = zoo.load("cnn", pretrained="mnist")          # shipped with the package
    model, variables = zoo.load("cnn", path="/runs/cnn/export")      # any exported checkpoint dir
    model, variables = zoo.load("cnn", path="https://host/cnn.tar.gz", sha256="9f2c...")
    logits = model.apply(variables, images)

An exported checkpoint (written by `train.export.export`) is a directory:

    manifest.json   {"format": 1, "model": "cnn", "model_overrides": {...}, "files": {path: sha256},
                     "dataset", "metric": {"name", "value", "split"}, "command", "versions", "created"}
    params/         a params-only Orbax PyTree checkpoint of the variables dict
                    ({"params": ..., "batch_stats": ...}) saved from numpy arrays (no pickle)

`manifest.json` pins every other file in the directory. Shipped weights live in
`zoo/weights/<model>.<tag>/` and are listed in `zoo/weights/manifest.json`
({"format": 1, "weights": {"cnn.mnist": {"dir", "manifest_sha256", "metric", "size_bytes"}}}),
which pins each export's manifest.json, so verification chains from the installed package.
Pass `sha256=` to pin a URL's archive (or a local directory's manifest.json) the same way.

Loading is strict and happens in this order: every file's sha256 is checked (a changed,
truncated, missing or unlisted file raises ValueError naming it); the manifest's model must
be `name`; the checkpoint's tree (from its metadata) must match `jax.eval_shape` of the
model's init exactly (one ValueError lists each parameter path with the expected and the found
shape); only then are the arrays restored, as host numpy arrays, so a checkpoint loads on any
device count, without a GPU and without TensorFlow. Orbax is imported only here, inside
`load`: `import zoo` stays light.

Environment: `ZOO_CACHE` (default `$XDG_CACHE_HOME/zoo` or `~/.cache/zoo`) holds downloaded
exports; `ZOO_WEIGHTS_DIR` replaces the shipped weights directory (used by tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax.traverse_util import flatten_dict

from zoo.registry import _set_pretrained, create, get_spec, init, list_models

__all__ = ["load", "available", "register_shipped", "weights_dir", "cache_dir", "verify_export"]

FORMAT = 1
MANIFEST = "manifest.json"  # in an export dir, and in the shipped weights dir
PARAMS_DIR = "params"  # the Orbax checkpoint inside an export dir
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_-]+")  # no dots: "<model>.<tag>" must split unambiguously


# --- locations ------------------------------------------------------------------------------


def weights_dir() -> Path:
    """The shipped weights directory: `$ZOO_WEIGHTS_DIR` if set, else the package's `weights/`."""
    env = os.environ.get("ZOO_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).parent / "weights"


def cache_dir() -> Path:
    """Where downloaded exports are kept: `$ZOO_CACHE`, else `$XDG_CACHE_HOME/zoo` or `~/.cache/zoo`."""
    env = os.environ.get("ZOO_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo"


# --- the shipped weights manifest (plain JSON: no orbax needed) -------------------------------


def _package_manifest(directory: Path | None = None) -> dict:
    path = (directory or weights_dir()) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "weights": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("weights"), dict):
        raise ValueError(f"{path}: not a zoo weights manifest of format {FORMAT}")
    return manifest


def _split_key(key: str) -> tuple[str, str]:
    model, _, tag = key.partition(".")
    return model, tag


def available(name: str | None = None) -> dict:
    """Shipped pretrained weights, read from the package's weights manifest.

    Args:
      name: a registry name, or None for all models.

    Returns:
      For a name, {tag: entry}; for None, {model: {tag: entry}}. An entry holds "dir",
      "manifest_sha256", "metric" and "size_bytes".
    """
    by_model: dict[str, dict[str, dict]] = {}
    for key, entry in sorted(_package_manifest()["weights"].items()):
        model, tag = _split_key(key)
        by_model.setdefault(model, {})[tag] = dict(entry)
    if name is None:
        return by_model
    get_spec(name)  # unknown names fail with suggestions
    return by_model.get(name, {})


def register_shipped() -> None:
    """Sets every registered model's `ModelSpec.pretrained` tags from the weights manifest.

    Reads only the small JSON manifest (no orbax), so it is cheap to call at `import zoo`.
    Models without shipped weights get `()`, so calling it again after the manifest changed
    is safe. Manifest entries for unregistered models are skipped with a warning.
    """
    shipped = available()
    for model in sorted(set(shipped) - set(list_models())):
        warnings.warn(f"zoo weights manifest lists {model!r}, which is not a registered model", stacklevel=2)
    for model in list_models():
        _set_pretrained(model, tuple(shipped.get(model, {})))


# --- verification ----------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_sha256_arg(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def _files_on_disk(directory: Path) -> tuple[set[str], list[str]]:
    """All regular files under `directory` as relative posix paths, and any symlinks found."""
    files, links = set(), []
    for root, dirs, names in os.walk(directory):  # does not descend into symlinked dirs
        for name in names:
            full = Path(root, name)
            rel = full.relative_to(directory).as_posix()
            if full.is_symlink():
                links.append(rel)
            else:
                files.add(rel)
        links += [Path(root, d).relative_to(directory).as_posix() for d in dirs if Path(root, d).is_symlink()]
    return files, links


def _is_safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def verify_export(directory: str | os.PathLike, manifest_sha256: str | None = None) -> dict:
    """Checks an exported checkpoint's files against its manifest and returns the manifest.

    Args:
      directory: the export directory.
      manifest_sha256: if given, the expected sha256 of its manifest.json.

    Raises:
      ValueError: the manifest is missing, unreadable or pinned to another hash; or a file is
        changed, truncated, missing, unlisted or a symlink (every such file is named, with
        the expected and the found sha256).
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory (expected an exported checkpoint)")
    if not manifest_path.is_file():
        raise ValueError(f"{directory} is not an exported checkpoint: it has no {MANIFEST}")
    if manifest_sha256 is not None:
        found = _sha256(manifest_path)
        if found != _check_sha256_arg(manifest_sha256):
            raise ValueError(
                f"{manifest_path}: sha256 mismatch: expected {manifest_sha256.lower()}, found {found}"
            )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: not a zoo export manifest of format {FORMAT}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise ValueError(f"{manifest_path}: 'files' must map relative paths to sha256 hex digests")
    bad = [rel for rel in listed if not _is_safe_relpath(rel) or rel == MANIFEST]
    if bad:
        raise ValueError(f"{manifest_path}: invalid file paths in 'files': {bad}")

    on_disk, links = _files_on_disk(directory)
    on_disk.discard(MANIFEST)
    problems = [f"{rel}: is a symlink (exports hold only regular files)" for rel in links]
    for rel in sorted(set(listed) | on_disk):
        if rel not in on_disk:
            problems.append(f"{rel}: missing (expected sha256 {listed[rel]})")
        elif rel not in listed:
            problems.append(f"{rel}: not listed in {MANIFEST} (found sha256 {_sha256(directory / rel)})")
        else:
            found = _sha256(directory / rel)
            if found != listed[rel].lower():
                problems.append(f"{rel}: sha256 mismatch: expected {listed[rel]}, found {found}")
    if problems:
        raise ValueError(f"exported checkpoint {directory} failed verification:\n  " + "\n  ".join(problems))
    if not (directory / PARAMS_DIR).is_dir():
        raise ValueError(f"{directory} is not an exported checkpoint: it has no {PARAMS_DIR}/ directory")
    return manifest


# --- strict structure check --------------------------------------------------------------------


def _describe(leaf: Any) -> str:
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    return f"shape {tuple(shape) if shape is not None else None} {np.dtype(dtype) if dtype is not None else '?'}"


def check_tree(expected: Mapping, found: Mapping, what: str) -> None:
    """Raises one ValueError listing every path where `found` differs from `expected`.

    Both are nested dicts of array-likes (anything with .shape and .dtype: arrays,
    jax.ShapeDtypeStruct, orbax ArrayMetadata). Paths are written "params/conv_0/kernel".
    """
    exp = flatten_dict(expected, sep="/")
    got = flatten_dict(found, sep="/")
    problems = []
    for path in sorted(exp.keys() | got.keys()):
        if path not in got:
            problems.append(f"{path}: missing (expected {_describe(exp[path])})")
        elif path not in exp:
            problems.append(f"{path}: unexpected (found {_describe(got[path])}, not in the model)")
        else:
            e, g = exp[path], got[path]
            same_shape = tuple(getattr(g, "shape", ())) == tuple(e.shape)
            same_dtype = getattr(g, "dtype", None) is not None and np.dtype(g.dtype) == np.dtype(e.dtype)
            if not (same_shape and same_dtype):
                problems.append(f"{path}: expected {_describe(e)}, found {_describe(g)}")
    if problems:
        raise ValueError(f"{what}:\n  " + "\n  ".join(problems))


def _from_json(value: Any) -> Any:
    """JSON lists back to the tuples module fields use."""
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


def expected_variables(model: nn.Module) -> dict:
    """The model's variables as a tree of jax.ShapeDtypeStruct (no memory, no device)."""
    shapes = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)


# --- orbax (imported lazily) ------------------------------------------------------------------


def _checkpointer():
    """A synchronous Orbax PyTree checkpointer that involves only this process.

    No cross-host barriers: one process of a multi-host job can export or load alone.
    """
    import orbax.checkpoint as ocp

    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=mp), multiprocessing_options=mp)


def _restore(directory: Path, model_name: str, model: nn.Module) -> dict:
    """Strictly checks then restores `directory/params` as host numpy arrays."""
    import orbax.checkpoint as ocp

    params_dir = (directory / PARAMS_DIR).absolute()
    ckptr = _checkpointer()
    stored = ckptr.metadata(params_dir).item_metadata.tree
    expected = expected_variables(model)
    check_tree(expected, stored, f"checkpoint {directory} does not match model {model_name!r}")
    restore_args = jax.tree.map(lambda s: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype), expected)
    return ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(item=expected, restore_args=restore_args))


# --- downloads ---------------------------------------------------------------------------------


def _safe_extract(archive: Path, dest: Path, source: str) -> Path:
    """Extracts a tar(.gz) of an export into `dest`; returns the export's root directory.

    Only regular files and directories with relative paths inside `dest` are accepted:
    absolute paths, `..`, links and devices are refused before anything is written.
    """
    import tarfile

    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            if not _is_safe_relpath(m.name):
                raise ValueError(f"{source}: refusing archive member {m.name!r} (absolute path or '..')")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"{source}: refusing archive member {m.name!r} (links and special files are not allowed)")
        root = dest.resolve()
        for m in members:
            target = (dest / m.name).resolve()
            if root not in target.parents and target != root:
                raise ValueError(f"{source}: refusing archive member {m.name!r} outside the target")
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "xb") as out:  # "x": no duplicate members
                shutil.copyfileobj(src, out)
    if (dest / MANIFEST).is_file():
        return dest
    entries = list(dest.iterdir())
    if len(entries) == 1 and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise ValueError(f"{source}: no {MANIFEST} at the top level or in a single top directory")


def _fetch(url: str, sha256: str | None) -> Path:
    """The export at `url` (a tar.gz), downloaded and extracted into the cache once.

    Everything is written to temporary names in the cache first; an export appears under its
    final name only after the archive matched `sha256` and its files matched its manifest,
    so an interrupted or rejected download leaves nothing behind.
    """
    import urllib.request

    key = hashlib.sha256(f"{url}\n{sha256 or ''}".encode()).hexdigest()[:32]
    final = cache_dir() / "exports" / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, archive = tempfile.mkstemp(dir=final.parent, prefix=".download-")
    extracted = None
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"{url}: sha256 mismatch: expected {sha256}, found {digest.hexdigest()}")
        extracted = Path(tempfile.mkdtemp(dir=final.parent, prefix=".extract-"))
        root = _safe_extract(Path(archive), extracted, url)
        verify_export(root)
        try:
            os.rename(root, final)
        except OSError:
            if not final.is_dir():  # else a concurrent download of the same URL got there first
                raise
        return final
    finally:
        os.unlink(archive)
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)


# --- load ------------------------------------------------------------------------------------


def _shipped_dir(name: str, tag: str) -> tuple[Path, str]:
    tags = available(name)
    if tag not in tags:
        if tags:
            have = f"{name} has pretrained weights: {', '.join(sorted(tags))}"
        else:
            others = sorted(available())
            have = f"{name} has no pretrained weights shipped yet" + (
                f" (models with weights: {', '.join(others)})" if others else " (none shipped yet)"
            )
        raise ValueError(f"unknown pretrained tag {tag!r} for {name!r}: {have}.")
    entry = tags[tag]
    if not _is_safe_relpath(entry["dir"]) or "/" in entry["dir"]:
        raise ValueError(f"weights manifest entry {name}.{tag}: invalid dir {entry['dir']!r}")
    return weights_dir() / entry["dir"], entry["manifest_sha256"]


def _locate(name: str | None, pretrained: str | None, path, sha256: str | None) -> tuple[Path, dict]:
    """Finds (downloading if needed) and verifies an export; returns (directory, manifest)."""
    if name is not None:
        get_spec(name)
    if (pretrained is None) == (path is None):
        shipped = ", ".join(available(name)) or "none shipped yet"
        raise ValueError(f"load({name!r}): pass exactly one of pretrained=<tag> (shipped: {shipped}) or path=")
    if sha256 is not None:
        sha256 = _check_sha256_arg(sha256)
    if pretrained is not None:
        if sha256 is not None:
            raise ValueError("sha256= applies to path=; shipped weights are pinned by the package")
        directory, sha256 = _shipped_dir(name, pretrained)
        manifest = verify_export(directory, manifest_sha256=sha256)
    elif isinstance(path, str) and path.startswith(("http://", "https://")):
        directory = _fetch(path, sha256)
        try:
            manifest = verify_export(directory)
        except ValueError as e:
            raise ValueError(f"{e}\n(the cached download of {path}; delete {directory} to fetch it again)") from None
    else:
        directory = Path(path)
        manifest = verify_export(directory, manifest_sha256=sha256)

    if name is not None and manifest.get("model") != name:
        raise ValueError(
            f"checkpoint {directory} holds weights for model {manifest.get('model')!r}, not {name!r}; "
            f"load it with zoo.load({manifest.get('model')!r}, ...)"
        )
    return directory, manifest


def read_manifest(name: str | None = None, pretrained: str | None = None, *, path=None, sha256: str | None = None) -> dict:
    """The verified manifest of shipped weights (`name`, `pretrained`) or of an export (`path`)."""
    return _locate(name, pretrained, path, sha256)[1]


def load(
    name: str,
    pretrained: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> tuple[nn.Module, dict]:
    """Loads a registered model with exported weights, verified and strictly checked.

    Args:
      name: registry name; must equal the checkpoint's model.
      pretrained: tag of weights shipped with zoo (see `available(name)`), e.g. "mnist".
      path: instead, an exported checkpoint directory, or an http(s) URL of a tar.gz of
        one (downloaded once into the cache, `ZOO_CACHE`).
      sha256: optional pin: the archive's sha256 for a URL, the manifest.json's sha256 for
        a directory.

    Returns:
      (model, variables): the module built with the checkpoint's overrides, and its
      variables dict as jax arrays on the default device, ready for `model.apply`.

    Raises:
      UnknownModelError: `name` is not registered.
      ValueError: unknown tag (the message lists the shipped ones), failed verification,
        another model's checkpoint, or a tree that does not match the model (the message
        names each parameter path with the expected and the found shape).
    """
    directory, manifest = _locate(name, pretrained, path, sha256)
    overrides = _from_json(manifest.get("model_overrides") or {})
    model = create(name, **overrides)
    variables = _restore(directory, name, model)
    return model, jax.device_put(variables)
