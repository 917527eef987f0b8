"""The run directory: one writer at a time (a lock naming its holder)."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
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


def check_shared(workdir: Path) -> None:
    """Multi-host runs: raises ValueError on EVERY process unless all of them see `workdir`.

    Process 0 writes a marker named by a token it broadcasts; each process looks for it for up
    to `ZOO_SHARED_WORKDIR_TIMEOUT` seconds (default 60, for slow network filesystems); then
    all processes exchange what they saw, so none of them goes on to wait forever for the
    others at the first checkpoint.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
    marker = Path(workdir) / f".shared-{token}"
    if jax.process_index() == 0:
        marker.touch()
    deadline = time.monotonic() + float(os.environ.get("ZOO_SHARED_WORKDIR_TIMEOUT", "60"))
    while not (seen := marker.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    everyone = np.asarray(multihost_utils.process_allgather(np.int32(seen))).reshape(-1)
    if jax.process_index() == 0:
        marker.unlink()
    if not everyone.all():
        blind = [int(i) for i in np.flatnonzero(everyone == 0)]
        raise ValueError(f"--workdir {workdir} must be on storage shared by all processes: process(es) {blind} "
                         f"do not see the files process 0 writes there")
