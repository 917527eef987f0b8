"""The run directory: one writer at a time (a lock naming its holder)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class WorkdirBusy(ValueError):
    """Another live process holds the workdir's lock."""


class Lock:
    """An exclusive `flock` on WORKDIR/.lock holding {"pid", "host"} of its owner.

    The kernel drops the lock when its process dies (kill -9 included), so a stale file left by
    a dead run is simply taken over; nothing has to guess whether a pid is still alive.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def acquire(workdir: Path) -> Lock:
    """Locks `workdir` for this run (process 0 of a multi-host run; the others share its lock).

    Raises:
      WorkdirBusy: another process holds it; the message names that process and its host.
    """
    import jax

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    if jax.process_index() != 0:
        return Lock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            owner = {}
        os.close(fd)
        who = f"process {owner.get('pid', '?')} on host {owner.get('host', '?')}"
        raise WorkdirBusy(f"{workdir} is in use by {who}; wait for it to finish or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    return Lock(path, fd)
