"""Atomic file writes: a file either appears whole under its final name or not at all.

Every artefact a script writes goes through these helpers: the bytes are written to a
temporary file in the destination folder, flushed to disk, then moved into place with
``os.replace`` (atomic on POSIX and Windows when source and target share a file system).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ddpm_ood.utils.errors import WriteError

# Our temporaries are ``.ddpm_ood.<name>.<random>.tmp``: the prefix marks them as ours, so a
# clean-up after a killed run never deletes another program's ``*.tmp`` files.
TEMP_PREFIX = ".ddpm_ood."


def _umask() -> int:
    """The process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming the folder, if a file cannot be written at ``path`` (a read-only run), rather
    than after the work that makes it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent):
            pass
    except OSError as err:
        raise WriteError(f"Cannot write {path}: {err.strerror or err}. Check that {path.parent} is writable, or choose "
                         "another place (ood_detection.py --predictions PATH).") from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, before_replace=None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    On failure the temporary file is removed and the previous ``path`` (if any) stays as it was.
    ``before_replace``: called once the new file is whole and on disk, just before the move (e.g.
    to keep the previous version under another name).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates the file 0600; give it the mode a normally created file gets.
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError as err:
        raise WriteError(
            f"Cannot write {path}: {err.strerror or err}. Check that {path.parent} is writable, or choose "
            "another output folder."
        ) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(
            f"Could not write {path}: {err.strerror or err}. Free some disk space or check the folder, then "
            "re-run; the previous version of the file, if any, is untouched."
        ) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete our temporary files (``.ddpm_ood.<name>.<random>.tmp``) that a killed writer left
    in ``folder``; files of any other name are never touched.

    Call only where no other process of ours is writing into the same folder (the run lock).
    """
    removed = 0
    for tmp in Path(folder).glob(f"{TEMP_PREFIX}*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """A whole copy of ``source`` at ``path``, or none (a failed copy leaves ``path`` as it was)."""
    import shutil

    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def save_csv_atomic(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def save_torch_atomic(path: str | os.PathLike, obj: object, before_replace=None) -> None:
    with atomic_path(path, before_replace) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch reports a full disk (or a file size limit) as RuntimeError
            raise OSError(errno.EIO, f"{str(err).splitlines()[0]} (a full disk or a file size limit?)") from err


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()
