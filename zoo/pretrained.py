"""Load exported, sha256-verified checkpoints: shipped pretrained weights, a directory or a URL.

    import zoo
    model, variables = zoo.load("cnn", pretrained="mnist")          # shipped with the package
    model, variables = zoo.load("cnn", path="/runs/cnn/export")      # any exported checkpoint dir
    model, variables = zoo.load("cnn", path="cnn.safetensors")       # or a safetensors export
    model, variables = zoo.load("cnn", path="https://host/cnn.tar.gz", sha256="9f2c...")
    logits = model.apply(variables, images)

The formats (an export directory, a .safetensors file, the tar.gz archive) are written, read
and verified by zoo/formats/ (its table says how each path is read); this module finds exports
(pretrained, local or downloaded) and loads them. Pretrained weights live in
`zoo/weights/<model>.<tag>/`, pinned by `zoo/weights/manifest.json` (zoo/weights_index.py), so
verification chains from the installed package. Pass `sha256=` to pin a URL's archive (or a local directory's
manifest.json) the same way.

Loading is strict and happens in this order: every file's sha256 is checked (a changed,
truncated, missing or unlisted file, a symlink, FIFO or device raises ValueError naming it);
the manifest's model must be `name`; the checkpoint's tree (from its metadata) must match
`jax.eval_shape` of the model's init exactly (one ValueError lists each parameter path with
the expected and the found shape); only then are the arrays restored, as host numpy arrays
(weights holding NaN or inf are refused, the leaves named),
so a checkpoint loads on any device count, without a GPU and without TensorFlow. Orbax is
imported only inside `load`: `import zoo` stays light.

Downloads (`path=` an http(s) URL of a tar.gz) are bounded: at most `max_bytes` (default
1 GiB, `ZOO_MAX_DOWNLOAD_BYTES`) are downloaded and at most as many extracted (plus at most
`zoo.formats.archive.MAX_ARCHIVE_MEMBERS` members); the download must finish within
`ZOO_DOWNLOAD_TIMEOUT` seconds (default 600; checked between reads, and no single read waits
longer, so a stalled server is dropped within twice that at worst). Everything is written
under temporary names `.download-HOST-PID-*` / `.extract-HOST-PID-*` in the cache and removed
on every exit that runs Python code (errors, Ctrl-C); temporaries of a process that was killed
(SIGTERM, SIGKILL) are removed by the next download on the same host once that process is gone.

Environment: `ZOO_CACHE` (default `$XDG_CACHE_HOME/zoo` or `~/.cache/zoo`) holds downloaded
exports; `ZOO_WEIGHTS_DIR` replaces the shipped weights directory (used by tests);
`ZOO_MAX_DOWNLOAD_BYTES` and `ZOO_DOWNLOAD_TIMEOUT` as above.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import jax
from flax import linen as nn

from zoo import finetune, formats
from zoo.files import check_regular_file, check_sha256, is_url_path, sha256_file
from zoo.formats.archive import extract_archive
from zoo.formats.common import model_from_manifest
from zoo.formats.orbax_export import verify_export
from zoo.registry import _set_pretrained, get_spec, init, list_models
from zoo.weights_index import read_index, weights_dir

__all__ = ["load", "available", "register_pretrained", "weights_dir", "cache_dir", "read_manifest"]

DEFAULT_MAX_DOWNLOAD_BYTES = 1 << 30
DEFAULT_DOWNLOAD_TIMEOUT = 600.0  # seconds for a whole download, not per read
# .download-HOST-PID-XXXXXXXX: the random tail (tempfile's) never contains "-"
_TEMPORARY = re.compile(r"\.(?:download|extract)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")


# --- locations ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloaded exports are kept: `$ZOO_CACHE`, else `$XDG_CACHE_HOME/zoo` or `~/.cache/zoo`."""
    env = os.environ.get("ZOO_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo"


# --- the shipped weights (plain JSON: no orbax needed) ----------------------------------------


def available(name: str | None = None) -> dict:
    """Shipped pretrained weights, read from the package's weights manifest.

    Args:
      name: a registry name, or None for all models.

    Returns:
      For a name, {tag: entry}; for None, {model: {tag: entry}}. An entry holds "dir",
      "manifest_sha256", "metric" and "size_bytes".
    """
    by_model: dict[str, dict[str, dict]] = {}
    for key, entry in sorted(read_index(weights_dir())["weights"].items()):
        model, _, tag = key.partition(".")
        by_model.setdefault(model, {})[tag] = dict(entry)
    if name is None:
        return by_model
    get_spec(name)  # unknown names fail with suggestions
    return by_model.get(name, {})


def register_pretrained() -> None:
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


# --- downloads ---------------------------------------------------------------------------------


def _env_number(name: str, default: float, kind: type) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {raw!r}")
    return value


def _download_limits(max_bytes: int | None) -> tuple[int, float]:
    """(max bytes, deadline in seconds) from the argument and the environment."""
    if max_bytes is None:
        max_bytes = _env_number("ZOO_MAX_DOWNLOAD_BYTES", DEFAULT_MAX_DOWNLOAD_BYTES, int)
    elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    return max_bytes, _env_number("ZOO_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT, float)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_dead_temporaries(directory: Path) -> None:
    """Removes `.download-*`/`.extract-*` of this host whose process no longer exists.

    A process killed mid-download (SIGTERM, SIGKILL) runs no cleanup; this is its cleanup.
    Temporaries of other hosts (a shared cache) and of live processes are left alone. "This
    host" means the same hostname and process ids: containers that share a cache must not
    share a hostname while having separate process-id namespaces.
    """
    host = socket.gethostname()
    for entry in directory.iterdir():
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or match["host"] != host or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _download(url: str, out, max_bytes: int, timeout: float) -> str:
    """Streams `url` into the open binary file `out`; returns the sha256 of its bytes.

    Raises:
      OSError: the server could not be reached or answered an HTTP error (URL and status
        named); TimeoutError (an OSError) if it did not finish within `timeout` seconds.
      ValueError: it sent more than `max_bytes`.
    """
    import http.client
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    too_big = f"{url}: the download is larger than {max_bytes} bytes (max_bytes=, ZOO_MAX_DOWNLOAD_BYTES); refusing it"
    late = f"{url}: the download did not finish within {timeout:g} s (ZOO_DOWNLOAD_TIMEOUT)"

    def failed(e: Exception) -> OSError:  # a socket timeout, a reset connection, a bad status line, ...
        if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            return TimeoutError(late)
        if isinstance(e, urllib.error.HTTPError):
            e.close()
            cause = f"HTTP {e.code} {e.reason}"
        elif isinstance(e, urllib.error.URLError):
            cause = f"cannot download ({e.reason})"
        else:
            cause = f"download failed ({type(e).__name__}: {e})"
        return OSError(f"{url}: " + " ".join(cause.split()))  # one line (urllib's redirect-loop reason has three)

    network_errors = (OSError, http.client.HTTPException)  # URLError and TimeoutError are OSErrors
    try:
        # timeout= bounds each socket wait; the loop below checks the overall deadline
        response = urllib.request.urlopen(url, timeout=timeout)
    except network_errors as e:
        raise failed(e) from None
    digest, size = hashlib.sha256(), 0
    with response:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise ValueError(too_big)
        while True:
            try:
                chunk = response.read1(1 << 20)  # whatever arrived: a trickle cannot stall the loop
            except network_errors as e:
                raise failed(e) from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(too_big)
            if time.monotonic() > deadline:
                raise TimeoutError(late)
            digest.update(chunk)
            out.write(chunk)
    if length.isdigit() and size != int(length):  # http.client ends a cut-off body quietly
        raise OSError(f"{url}: the connection closed after {size} of {length} bytes")
    return digest.hexdigest()


def _fetch(url: str, sha256: str | None, max_bytes: int | None) -> Path:
    """The export at `url` (a tar.gz), downloaded and extracted into the cache once.

    Everything is written to temporary names in the cache first; an export appears under its
    final name only after the archive matched `sha256` and its files matched its manifest.
    The `finally` below also runs on KeyboardInterrupt; temporaries of killed processes are
    removed by `_remove_dead_temporaries` on the next download.
    """
    max_bytes, timeout = _download_limits(max_bytes)
    key = hashlib.sha256(f"{url}\n{sha256 or ''}".encode()).hexdigest()[:32]
    final = cache_dir() / "exports" / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(final.parent)
    owner = f"{socket.gethostname()}-{os.getpid()}-"
    archive, extracted = None, None
    try:
        fd, archive = tempfile.mkstemp(dir=final.parent, prefix=f".download-{owner}")
        with os.fdopen(fd, "wb") as out:
            found = _download(url, out, max_bytes, timeout)
        if sha256 is not None and found != sha256:
            raise ValueError(f"{url}: sha256 mismatch: expected {sha256}, found {found}")
        extracted = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".extract-{owner}"))
        root = extract_archive(archive, extracted, url, max_bytes=max_bytes)
        verify_export(root)
        try:
            os.rename(root, final)
        except OSError:
            if not final.is_dir():  # else a concurrent download of the same URL got there first
                raise
        return final
    finally:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)
        if archive is not None:
            Path(archive).unlink(missing_ok=True)


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
    entry = tags[tag]  # read_index checked that "dir" is one safe path component
    return weights_dir() / entry["dir"], entry["manifest_sha256"]


def _naming(path, error: OSError) -> OSError:
    """`error` with `path` in its message (the OS names at most a file inside the export)."""
    if error.errno:  # OSError(errno, ...) picks the subclass again: PermissionError, ...
        return OSError(error.errno, f"cannot load {path}: {error.strerror}", error.filename)
    return OSError(f"cannot load {path}: {error}")


def _locate(name: str | None, pretrained: str | None, path, sha256: str | None,
            max_bytes: int | None = None) -> tuple[Path, dict]:
    """Finds (downloading if needed) and verifies an export; returns (directory, manifest)."""
    if name is not None:
        get_spec(name)
    if (pretrained is None) == (path is None):
        shipped = ", ".join(available(name)) or "none shipped yet"
        raise ValueError(f"load({name!r}): pass exactly one of pretrained=<tag> (shipped: {shipped}) or path=")
    if sha256 is not None:
        sha256 = check_sha256(sha256)
    is_url = is_url_path(path)
    if max_bytes is not None and not is_url:
        raise ValueError(f"max_bytes= applies to an http(s) URL in path=, got path={path!r}")
    if pretrained is not None:
        if sha256 is not None:
            raise ValueError("sha256= applies to path=; shipped weights are pinned by the package")
        directory, sha256 = _shipped_dir(name, pretrained)
        manifest = verify_export(directory, manifest_sha256=sha256)
    elif is_url:
        directory = _fetch(path, sha256, max_bytes)
        try:
            manifest = verify_export(directory)
        except ValueError as e:
            raise ValueError(f"{e}\n(the cached download of {path}; delete {directory} to fetch it again)") from None
    else:
        directory = Path(path)
        try:
            manifest = verify_export(directory, manifest_sha256=sha256)
        except OSError as e:
            raise _naming(path, e) from e

    _check_model(manifest, name, f"checkpoint {directory}")
    return directory, manifest


def _check_model(manifest: dict, name: str | None, what: str) -> None:
    """The weights in `what` must be for model `name` (None: any)."""
    if name is not None and manifest.get("model") != name:
        raise ValueError(f"{what} holds weights for model {manifest.get('model')!r}, not {name!r}; "
                         f"load it with zoo.load({manifest.get('model')!r}, ...)")


def read_manifest(name: str | None = None, pretrained: str | None = None, *, path=None, sha256: str | None = None) -> dict:
    """The verified manifest of shipped weights (`name`, `pretrained`) or of an export (`path`).

    Unlike `zoo.formats.orbax_export.read_manifest(directory)`, this finds the export first (a shipped
    tag, a directory or a URL, downloaded if needed) and checks every file's sha256. For a
    .safetensors file, its header's metadata in the same layout (no "files").
    """
    fmt = formats.of_path(path) if pretrained is None else formats.get(formats.DIRECTORY)
    if fmt.read is not None:
        return _read_file(fmt, name, Path(path), sha256, None)[0]
    return _locate(name, pretrained, path, sha256)[1]


def load(
    name: str,
    pretrained: str | None = None,
    *,
    path: str | os.PathLike | None = None,
    sha256: str | None = None,
    max_bytes: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Loads a registered model with exported weights, verified and strictly checked.

    With `num_classes` different from the checkpoint's, the model gets a new output head,
    freshly initialized from `seed`; every other weight is loaded, and a warning names the
    leaves that were reset.

    Args:
      name: registry name; must equal the checkpoint's model.
      pretrained: tag of weights shipped with zoo (see `available(name)`), e.g. "mnist".
      path: instead, an exported checkpoint directory, a local `.safetensors` file
        written by `zoo.formats.safetensors_export.write_safetensors` (or `zoo export --format safetensors`),
        or an http(s) URL of a tar.gz of an export directory (downloaded once into the
        cache, `ZOO_CACHE`).
      sha256: optional pin: the archive's sha256 for a URL, the manifest.json's sha256 for
        a directory, the file's sha256 for a .safetensors file.
      max_bytes: for a URL, the most bytes to download and to extract (default 1 GiB or
        `ZOO_MAX_DOWNLOAD_BYTES`).
      num_classes: the number of classes of the model to return (fine-tuning to new classes).
      seed: the seed of a new head's initialization.

    Returns:
      (model, variables): the module built with the checkpoint's overrides, and its
      variables dict as jax arrays on the default device, ready for `model.apply`.

    Raises:
      UnknownModelError: `name` is not registered.
      ValueError: unknown tag (the message lists the shipped ones), failed verification,
        another model's checkpoint, a tree that does not match the model (the message
        names each parameter path with the expected and the found shape), a download
        over `max_bytes`, an archive that is not a tar.gz of one export, weights holding NaN
        or inf (each leaf named), a `.safetensors` path that is not a regular file (a FIFO,
        a directory), or a `num_classes` head too large for memory.
      OSError: a file could not be read (the message names `path`), or a download failed:
        the URL unreachable, an HTTP error (URL and status named), or TimeoutError after
        `ZOO_DOWNLOAD_TIMEOUT` seconds.
    """
    fmt = formats.of_path(path) if pretrained is None else formats.get(formats.DIRECTORY)
    if fmt.read is not None:  # a one-file format
        source, (manifest, payload) = path, _read_file(fmt, name, Path(path), sha256, max_bytes)
    else:
        (source, manifest), payload = _locate(name, pretrained, path, sha256, max_bytes), None
    model = model_from_manifest(manifest)
    try:
        variables = fmt.restore(source, model, name, payload)
    except OSError as e:
        raise _naming(path if path is not None else source, e) from e
    if num_classes is not None and num_classes != getattr(model, "num_classes", None):
        model, variables = _new_head(model, variables, num_classes, seed)
    return model, jax.device_put(variables)


def _read_file(fmt: formats.Format, name: str | None, path: Path, sha256: str | None,
               max_bytes: int | None) -> tuple[dict, Any]:
    """(manifest, payload) of a one-file export (`fmt.read`): pinned by `sha256` if given, of model `name`."""
    if name is not None:
        get_spec(name)
    if max_bytes is not None:
        raise ValueError(f"max_bytes= applies to an http(s) URL in path=, got path={str(path)!r}")
    try:
        check_regular_file(path, f"a {fmt.suffix} file")  # a FIFO would block, a directory fails obscurely
        if sha256 is not None:
            expected, found = check_sha256(sha256), sha256_file(path)
            if found != expected:
                raise ValueError(f"{path}: sha256 mismatch: expected {expected}, found {found}")
        manifest, payload = fmt.read(path)
    except OSError as e:
        raise _naming(path, e) from e
    _check_model(manifest, name, str(path))
    return manifest, payload


def _new_head(model: nn.Module, loaded: dict, num_classes: int, seed: int) -> tuple[nn.Module, dict]:
    """`model` with `num_classes` logits: loaded weights, a fresh head (seeded), the reset named."""
    if not hasattr(model, "num_classes"):
        raise ValueError(f"{type(model).__name__} has no num_classes to change (its heads are fixed by its fields)")
    new = model.clone(num_classes=num_classes)
    merged, replaced = finetune.merge_pretrained(init(new, jax.random.key(seed)), loaded)
    warnings.warn(f"{type(model).__name__} with num_classes={num_classes}: freshly initialized "
                  f"(seed {seed}): {'; '.join(replaced)}", stacklevel=3)
    return new, merged
