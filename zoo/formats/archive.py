"""An export directory as one tar.gz (one top directory): packed reproducibly by `archive`,
extracted within limits by `extract_archive` (what `zoo.load(name, path=URL)` downloads)."""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from zoo.files import is_safe_relpath, list_files, sha256_file
from zoo.formats.common import MANIFEST
from zoo.formats.orbax_export import verify_export

__all__ = ["MAX_ARCHIVE_MEMBERS", "archive", "extract_archive"]


MAX_ARCHIVE_MEMBERS = 10_000  # an export has a few dozen files; more is an attack or a mistake


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


def _check_member(member: tarfile.TarInfo, source: str, seen: set, dirs: set, size: int, max_bytes: int) -> int:
    """Refuses (ValueError) a member that is not a new regular file or directory at a safe
    relative path, or that passes `max_bytes`; records it in `seen`/`dirs`; returns its size."""
    name = member.name
    if not is_safe_relpath(name):
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
        if size + member.size > max_bytes:
            raise ValueError(f"{source}: the archive expands to more than {max_bytes} bytes; refusing it")
    return member.size if member.isfile() else 0


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
                    size += _check_member(member, source, seen, dirs, size, max_bytes)
                    try:
                        tar.extract(member, dest, filter="data")
                    except tarfile.FilterError as e:
                        raise ValueError(f"{source}: refusing archive member {member.name!r} ({e})") from None
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
