"""File helpers zoo writes and reads with: atomic writes, sha256, regular-file checks.

Every file zoo writes (checkpoints' sidecars, exports, manifests, logs) goes through
`write_text_atomic`/`write_json_atomic` (readers see the old or the new content, never a part);
every tree it hashes is listed with `list_files`, which opens nothing and refuses links, FIFOs
and devices.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "sha256_file", "check_sha256", "is_safe_relpath", "write_text_atomic", "write_json_atomic", "file_kind",
    "list_files", "os_error_of", "is_url_path", "NotARegularFileError", "check_regular_file", "open_regular_file", "read_regular_file",
]


_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (a regular file: see `open_regular_file`)."""
    with open_regular_file(path, "a file to hash") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
        raise NotARegularFileError(path, file_kind(mode), what)
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
            raise NotARegularFileError(path, file_kind(mode), what)
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


def is_safe_relpath(rel: str) -> bool:
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


def file_kind(mode: int) -> str:
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
                bad.append(f"{rel}: is {file_kind(mode)} (exports hold only regular files)")
        dirs[:] = real_dirs  # descend into real directories only
    if bad:
        raise ValueError(f"exported checkpoint {directory} failed verification:\n  " + "\n  ".join(sorted(bad)))
    return sorted(files)


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


def is_url_path(path) -> bool:
    """Whether `path` is an http(s) URL (the scheme is case-insensitive: HTTP://host is one)."""
    return isinstance(path, str) and path[:8].lower().startswith(("http://", "https://"))
