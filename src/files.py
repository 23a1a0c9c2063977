"""Atomic file writes: a file either appears whole under its final name or not at all.

Every artefact a script writes goes through these helpers: the bytes are written to a
temporary file in the destination folder, flushed to disk, then moved into place with
``os.replace`` (atomic on POSIX and Windows when source and target share a file system).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch


class WriteError(RuntimeError):
    """An output could not be written (permissions, full disk); any earlier version is untouched."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    On failure the temporary file is removed and the previous ``path`` (if any) stays as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    """Delete temporary files (``.<name>.<random>.tmp``) that a killed writer left in ``folder``.

    Call only where no other process is writing into the same folder.
    """
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


def save_csv_atomic(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def save_torch_atomic(path: str | os.PathLike, obj: object) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
