"""The results store and its chunk protocol (run_chunks), with fake measurements and fake workers."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from ddpm_ood.runs.layout import RunFiles, made_with, read_manifest
from ddpm_ood.runs.store import ResultsStore, Workers, run_chunks
from ddpm_ood.utils.distributed import Dist
from ddpm_ood.utils.errors import DataError
from helpers.pipeline import reconstruct_tiny, train_tiny

SETTINGS = {"seed": 0, "chunk_size": 3, "n_images": 8}


def fake_measure(calls: list):
    """A measurement whose rows are known: image i gives value i * i; it records what it was asked."""
    def measure(start, stop, advance):
        calls.append((start, stop))
        advance(stop - start)
        return pd.DataFrame({"image_index": range(start, stop), "value": [i * i for i in range(start, stop)]})
    return measure


def store(tmp_path, settings=SETTINGS, restart=False, folder="det"):
    return ResultsStore(RunFiles(tmp_path / "run"), folder, "val", settings, restart)


def test_one_worker_measures_every_chunk_and_joins_them(tmp_path):
    calls = []
    s = store(tmp_path)
    assert run_chunks(s, 8, 3, fake_measure(calls), Dist(), Workers(), "det val")
    assert calls == [(0, 3), (3, 6), (6, 8)]
    frame = pd.read_csv(s.final)
    assert frame["value"].tolist() == [i * i for i in range(8)] and not s.partial.exists()
    assert not s.partial.parent.exists()  # .partial/ too: main before this left it behind, empty
    assert made_with(read_manifest(s.final)) == SETTINGS and len(read_manifest(s.final)["results_sha256"]) == 64
    calls.clear()  # complete: nothing measured again
    assert run_chunks(s, 8, 3, fake_measure(calls), Dist(), Workers(), "det val") and calls == []


def test_two_independent_workers_share_the_chunks_and_the_last_one_joins(tmp_path):
    one = store(tmp_path / "one")
    run_chunks(one, 8, 3, fake_measure([]), Dist(), Workers(), "det val")
    first, second = [], []
    shared = store(tmp_path)
    assert not run_chunks(shared, 8, 3, fake_measure(second), Dist(), Workers(1, 2, alone=False), "det val")
    assert second == [(3, 6)] and not shared.final.exists()  # chunk 1 of 0..2; chunks 0 and 2 are the other's
    assert run_chunks(store(tmp_path), 8, 3, fake_measure(first), Dist(), Workers(0, 2, alone=False), "det val")
    assert first == [(0, 3), (6, 8)]
    assert shared.final.read_bytes() == one.final.read_bytes()


def test_shards_are_refused_under_torchrun_or_with_restart():
    class Active(Dist):
        @property
        def active(self):
            return True

    assert Workers.of(Dist(), None) == Workers() and Workers.of(Dist(), (1, 4)) == Workers(1, 4, False)
    assert Workers.of(Active(1, 2), None) == Workers(1, 2, True)
    for dist, restart in ((Active(0, 2), False), (Dist(), True)):
        with pytest.raises(DataError, match="--shard is for independent jobs"):
            Workers.of(dist, (0, 2), restart)


def test_other_settings_are_refused_unless_restarting_and_a_damaged_manifest_too(tmp_path):
    run_chunks(store(tmp_path), 8, 3, fake_measure([]), Dist(), Workers(), "det val")
    with pytest.raises(DataError, match=r"results_val.csv was made with other settings \(seed \(0 vs 1\)\).*--restart"):
        store(tmp_path, {**SETTINGS, "seed": 1}).is_complete()
    s = store(tmp_path)
    s.settings_file.write_text("{damaged")
    with pytest.raises(DataError, match="unknown settings"):
        s.is_complete()
    restarted = store(tmp_path, restart=True)
    assert not restarted.is_complete() and not restarted.final.exists()  # discarded, to be made again
    # A partial set of other settings: refused, or discarded with --restart.
    partial = store(tmp_path)
    partial.prepare()
    partial.commit(0, pd.DataFrame({"a": [1]}))
    with pytest.raises(DataError, match=r"\.partial/val was made with other settings"):
        store(tmp_path, {**SETTINGS, "seed": 2}).prepare()
    store(tmp_path, {**SETTINGS, "seed": 2}, restart=True).prepare()
    assert not partial.chunk_file(0).exists()


def test_add_ons_are_recorded_without_changing_what_the_results_were_made_with(tmp_path):
    s = store(tmp_path)
    run_chunks(s, 8, 3, fake_measure([]), Dist(), Workers(), "det val")
    s.record_extras({"nfe_per_image": 7})
    assert made_with(read_manifest(s.final)) == SETTINGS and read_manifest(s.final)["nfe_per_image"] == 7
    assert s.is_complete()
    with pytest.raises(ValueError, match="not add-on entries"):
        s.record_extras({"seed": 5})
    made = []
    s.save_examples(tmp_path / "examples.npz", 2, lambda n: made.append(n) or {"x": pd.Series(range(n)).to_numpy()},
                    ["a", "b", "c"])
    s.save_examples(tmp_path / "examples.npz", 2, lambda n: made.append(n), ["a", "b", "c"])  # recorded: kept
    assert made == [2] and s.extras() == {"nfe_per_image": 7, "examples": {"file": "examples.npz", "n": 2}}


@pytest.mark.slow
def test_one_progress_bar_per_set_across_its_chunks(tmp_path, synthetic_splits, capsys):
    out = tmp_path / "models"
    train_tiny(out, synthetic_splits)
    capsys.readouterr()
    reconstruct_tiny(out, synthetic_splits, "--run_in=0", "--chunk_size=3")
    bars = re.findall(r"reconstructing val: .*?(\d+)/(\d+)", capsys.readouterr().err)
    assert bars and {total for _, total in bars} == {"8"} and bars[-1][0] == "8"
