"""The export format: writing, reading, verifying and packing exported checkpoints.

    from zoo import exports
    out = exports.write_export("runs/cnn/export", "cnn", variables, dataset="mnist",
                               metric={"name": "accuracy", "value": 0.991, "split": "test"},
                               command="zoo train cnn --dataset mnist")
    manifest = exports.verify_export(out)                  # every file against its sha256
    model = exports.model_from_manifest(manifest)
    variables = exports.restore_variables(out, model, "cnn")   # strict check, then host numpy
    sha = exports.archive(out, "cnn-mnist.tar.gz")         # host it: zoo.load("cnn", path=url, sha256=sha)
    exports.ship(out, "mnist")                             # zoo.load("cnn", pretrained="mnist")

An exported checkpoint is a directory of regular files (no links, FIFOs or devices):

    manifest.json   {"format": 1, "model": "cnn", "model_overrides": {...}, "files": {path: sha256},
                     "dataset", "metric": {"name", "value", "split"}, "command", "train_config",
                     "versions", "created"}
    params/         a params-only Orbax PyTree checkpoint of the variables dict
                    ({"params": ..., "batch_stats": ...}) saved from numpy arrays (no pickle)

`manifest.json` pins every other file. The shipped weights directory holds an index,
`manifest.json` = {"format": 1, "weights": {"cnn.mnist": {"dir", "manifest_sha256", "metric",
"size_bytes"}}}, which pins each export's manifest.json (`read_index`, written by `ship`).
An archive (`archive`, `extract_archive`) is a tar.gz holding one export in one top directory.

Two single-file formats sit beside it (`write_safetensors`/`read_safetensors`: the same
variables under flat keys "params/conv_0/kernel", the manifest's fields in the header's
`__metadata__`; `write_onnx`: the inference graph for other runtimes, written only).

Orbax, safetensors and jax2onnx are imported inside the functions that need them, so
`import zoo` stays light. Where the shipped weights and the download cache live is
zoo/pretrained.py's business, not this module's.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

from zoo.registry import create, init

__all__ = [
    "FORMAT", "MANIFEST", "PARAMS_DIR", "MAX_ARCHIVE_MEMBERS",
    "write_export", "archive", "ship", "extract_archive",
    "verify_export", "read_manifest", "read_index", "list_files",
    "model_from_manifest", "expected_variables", "restore_variables", "check_tree",
    "sha256_file", "check_sha256", "check_tag", "check_overwrite", "write_text_atomic", "write_json_atomic",
    "NotARegularFileError", "check_regular_file", "open_regular_file", "read_regular_file", "check_finite",
    "SAFETENSORS_SUFFIX", "ONNX_SUFFIX", "write_safetensors", "read_safetensors", "restore_safetensors", "write_onnx",
]

FORMAT = 1
MANIFEST = "manifest.json"  # in an export dir, and in the shipped weights dir (the index)
PARAMS_DIR = "params"  # the Orbax checkpoint inside an export dir
MAX_ARCHIVE_MEMBERS = 10_000  # an export has a few dozen files; more is an attack or a mistake
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_-]+")  # no dots: "<model>.<tag>" must split unambiguously


# --- small building blocks ----------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (a regular file: see `open_regular_file`)."""
    with open_regular_file(path, "a file to hash") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- files a user points zoo at -----------------------------------------------------------------
# Opening a FIFO for reading blocks until a writer appears and a device such as /dev/zero never
# ends, so every file zoo reads is checked to be a regular file (a symlink to one is fine) first.


class NotARegularFileError(ValueError):
    """A path that should be a regular file is a directory, FIFO, device or socket."""

    def __init__(self, path: str | os.PathLike, kind: str, what: str):
        self.path, self.kind, self.what = str(path), kind, what
        super().__init__(f"{path}: is {kind}, not a regular file (expected {what})")


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if it is (or links to) a regular file; nothing is opened.

    Raises:
      NotARegularFileError (a ValueError): a directory, FIFO, device or socket, named with
        `what` was expected (e.g. "a JSON config").
      FileNotFoundError: nothing there (or a dangling link).
    """
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, _kind(mode), what)
    return path


def open_regular_file(path: str | os.PathLike, what: str):
    """`path` opened for binary reading, if it is a regular file (see `check_regular_file`).

    The open is non-blocking and the opened file is checked again (fstat), so a FIFO swapped
    in after the first check cannot block either.
    """
    path = check_regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(path, _kind(mode), what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def read_regular_file(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `path`, refused (ValueError) if it holds more than `max_bytes`.

    At most `max_bytes` + 1 bytes are read, whatever the file claims its size is.
    """
    with open_regular_file(path, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than {_size(max_bytes)}, the most {what} may hold; refusing to read it")
    return data


def check_sha256(value: Any) -> str:
    """`value` lower-cased if it is 64 hex digits; else ValueError."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {value!r}")
    return value.lower()


def check_tag(tag: Any) -> str:
    """`tag` if it is a valid pretrained tag (letters, digits, '_', '-'); else ValueError."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise ValueError(f"tag must be letters, digits, '_' or '-', got {tag!r}")
    return tag


def _is_safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `path` so readers see the old or the new content, never a part (temp file + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented, key-sorted JSON plus a newline (the layout of every manifest), atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def list_files(directory: str | os.PathLike) -> list[str]:
    """Every file under `directory`, as sorted relative posix paths.

    Uses only `lstat`, so nothing is opened: a symlink, FIFO, device or socket anywhere in the
    tree raises ValueError naming each one (opening a FIFO would block forever).
    """
    directory = Path(directory)
    files, bad = [], []

    def fail(error: OSError) -> None:  # os.walk skips unreadable directories unless told
        raise error

    for root, dirs, names in os.walk(directory, onerror=fail):
        real_dirs = []
        for name in dirs + names:  # os.walk lists a symlink to a directory among the dirs
            full = Path(root, name)
            mode = os.lstat(full).st_mode
            rel = full.relative_to(directory).as_posix()
            if stat.S_ISDIR(mode):
                real_dirs.append(name)
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                bad.append(f"{rel}: is {_kind(mode)} (exports hold only regular files)")
        dirs[:] = real_dirs  # descend into real directories only
    if bad:
        raise ValueError(f"exported checkpoint {directory} failed verification:\n  " + "\n  ".join(sorted(bad)))
    return sorted(files)


# --- reading and verifying ----------------------------------------------------------------------


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
        raise ValueError(f"{manifest_path}: is {_kind(mode)}, not a regular file")
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
    bad = [rel for rel in listed if not _is_safe_relpath(rel) or rel == MANIFEST]
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
        if not isinstance(entry, dict) or entry.get("dir") != key or not _is_safe_relpath(key) or "/" in key:
            raise ValueError(f"{path}: entry {key!r} must be a dict whose 'dir' is {key!r}, got {entry!r}")
        check_sha256(entry.get("manifest_sha256"))
    return index


# --- strict structure check ---------------------------------------------------------------------


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype | None]:
    dtype = getattr(leaf, "dtype", None)
    return tuple(np.shape(leaf)), (np.dtype(dtype) if dtype is not None else None)


def _describe(leaf: Any) -> str:
    shape, dtype = _shape_dtype(leaf)
    return f"shape {shape} {dtype if dtype is not None else '?'}"


def check_tree(expected: Mapping, found: Mapping, what: str) -> None:
    """Raises one ValueError listing every path where `found` differs from `expected`.

    Both are nested (or already flat "a/b") dicts of array-likes: anything with .shape and
    .dtype (arrays, jax.ShapeDtypeStruct, orbax ArrayMetadata). A leaf must match in path,
    shape and dtype; paths are written "params/conv_0/kernel".

    Args:
      expected: what the caller needs (the model's variables, a restore target).
      found: what is there (a checkpoint's metadata, variables to export).
      what: the message's first line, e.g. "checkpoint X does not match model 'cnn'".
    """
    exp = flatten_dict(expected, sep="/")
    got = flatten_dict(found, sep="/")
    problems = []
    for path in sorted(exp.keys() | got.keys()):
        if path not in got:
            problems.append(f"{path}: missing (expected {_describe(exp[path])})")
        elif path not in exp:
            problems.append(f"{path}: unexpected (found {_describe(got[path])})")
        else:
            (e_shape, e_dtype), (g_shape, g_dtype) = _shape_dtype(exp[path]), _shape_dtype(got[path])
            if e_shape != g_shape or e_dtype is None or g_dtype != e_dtype:
                problems.append(f"{path}: expected {_describe(exp[path])}, found {_describe(got[path])}")
    if problems:
        raise ValueError(f"{what}:\n  " + "\n  ".join(problems))


def _nonfinite_counts(leaf: Any) -> tuple[int, int]:
    """(NaN count, inf count) of a floating-point leaf: numpy on this host, else a device reduction
    (a leaf sharded over other processes cannot be fetched whole)."""
    if getattr(leaf, "is_fully_addressable", True):
        a = np.asarray(jax.device_get(leaf))
        return int(np.isnan(a).sum()), int(np.isinf(a).sum())
    import jax.numpy as jnp

    nan, inf = jax.jit(lambda a: (jnp.isnan(a).sum(), jnp.isinf(a).sum()))(leaf)
    return int(nan), int(inf)


def check_finite(variables: Mapping, what: str) -> None:
    """Raises one ValueError naming every floating-point leaf of `variables` that holds NaN or inf.

    Such weights predict NaN for every input (argmax class 0), so they are refused wherever
    weights come in: loading, exporting, `--init-from`. Leaves are named "params/head/kernel",
    with their NaN and inf counts.

    Args:
      variables: a nested (or flat "a/b") dict of arrays.
      what: the start of the message, e.g. "cnn.safetensors".
    """
    import jax.numpy as jnp

    problems = []
    for path, leaf in sorted(flatten_dict(unfreeze(dict(variables)), sep="/").items()):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        nan, inf = _nonfinite_counts(leaf)
        if nan or inf:
            counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
            problems.append(f"{path} ({counts} of {int(np.size(leaf))} values)")
    if problems:
        shown = problems[:10] + ([f"and {len(problems) - 10} more leaves"] if len(problems) > 10 else [])
        raise ValueError(f"{what}: non-finite weights (NaN or inf) in {', '.join(shown)}; refusing them")


def expected_variables(model: nn.Module) -> dict:
    """The model's variables as a tree of jax.ShapeDtypeStruct (no memory, no device)."""
    shapes = jax.eval_shape(lambda: init(model, jax.random.key(0)))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)


def from_json(value: Any) -> Any:
    """JSON lists back to the tuples module fields use."""
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    return value


def _to_json(value: Any, what: str) -> Any:
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


# --- orbax (imported lazily) --------------------------------------------------------------------


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


# --- writing ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import zoo  # here, not at the top: zoo/__init__ imports this module

    versions = {"python": platform.python_version(), "zoo": zoo.__version__}
    for package, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("orbax", "orbax-checkpoint"), ("numpy", "numpy")):
        try:
            versions[package] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


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


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Renames the complete directory `tmp` to `final`, replacing it if `overwrite`.

    Only a zoo export is ever replaced (`check_overwrite`). The new directory is complete before
    the swap: an atomic exchange where the OS offers one, else rename the old aside and the new in
    (undone if the second rename fails), so `final` never ends up holding neither; the old export
    is deleted only after the new one is in place.
    """
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    check_overwrite(final, "orbax", overwrite)
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


def _refuse(path: Path, why: str) -> FileExistsError:
    return FileExistsError(f"refusing to overwrite {path}: {why}; overwrite replaces only an earlier zoo export "
                           f"(choose another output path)")


def check_overwrite(path: str | os.PathLike, fmt: str = "orbax", overwrite: bool = True) -> None:
    """Raises FileExistsError unless writing a `fmt` export ("orbax", "safetensors", "onnx") to
    `path` loses nothing: `path` is free, or `overwrite` is set and `path` is an earlier zoo export
    of that format (a directory with its manifest.json and no files it does not list, or a file
    zoo wrote), never a link, another file or folder, the current directory or one of its parents.
    """
    path = Path(path).absolute()
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    if stat.S_ISLNK(mode):
        raise _refuse(path, "it is a symlink")
    if fmt == "orbax":
        if not stat.S_ISDIR(mode):
            raise _refuse(path, f"it is {'a file' if stat.S_ISREG(mode) else _kind(mode)}, not an export directory")
        here = Path.cwd().resolve()
        if path.resolve() == here or path.resolve() in here.parents:
            raise _refuse(path, "it is the current directory or one of its parents")
        try:
            listed = set(read_manifest(path)["files"]) | {MANIFEST}
            extra = sorted(set(list_files(path)) - listed)
        except (ValueError, OSError) as e:
            raise _refuse(path, f"it is not a zoo export ({str(e).splitlines()[0]})") from None
        if extra:
            raise _refuse(path, f"it holds files its {MANIFEST} does not list ({', '.join(extra[:5])})")
        return
    if not stat.S_ISREG(mode):
        raise _refuse(path, f"it is {'a directory' if stat.S_ISDIR(mode) else _kind(mode)}, not a .{fmt} file")
    if not _written_by_zoo(path, fmt):
        raise _refuse(path, f"it is not a {fmt} file written by zoo")


def _written_by_zoo(path: Path, fmt: str) -> bool:
    """Whether the regular file `path` is a zoo safetensors or ONNX export (its metadata says so)."""
    try:
        if fmt == "safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(path, framework="np") as f:
                    return (f.metadata() or {}).get("format") == SAFETENSORS_FORMAT
            except SafetensorError:
                return False
        import onnx

        proto = onnx.load_model(path, load_external_data=False)
        return any(p.key == "zoo_model" for p in proto.metadata_props)
    except Exception:  # noqa: BLE001 - unreadable or another format: not ours, so not replaced
        return False


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
      overwrite: replace an existing `directory` (see `_move_into_place`).

    Returns:
      The absolute path of the export.

    Raises:
      FileExistsError: `directory` exists and `overwrite` is False, or it is not an earlier
        zoo export (see `check_overwrite`).
      ValueError: `variables` do not match the model (each path with expected and found shape).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()  # orbax needs absolute paths
    check_overwrite(directory, "orbax", overwrite)  # before any work; again at the swap
    overrides = _to_json(dict(model_overrides or {}), "model_overrides")
    if metric is not None and not {"name", "value"} <= set(metric):
        raise ValueError(f"metric needs at least 'name' and 'value' (and ideally 'split'), got {dict(metric)}")
    _, host = _checked_host_variables(model_name, variables, overrides)
    if command is not None and not isinstance(command, str):
        command = shlex.join(command)

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        try:
            _checkpointer().save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(host))
        except ValueError as e:
            if (error := os_error_of(e, f"cannot write the export {directory}")) is None:
                raise
            raise error from e
        files = list_files(tmp)
        manifest = {
            "format": FORMAT,
            "model": model_name,
            "model_overrides": overrides,
            "files": {rel: sha256_file(tmp / rel) for rel in files},
            "dataset": dataset,
            "metric": _to_json(dict(metric), "metric") if metric is not None else None,
            "command": command,
            "train_config": _to_json(dict(train_config), "train_config") if train_config is not None else None,
            **({"quality": _to_json(dict(quality), "quality")} if quality is not None else {}),
            **({"training": _to_json(dict(training), "training")} if training is not None else {}),
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _move_into_place(tmp, directory, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# TensorStore's "[os_error_code='28']" and Rust's "(os error 28)" (safetensors)
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]|\(os error (\d+)\)")


def os_error_of(error: BaseException, what: str) -> OSError | None:
    """An OSError saying `what` failed, for a library error that carries an OS error code (e.g.
    ENOSPC, a full disk), else None. TensorStore (under Orbax) raises these as ValueError and
    safetensors as SafetensorError, with the code inside a message that names a temporary file."""
    match = _OS_ERROR_CODE.search(str(error))
    if match is None:
        return None
    code = int(match.group(1) or match.group(2))
    return OSError(code, f"{what}: {os.strerror(code)}")  # the errno picks the subclass, as the OS's would


def archive(export_dir: str | os.PathLike, archive_path: str | os.PathLike) -> str:
    """Packs an export into a reproducible tar.gz (one top directory) and returns its sha256.

    Host the file anywhere; `zoo.load(name, path=url, sha256=<the returned hash>)` then
    downloads, verifies and caches it. The export is verified before packing.
    """
    export_dir = Path(export_dir)
    verify_export(export_dir)
    archive_path = Path(archive_path)
    top = export_dir.resolve().name

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
                for rel in list_files(export_dir):
                    tar.add(export_dir / rel, arcname=f"{top}/{rel}", recursive=False, filter=normalize)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return sha256_file(archive_path)


def ship(
    export_dir: str | os.PathLike,
    tag: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Copies an export into the shipped weights as `<model>.<tag>/` and pins it in the index.

    The export is verified and restored once first (strict tree check). Afterwards
    `zoo.load(model, pretrained=tag)` finds it; commit the new directory and manifest.json.

    Args:
      export_dir: an export written by `write_export`.
      tag: the pretrained tag, usually the dataset, e.g. "mnist" (letters, digits, _ and -).
      weights_dir: the weights directory to update; default `zoo.pretrained.weights_dir()`.
      overwrite: replace weights already shipped under this tag.

    Returns:
      The new index entry: {"dir", "manifest_sha256", "metric", "size_bytes"}.
    """
    check_tag(tag)
    export_dir = Path(export_dir)
    manifest = verify_export(export_dir)
    model = manifest.get("model")
    restore_variables(export_dir, model_from_manifest(manifest), model)
    if weights_dir is None:
        from zoo.pretrained import weights_dir as default_weights_dir  # the location is pretrained's

        weights_dir = default_weights_dir()
    weights = Path(weights_dir)
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
        _move_into_place(tmp, weights / key, overwrite)
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


# --- extracting a downloaded archive ------------------------------------------------------------


class _CappedReader:
    """A read-only stream that raises ValueError once more than `limit` bytes were read from it."""

    def __init__(self, stream, limit: int, source: str):
        self._stream, self._limit, self._source, self.count = stream, limit, source, 0

    def read(self, size: int = -1) -> bytes:
        # Never ask for more than one byte past the cap: a decompression bomb stops here.
        room = self._limit - self.count + 1
        data = self._stream.read(room if size is None or size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self._limit:
            raise ValueError(f"{self._source}: the archive expands to more than {self._limit} bytes; refusing it")
        return data


def extract_archive(
    archive_path: str | os.PathLike,
    dest: str | os.PathLike,
    source: str,
    *,
    max_bytes: int,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> Path:
    """Extracts a tar.gz holding one export into the empty directory `dest`; returns its root.

    Members are read one at a time from the decompressed stream, and extraction stops as
    soon as a limit is passed (not after decompressing everything), so a small gzip bomb
    costs at most `max_bytes` of reading and writing. Only regular files and directories
    with relative paths are accepted (links, devices, FIFOs, absolute paths and '..' are
    refused, as are duplicate files); tarfile's "data" filter applies on top.

    Args:
      archive_path: the tar.gz file.
      dest: an empty directory to extract into.
      source: the archive's URL or path, named in every error.
      max_bytes: the most decompressed bytes (tar headers and file contents) to read.
      max_members: the most archive members (files and directories).

    Returns:
      `dest` if it holds manifest.json, else the single top directory that does.

    Raises:
      ValueError: one line naming `source` and the cause (not a tar.gz, truncated, a
        refused member, a limit passed, no manifest.json at the top).
    """
    dest = Path(dest)
    count, size, seen, dirs = 0, 0, set(), set()  # seen: file paths; dirs: directory paths
    try:
        with gzip.open(archive_path, "rb") as gz:
            capped = _CappedReader(gz, max_bytes, source)
            with tarfile.open(fileobj=capped, mode="r|") as tar:  # a stream: members in order
                for member in tar:
                    count += 1
                    if count > max_members:
                        raise ValueError(f"{source}: the archive has more than {max_members} members; refusing it")
                    name = member.name
                    if not _is_safe_relpath(name):
                        raise ValueError(f"{source}: refusing archive member {name!r} (absolute path or '..')")
                    if not (member.isfile() or member.isdir()):
                        raise ValueError(f"{source}: refusing archive member {name!r} (links and special files are not allowed)")
                    key = PurePosixPath(name).as_posix()
                    # a file where a directory is (or is needed above a member), or the reverse
                    if key in dirs and member.isfile() or any(str(p) in seen for p in PurePosixPath(key).parents) \
                            or member.isdir() and key in seen:
                        raise ValueError(f"{source}: refusing archive member {name!r} (a file and a directory of "
                                         "the same name)")
                    dirs.update(str(p) for p in PurePosixPath(key).parents)
                    if member.isdir():
                        dirs.add(key)
                    if member.isfile():
                        if key in seen:
                            raise ValueError(f"{source}: refusing archive member {name!r} (a duplicate)")
                        seen.add(key)
                        size += member.size
                        if size > max_bytes:
                            raise ValueError(f"{source}: the archive expands to more than {max_bytes} bytes; refusing it")
                    try:
                        tar.extract(member, dest, filter="data")
                    except tarfile.FilterError as e:
                        raise ValueError(f"{source}: refusing archive member {name!r} ({e})") from None
    except (tarfile.ReadError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        cause = str(e) or type(e).__name__
        if isinstance(e, EOFError):
            cause = f"truncated: {cause}"
        raise ValueError(f"{source}: not a valid tar.gz archive ({cause})") from None
    if (dest / MANIFEST).is_file():
        return dest
    entries = list(dest.iterdir())
    if len(entries) == 1 and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise ValueError(f"{source}: no {MANIFEST} at the top level or in a single top directory")


# --- other formats: safetensors (weights + metadata) and ONNX (an inference graph) --------------

SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_FORMAT = "zoo-safetensors-1"  # __metadata__["format"]: what this module writes and reads
ONNX_SUFFIX = ".onnx"


def _write_file_atomic(path: Path, overwrite: bool, write, fmt: str) -> Path:
    """Calls `write(tmp_path)` for a temporary sibling of `path`, then renames it into place
    (replacing only an earlier zoo export of `fmt`, see `check_overwrite`)."""
    path = Path(path).absolute()
    check_overwrite(path, fmt, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        check_overwrite(path, fmt, overwrite)  # still ours after the (slow) write
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _file_export(path, suffix: str, kind: str, model_name: str, variables: Mapping,
                 model_overrides: Mapping | None) -> tuple[dict, nn.Module, dict]:
    """A one-file export's checks: the suffix, JSON-able overrides, the strict tree check.
    Returns (overrides, model, variables as host numpy)."""
    if not str(path).endswith(suffix):
        raise ValueError(f"{kind} must be a file ending in {suffix}, got {str(path)!r}")
    overrides = _to_json(dict(model_overrides or {}), "model_overrides")
    return (overrides, *_checked_host_variables(model_name, variables, overrides))


def _json_metadata(model_name: str, overrides: dict, metric: Mapping | None) -> dict[str, str]:
    """The string metadata both one-file formats carry: model, overrides, metric, versions (JSON)."""
    return {
        "model": model_name,
        "model_overrides": json.dumps(overrides, sort_keys=True),
        "metric": json.dumps(_to_json(dict(metric), "metric") if metric is not None else None, sort_keys=True),
        "versions": json.dumps(_versions(), sort_keys=True),
    }


def _checked_host_variables(model_name: str, variables: Mapping, overrides: dict) -> tuple[nn.Module, dict]:
    """(model, variables as host numpy), after the strict tree check against the model."""
    model = model_from_manifest({"model": model_name, "model_overrides": overrides})
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), unfreeze(variables))
    what = f"variables do not match model {model_name!r}" + (f" with overrides {overrides}" if overrides else "")
    check_tree(expected_variables(model), host, what)
    check_finite(host, f"variables of {model_name!r}")  # an export of them would predict NaN
    return model, host


def write_safetensors(
    path: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `variables` of registry model `model_name` as one .safetensors file.

    Tensors are stored under flat keys ("params/conv_0/kernel", "batch_stats/..."); the
    header's `__metadata__` (string values) holds "format", "model", "model_overrides"
    (JSON), "dataset" (if given), "metric" (JSON), "versions" (JSON) and "created". `zoo.load(model_name, path=<file>)`
    reads it back with the same strict checks as an Orbax export.

    Returns:
      The absolute path of the file.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not an earlier zoo
        export of this format (see `check_overwrite`).
      ValueError: `path` does not end in .safetensors, or `variables` do not match the model.
      OSError: the file cannot be written (e.g. the disk is full); nothing is left behind.
    """
    overrides, _, host = _file_export(path, SAFETENSORS_SUFFIX, "a safetensors export", model_name, variables,
                                      model_overrides)
    check_overwrite(path, "safetensors", overwrite)
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
        **_json_metadata(model_name, overrides, metric),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if dataset is not None:
        metadata["dataset"] = dataset  # a plain string; absent when unknown
    return _write_file_atomic(path, overwrite, save, "safetensors")


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(manifest, flat variables) of a .safetensors export, without checking them against a model.

    The manifest has the keys of an export directory's manifest.json ("model",
    "model_overrides", "dataset", "metric", "versions", "created"), decoded from JSON. Reading
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
    for key in ("model_overrides", "metric", "versions"):
        try:
            manifest[key] = json.loads(metadata.get(key, "null"))
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: __metadata__ {key!r} must be JSON, got {metadata[key][:200]!r} "
                             f"({e if isinstance(e, json.JSONDecodeError) else 'nested too deeply'})") from None
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


def _output_names(fn, spec) -> list[str]:
    """ONNX output names: the dict keys of a multi-head output, else ["output"]."""
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(spec.example_shape(1), spec.dtype))
    if isinstance(out, Mapping):
        return sorted(out)  # the order jax flattens a dict in
    return ["output"] if not isinstance(out, (tuple, list)) else [f"output_{i}" for i in range(len(out))]


def write_onnx(
    path: str | os.PathLike,
    model_name: str,
    variables: Mapping,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    metric: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the inference graph `model.apply(variables, x)` as an ONNX model (jax2onnx).

    The weights are constants of the graph; the input "input" has a dynamic batch axis "B"
    (and a dynamic time axis "T" for sequence models with a free length). Outputs are
    "output", or one per head of a multi-head model. The registry model, its overrides, the
    dataset and the metric are stored as JSON in the model's metadata_props.

    Returns:
      The absolute path of the file.

    Raises:
      FileExistsError: `path` exists and `overwrite` is False, or it is not an earlier zoo
        export of this format (see `check_overwrite`).
      ValueError: `path` does not end in .onnx, or `variables` do not match the model.
    """
    overrides, model, host = _file_export(path, ONNX_SUFFIX, "an ONNX export", model_name, variables, model_overrides)
    check_overwrite(path, "onnx", overwrite)  # before the conversion; again before the rename
    import logging

    import onnx
    from jax2onnx import to_onnx

    spec = model.input_spec()
    fn = lambda x: model.apply(host, x)  # noqa: E731  (train=False: the inference graph)
    dims = ("B",) + tuple("T" if d is None else d for d in spec.shape)
    serde = logging.getLogger("onnx_ir.serde")  # warns once per constant it serializes
    level = serde.level
    serde.setLevel(logging.ERROR)
    try:
        from zoo import layers

        with layers.forced("rewrite"):  # jax2onnx converts no platform-dependent program
            proto = to_onnx(fn, [jax.ShapeDtypeStruct(dims, np.dtype(spec.dtype))], model_name=model_name,
                            input_names=["input"], output_names=_output_names(fn, spec))
    finally:
        serde.setLevel(level)
    props = {**_json_metadata(model_name, overrides, metric), "dataset": json.dumps(dataset)}
    onnx.helper.set_model_props(proto, {f"zoo_{key}": value for key, value in props.items()})
    return _write_file_atomic(path, overwrite, lambda tmp: onnx.save_model(proto, tmp), "onnx")
