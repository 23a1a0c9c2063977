"""One process at a time per run folder: an advisory lock (``fcntl.flock``) on a lock file.

Two ``train.py`` on one run, or two ``reconstruct.py`` on one run's ``ood/`` folder, would
overwrite each other's checkpoints or chunks. The first takes the lock and writes its pid
into the lock file; a second stops at once with a message naming that pid. The kernel drops
the lock when the holder exits, however it exits (SIGKILL included), so a stale lock file
never blocks a later run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

from ddpm_ood.utils.errors import RunLocked, WriteError


@contextlib.contextmanager
def run_lock(folder: Path, what: str, shared: bool = False, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder/.<what>.lock`` for the duration of the block, or raise RunLocked.

    ``shared``: several holders at once (independent ``--shard`` jobs), but never together
    with an exclusive holder. ``wait``: block until the lock is free instead of raising.

    A block that fails in a folder this lock created, leaving nothing in it but the lock file (a run
    refused before it wrote anything), leaves no folder behind either.
    """
    path = Path(folder) / f".{what}.lock"
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and path.parent.is_dir():
            # A read-only run: no process can write it, so there is nothing to guard; a finished run is
            # still read (and anything that must be written fails then, naming the file).
            logging.getLogger("ddpm_ood").warning("%s is read-only: going on without the lock file %s.",
                                                  path.parent, path.name)
            yield path
            return
        raise WriteError(f"Cannot create the lock file {path}: {err.strerror or err}. Check that "
                         f"{path.parent} is writable.") from err
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{path.parent} is in use by another {what} process (pid {holder}). Wait for it to finish or "
                f"stop it, then re-run; two processes writing one run would overwrite each other's files."
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode().ljust(12), 0)
        yield path
    except BaseException:
        if created and [p.name for p in path.parent.iterdir()] == [path.name]:
            path.unlink(missing_ok=True)  # still holding the lock: no one else can be inside
            path.parent.rmdir()
        raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock
