"""Resumable results files: reconstruction results are committed in chunks.

For a results file ``ood/results_<name>.csv`` the work is split into chunks of images; each
finished chunk is written atomically to ``ood/.partial/<name>/chunk_<k>.csv`` next to a
``settings.json`` describing how the numbers were made. A re-run with the same settings
skips finished chunks; when all are there they are joined into the results file (the same
path for an interrupted and an uninterrupted run, so both give identical files), the
settings are kept beside it as ``results_<name>.settings.json`` and the chunks removed.
Results made with other settings are never mixed in: the run stops unless told to restart.

The steps, so that several writers can share a set (torchrun ranks, --shard jobs):
``prepare`` (check or start the partial results), ``pending`` (chunks not on disk),
``commit`` (one chunk, atomically), ``finalise`` (join them, by one writer).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from src.cli import PLAIN_NAME
from src.errors import DataError
from src.files import remove_stale_temporaries, save_csv_atomic, write_text_atomic

logger = logging.getLogger(__name__)


class ResultsStore:
    def __init__(self, out_dir: Path, name: str, settings: dict, restart: bool = False):
        if not PLAIN_NAME.fullmatch(name):  # the name becomes a file and a folder name
            raise DataError(f"Results set name {name!r} is not a plain name (letters, digits, . _ + -).")
        self.final = out_dir / f"results_{name}.csv"
        self.settings_file = out_dir / f"results_{name}.settings.json"
        self.partial = out_dir / ".partial" / name
        self.settings = json.loads(json.dumps(settings))  # as it will read back
        self.restart = restart

    # Entries of a results manifest that describe add-ons (files made beside the results), not
    # how the results were made: never compared.
    EXTRA_KEYS = ("examples", "nfe_per_image", "nfe_per_start")

    def extras(self) -> dict:
        stored = self._read_settings(self.settings_file) or {}
        return {k: stored[k] for k in self.EXTRA_KEYS if k in stored}

    def record_extras(self, entries: dict) -> None:
        """Add add-on entries (EXTRA_KEYS) to the results' settings manifest; written only if one changed."""
        stored = self._read_settings(self.settings_file) or dict(self.settings)
        if all(stored.get(key) == value for key, value in json.loads(json.dumps(entries)).items()):
            return
        stored.update(entries)
        write_text_atomic(self.settings_file, json.dumps(stored, indent=1, sort_keys=True))

    def is_complete(self) -> bool:
        """True if the results file exists and was made with these settings; raises if with others."""
        if not self.final.exists():
            return False
        stored = self._read_settings(self.settings_file)
        if stored is not None:
            stored = {k: v for k, v in stored.items() if k not in self.EXTRA_KEYS}
        if stored == self.settings:
            return True
        if self.restart:
            self.final.unlink()
            self.settings_file.unlink(missing_ok=True)
            return False
        raise DataError(self._mismatch(self.final, stored))

    @staticmethod
    def chunks(n_images: int, chunk_size: int) -> list[tuple[int, int, int]]:
        """(chunk number, first image, stop) of every chunk."""
        return [(k, start, min(start + chunk_size, n_images)) for k, start in enumerate(range(0, n_images, chunk_size))]

    def chunk_file(self, k: int) -> Path:
        return self.partial / f"chunk_{k:05d}.csv"

    def prepare(self, alone: bool = True) -> None:
        """Check (or start) the partial results of this set.

        ``alone``: no other writer can be at work on this folder (one process, or rank 0 before
        the others start), so temporaries a killed run left are deleted and ``--restart`` may
        discard partial results. Several independent writers (``--shard``) may call this at
        once: each writes the same manifest atomically, and nothing is deleted.
        """
        manifest = self.partial / "settings.json"
        if alone:
            for folder in (self.final.parent, self.partial):
                if folder.exists():
                    remove_stale_temporaries(folder)  # left by a run that was killed mid-write
        if self.partial.exists():
            stored = self._read_settings(manifest)
            if stored is None and not alone:
                stored = self._start_partial(manifest)  # another shard has just created the folder
            if stored != self.settings:
                if not (self.restart and alone):
                    raise DataError(self._mismatch(self.partial, stored))
                shutil.rmtree(self.partial)
        if not self.partial.exists():
            self._start_partial(manifest)

    def _start_partial(self, manifest: Path) -> dict:
        self.partial.mkdir(parents=True, exist_ok=True)
        write_text_atomic(manifest, json.dumps(self.settings, indent=1, sort_keys=True))
        return self.settings

    def all_done(self, n_images: int, chunk_size: int) -> bool:
        return not self.pending(n_images, chunk_size)

    def pending(self, n_images: int, chunk_size: int) -> list[tuple[int, int, int]]:
        """The chunks not yet on disk."""
        return [c for c in self.chunks(n_images, chunk_size) if not self.chunk_file(c[0]).exists()]

    def commit(self, k: int, frame: pd.DataFrame) -> None:
        save_csv_atomic(self.chunk_file(k), frame)

    def finalise(self, n_images: int, chunk_size: int) -> Path:
        """Join the chunks into the results file (with its settings manifest) and remove them."""
        frame = pd.concat([pd.read_csv(self.chunk_file(k)) for k, _, _ in self.chunks(n_images, chunk_size)],
                          ignore_index=True)
        write_text_atomic(self.settings_file, json.dumps(self.settings, indent=1, sort_keys=True))
        save_csv_atomic(self.final, frame)
        shutil.rmtree(self.partial)
        return self.final

    @staticmethod
    def _read_settings(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _mismatch(self, where: Path, stored: dict | None) -> str:
        if stored is None:
            detail = "with unknown settings"
        else:
            keys = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            detail = "with other settings (" + ", ".join(keys) + ")"
        return (f"{where} was made {detail}. Pass --restart to discard it and start this set over, "
                "or use another --output_dir/--model_name.")
