"""Resumable results files: each detector's results of a set are committed in chunks.

For a results file ``results_<set>.csv`` the work is split into chunks of images; each
finished chunk is written atomically to ``.partial/<set>/chunk_<k>.csv`` next to a
``settings.json`` describing how the numbers were made (the manifest, :mod:`ddpm_ood.runs.layout`). A
re-run with the same settings skips finished chunks; when all are there they are joined into
the results file (the same path for an interrupted and an uninterrupted run, so both give
identical files), the manifest is kept beside it as ``results_<set>.settings.json`` and the
chunks removed. Results made with other settings are never mixed in: the run stops unless told
to restart.

The steps, so that several writers can share a set (torchrun ranks, --shard jobs): ``prepare``
(check or start the partial results), ``pending`` (chunks not on disk), ``commit`` (one chunk,
atomically), ``finalise`` (join them, by one writer). :func:`run_chunks` runs that protocol for
one (detector, set): who measures which chunk, who joins them, when the others wait.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ddpm_ood.utils.errors import DataError, ManifestError
from ddpm_ood.utils.files import remove_stale_temporaries, save_csv_atomic, text_sha256, write_text_atomic
from ddpm_ood.runs.layout import (PLAIN_NAME, EXTRA_KEYS, RunFiles, made_with, manifest_differences, manifest_file,
                           read_manifest, results_identity, same_results, write_manifest)

logger = logging.getLogger(__name__)

_UNREADABLE = object()  # a manifest that exists but cannot be read: never equal to any settings


class ResultsStore:
    def __init__(self, run: RunFiles, folder: str, name: str, settings: dict, restart: bool = False):
        if not PLAIN_NAME.fullmatch(name):  # the name becomes a file and a folder name
            raise DataError(f"Results set name {name!r} is not a plain name (letters, digits, . _ + -).")
        self.final = run.results(folder, name)
        self.settings_file = manifest_file(self.final)
        self.partial = run.partial(folder, name)
        self.partial_manifest = run.partial_manifest(folder, name)
        self._chunk = lambda k: run.chunk(folder, name, k)
        self.settings = made_with(settings)
        self.restart = restart

    def extras(self) -> dict:
        """The add-on entries (cost, examples) of the finished results' manifest."""
        stored = read_manifest(self.settings_file) or {}
        return {k: stored[k] for k in EXTRA_KEYS if k in stored}

    def record_extras(self, entries: dict) -> None:
        """Add add-on entries (EXTRA_KEYS) to the results' manifest; written only if one changed."""
        unknown = sorted(set(entries) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"{unknown} are not add-on entries ({EXTRA_KEYS}); they would change what the results "
                             "were made with")
        stored = read_manifest(self.settings_file) or dict(self.settings)
        if all(stored.get(key) == value for key, value in json.loads(json.dumps(entries)).items()):
            return
        write_manifest(self.settings_file, {**stored, **entries}, sealed=True)

    def save_examples(self, path: Path, n: int, make: Callable[[int], dict | None], filenames,
                      extra: Callable[[int], dict] | None = None) -> None:
        """An add-on of finished results: arrays ``make(n)`` of the set's first ``n`` images (and their
        file names, and ``extra(n)``: their ground-truth masks) in ``path``, recorded in the manifest, so a
        later run asking for the same keeps them."""
        from ddpm_ood.utils.files import save_npz_atomic

        draws = int(self.settings.get("noise_draws", 1))  # examples of every draw: the maps average them
        record = {"file": path.name, "n": n, **({"draws": draws} if draws > 1 else {})}
        if not n or not self.final.exists() or self.extras().get("examples") == record:
            return
        arrays = make(n)
        if arrays is not None:
            arrays = {**arrays, **(extra(n) if extra is not None else {})}
            save_npz_atomic(path, filenames=np.asarray(filenames[:n]), **arrays)
            self.record_extras({"examples": record})

    def is_complete(self) -> bool:
        """True if the results file exists and was made with these settings; raises if with others."""
        if not self.final.exists():
            return False
        stored = self._stored(self.settings_file)
        if isinstance(stored, dict) and same_results(stored, self.settings):
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
        return self._chunk(k)

    def prepare(self, alone: bool = True) -> None:
        """Check (or start) the partial results of this set.

        ``alone``: no other writer can be at work on this folder (one process, or rank 0 before
        the others start), so temporaries a killed run left are deleted and ``--restart`` may
        discard partial results. Several independent writers (``--shard``) may call this at
        once: each writes the same manifest atomically, and nothing is deleted.
        """
        manifest = self.partial_manifest
        if alone:
            for folder in (self.final.parent, self.partial):
                if folder.exists():
                    remove_stale_temporaries(folder)  # left by a run that was killed mid-write
        if self.partial.exists():
            stored = self._stored(manifest)
            if stored is None and not alone:
                stored = self._start_partial(manifest)  # another shard has just created the folder
            if not (isinstance(stored, dict) and same_results(stored, self.settings)):
                if not (self.restart and alone):
                    raise DataError(self._mismatch(self.partial, stored))
                shutil.rmtree(self.partial)
        if not self.partial.exists():
            self._start_partial(manifest)

    def _start_partial(self, manifest: Path) -> dict:
        self.partial.mkdir(parents=True, exist_ok=True)
        write_manifest(manifest, self.settings)
        return self.settings

    def all_done(self, n_images: int, chunk_size: int) -> bool:
        return not self.pending(n_images, chunk_size)

    def pending(self, n_images: int, chunk_size: int) -> list[tuple[int, int, int]]:
        """The chunks not yet on disk."""
        return [c for c in self.chunks(n_images, chunk_size) if not self.chunk_file(c[0]).exists()]

    def commit(self, k: int, frame: pd.DataFrame) -> None:
        save_csv_atomic(self.chunk_file(k), frame)

    def finalise(self, n_images: int, chunk_size: int) -> Path:
        """Join the chunks into the results file (with its manifest) and remove them."""
        frame = pd.concat([pd.read_csv(self.chunk_file(k)) for k, _, _ in self.chunks(n_images, chunk_size)],
                          ignore_index=True)
        text = frame.to_csv(index=False)
        # Sealed: the results file's SHA-256 and the manifest's own, so that an edit of either is caught.
        write_manifest(self.settings_file, {**self.settings, "results_sha256": text_sha256(text)}, sealed=True)
        write_text_atomic(self.final, text)
        shutil.rmtree(self.partial)
        with contextlib.suppress(OSError):  # .partial/ itself, once no other set is in progress (or a shard's)
            self.partial.parent.rmdir()
        return self.final

    @staticmethod
    def _stored(path: Path):
        """The manifest at ``path``: a dict, None if there is none, or _UNREADABLE."""
        try:
            return read_manifest(path)
        except ManifestError:
            return _UNREADABLE

    def _mismatch(self, where: Path, stored) -> str:
        if not isinstance(stored, dict):
            detail = "with unknown settings (its manifest is missing or cannot be read)"
        else:
            differences = manifest_differences(results_identity(stored), results_identity(self.settings),
                                               (stored.get("model_parts"), self.settings.get("model_parts")))
            detail = "with other settings (" + "; ".join(differences) + ")"
        return (f"{where} was made {detail}. Pass --restart to discard it and start this set over, "
                "or use another --output_dir/--model_name.")


@dataclass(frozen=True)
class Workers:
    """Who does which chunks: chunk k goes to worker k % count (torchrun ranks or --shard jobs).

    ``alone``: no writer outside this process (group) touches the run, so this one joins the
    chunks itself; independent --shard jobs instead leave that to whichever finishes last.
    """

    index: int = 0
    count: int = 1
    alone: bool = True

    @classmethod
    def of(cls, dist, shard: tuple[int, int] | None, restart: bool = False) -> "Workers":
        if shard is not None and (dist.active or restart):
            raise DataError("--shard is for independent jobs: use it without torchrun (whose ranks share the chunks "
                            "by themselves) and without --restart (which could discard another shard's work; run "
                            "one --restart without --shard first).")
        if dist.active:
            return cls(dist.rank, dist.world_size, True)
        if shard is not None:
            return cls(shard[0], shard[1], False)
        return cls()


def run_chunks(store: ResultsStore, n_images: int, chunk_size: int, measure: Callable[[int, int, Callable], pd.DataFrame],
               dist, workers: Workers, desc: str) -> bool:
    """Measure this process's pending chunks of one (detector, set) and join them when all are done.

    ``measure(start, stop, advance)`` returns the frame of images start..stop-1 and calls
    ``advance(n)`` as images finish (one progress bar per set, across its chunks). Returns True
    when this process should write the set's add-ons (rank 0, once the results file exists;
    False while other --shard jobs still hold chunks of it).
    """
    from tqdm import tqdm

    from ddpm_ood.utils.runtime import check_interrupted

    complete = store.is_complete() if dist.is_main else None
    if dist.broadcast_object(complete):
        if dist.is_main:
            logger.info("%s is complete for these settings; skipping", store.final)
        return dist.is_main  # only rank 0 writes
    if dist.is_main:
        store.prepare(alone=workers.alone)
    dist.barrier()
    if not dist.is_main:
        store.prepare(alone=False)  # reads the manifest rank 0 has just checked
    mine = [c for c in store.pending(n_images, chunk_size) if c[0] % workers.count == workers.index]
    with tqdm(total=sum(stop - start for _, start, stop in mine), unit="img", desc=desc, dynamic_ncols=True,
              disable=not dist.is_main) as bar:
        for k, start, stop in mine:
            check_interrupted()  # a Ctrl-C the interpreter swallowed still stops at the next chunk
            store.commit(k, measure(start, stop, bar.update))
    dist.barrier()  # every rank's chunks are on disk
    if dist.active and not dist.is_main:
        return False
    if workers.alone:
        store.finalise(n_images, chunk_size)
    else:
        finalise_shared(store, n_images, chunk_size)
    if store.final.exists():
        logger.info("wrote %s (%d images)", store.final, n_images)
    return store.final.exists()


def finalise_shared(store: ResultsStore, n_images: int, chunk_size: int) -> None:
    """With independent --shard jobs: whichever finds every chunk on disk joins them, one at a
    time (the others find the set complete and leave it)."""
    from ddpm_ood.runs.lock import run_lock

    if not store.all_done(n_images, chunk_size):
        left = len(store.pending(n_images, chunk_size))
        logger.info("%s: %d chunk(s) left to other shards; the last shard to finish joins them (or re-run "
                    "without --shard).", store.final.name, left)
        return
    with run_lock(store.final.parent, "finalise", wait=True):
        if store.partial.exists() and store.all_done(n_images, chunk_size):
            store.finalise(n_images, chunk_size)
