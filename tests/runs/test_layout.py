"""The run's file layout and the settings manifest: literal paths, key groups, one reader, one comparison."""
from __future__ import annotations

import json

import pytest

import ood_detection
import reconstruct
import train
from conftest import reseal, write_split
from ddpm_ood.runs.layout import (
    RunFiles,
    build_manifest,
    made_with,
    manifest_differences,
    manifest_file,
    model_settings,
    planned_sets,
    read_manifest,
    scored_settings,
    set_entries,
    write_manifest,
)
from ddpm_ood.utils.errors import DataError, ManifestError, ScoringError
from helpers.pipeline import reconstruct_tiny, tiny_score, train_tiny

MODEL = {"model_file": "/r/m/best_model.pth", "model_file_bytes": 10, "model_file_mtime_ns": 5}
RUN = {"seed": 0, "precision": "fp32", "is_grayscale": 1, "noise": "pixels-sha256"}


def test_every_artefact_path_of_a_run(tmp_path):
    run = RunFiles(tmp_path / "m")
    root = tmp_path / "m"
    assert run.name == "m"
    assert [run.config, run.checkpoint, run.previous_checkpoint, run.best_model, run.final_model] == [
        root / "config.yaml", root / "checkpoint.pth", root / "checkpoint_prev.pth", root / "best_model.pth",
        root / "final_model.pth"]
    # The paper's detector keeps the paper's file names; every other detector has a folder of its own.
    assert run.results("", "val") == root / "ood" / "results_val.csv"
    assert run.results("path", "MNIST") == root / "ood" / "path" / "results_MNIST.csv"
    assert run.partial("msma", "in") == root / "ood" / "msma" / ".partial" / "in"
    assert run.partial_manifest("", "in") == root / "ood" / ".partial" / "in" / "settings.json"
    assert run.chunk("", "in", 3) == root / "ood" / ".partial" / "in" / "chunk_00003.csv"
    assert manifest_file(run.results("", "in")) == root / "ood" / "results_in.settings.json"
    assert [run.summary, run.auroc_per_t, run.fit("msma"), run.scores("val"), run.examples("in"),
            run.example_figure("in"), run.predictions("new"), run.predictions("new", "path-1d")] == [
        root / "ood" / "summary_auroc.csv", root / "ood" / "auroc_per_t.csv", root / "ood" / "fits" / "msma.json",
        root / "ood" / "scores_val.csv", root / "ood" / "examples_in.npz", root / "ood" / "figures" / "examples_in.png",
        root / "ood" / "predictions_new.csv", root / "ood" / "predictions_new_path-1d.csv"]
    assert run.tensorboard_scoring == root / "tensorboard" / "ood_detection"


def test_model_files_are_picked_best_then_final_then_checkpoint(tmp_path):
    run = RunFiles(tmp_path)
    with pytest.raises(Exception, match="No model file"):
        run.find_model_file()
    for path in (run.checkpoint, run.final_model, run.best_model):
        path.write_text("x")
        assert run.find_model_file() == path
    assert run.trained_files() == [run.best_model, run.final_model, run.checkpoint]


def test_result_sets_are_the_files_a_folder_holds(tmp_path):
    run = RunFiles(tmp_path)
    (tmp_path / "ood" / "path").mkdir(parents=True)
    for name in ("results_val.csv", "results_MNIST.csv", "results_val.settings.json", "scores_in.csv"):
        (tmp_path / "ood" / name).write_text("x")
    assert run.result_sets("") == ["MNIST", "val"] and run.result_sets("path") == []


def test_the_manifest_groups_and_what_each_comparison_sees(tmp_path):
    entries = set_entries(tmp_path / "a.csv", 5, ["x.npy", "y.npy"])
    assert entries["n_images"] == 2 and entries["first_n"] == 5 and entries["split"] == str((tmp_path / "a.csv").resolve())
    assert entries["files_digest"] != set_entries(tmp_path / "a.csv", 5, ["y.npy", "x.npy"])["files_digest"]
    manifest = build_manifest(MODEL, RUN, {"detector": "path", "path_t": (0, 500)}, entries, 64)
    assert manifest["path_t"] == [0, 500] and manifest["chunk_size"] == 64  # as JSON reads it back
    with_extras = {**manifest, "nfe_per_image": 2, "examples": {"file": "e.npz", "n": 1}}
    assert made_with(with_extras) == manifest
    # Scoring compares neither the set, nor the chunking, nor the add-ons ...
    other_set = build_manifest(MODEL, RUN, {"detector": "path", "path_t": [0, 500]},
                               set_entries(tmp_path / "b.csv", None, ["z.npy"]), 512)
    assert scored_settings(with_extras) == scored_settings(other_set)
    # ... and a detector's results are compared with another detector's on the model and run only.
    # identity by content, not by location (and how another library's model's images were made, if recorded)
    assert model_settings(manifest) == {"model_id": None, "preprocessing": None, **RUN}


def test_differences_name_each_setting_and_both_values():
    a = {**MODEL, **RUN, "start_t": [1, 11], "path_t": [0]}
    b = {**a, "model_file_mtime_ns": 6, "seed": 3, "path_t": [0, 5]}
    assert manifest_differences(a, b) == ["seed (0 vs 3)", "model file time (5 vs 6)", "path_t ([0] vs [0, 5])"]
    assert manifest_differences(a, a) == []
    assert manifest_differences(a, {k: v for k, v in a.items() if k != "start_t"}) == ["start points ([1, 11] vs None)"]


def test_one_reader_one_error_policy(tmp_path):
    results = tmp_path / "results_in.csv"
    assert read_manifest(results) is None  # no manifest: not written by reconstruct.py
    write_manifest(manifest_file(results), {"seed": 1})
    assert read_manifest(results) == {"seed": 1} == read_manifest(manifest_file(results))
    assert json.loads(manifest_file(results).read_text()) == {"seed": 1}
    manifest_file(results).write_text("{not json")
    with pytest.raises(ManifestError, match=r"results_in.settings.json is damaged.*--restart"):
        read_manifest(results)
    manifest_file(results).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="results_in.settings.json is not a settings manifest"):
        read_manifest(results)


def test_planned_sets_are_checked_before_any_work(tmp_path, synthetic_splits):
    val, test, ood = (str(synthetic_splits[k]) for k in ("val", "test", "ood"))
    sets = planned_sets(val, test, None, f"{ood},{test.replace('_test', '_vflip_test')}", True, True, True, 4, None)
    assert [(name, first_n) for name, _, first_n in sets] == [("val", 4), ("in", None), ("Stripes", None),
                                                               ("Blobs_vflip", None)]
    with pytest.raises(DataError, match="--validation_ids is required"):
        planned_sets(None, test, None, "", True, True, False, None, None)
    with pytest.raises(DataError, match="same results file"):
        planned_sets(val, test, None, f"{ood},{ood}", True, True, True, None, None)
    with pytest.raises(DataError, match="nope.csv does not exist"):
        planned_sets(val, test, str(tmp_path / "nope.csv"), "", True, True, False, None, None)


def test_very_long_names_are_refused_in_one_line(tmp_path, synthetic_splits, capsys):
    with pytest.raises(SystemExit):
        ood_detection.parse_args(["--output_dir=o", f"--model_name={'m' * 300}"])
    assert "too long a name" in capsys.readouterr().err
    long_csv = write_split(tmp_path / f"{'x' * 150}_test.csv", [synthetic_splits["test"]])
    from ddpm_ood.runs.layout import ood_set_name

    with pytest.raises(DataError, match="150 characters long"):
        ood_set_name(str(long_csv))


def test_an_edited_manifest_is_refused(scored_copy):
    out, _ = scored_copy
    manifest = out / "m" / "ood" / "results_in.settings.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ScoringError, match="results_in.settings.json was changed after reconstruct.py wrote it"):
        tiny_score(out)
    reseal(manifest)  # what reconstruct.py would have written
    with pytest.raises(ScoringError, match=r"results_in.csv was made with other settings .*seed \(1 vs 0\)"):
        tiny_score(out)


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "", "..", ".hidden", "a/b"])
@pytest.mark.parametrize("script", [train, reconstruct, ood_detection])
def test_model_name_must_be_a_plain_name(script, name, capsys):
    needed = {train: ["--training_ids=a.csv", "--validation_ids=b.csv"]}.get(script, [])
    with pytest.raises(SystemExit) as err:
        script.parse_args(["--output_dir=o", f"--model_name={name}", *needed])
    assert err.value.code == 2 and "--model_name" in capsys.readouterr().err


@pytest.mark.parametrize("csv_name,problem", [(".._test.csv", "not a plain name"), ("val_test.csv", "reserved"),
                                              ("in.csv", "reserved"), ("fit_test.csv", "reserved for the fit")])
def test_an_ood_set_name_can_be_neither_a_path_nor_reserved(tmp_path, synthetic_splits, csv_name, problem):
    out = tmp_path / "models"
    train_tiny(out, synthetic_splits)
    reconstruct_tiny(out, synthetic_splits)
    ood = out / "m" / "ood"
    before = sorted(p.name for p in ood.iterdir())
    hostile = write_split(tmp_path / "splits" / csv_name, [synthetic_splits["test"].parent.parent / "stripes" / "s_0.npy"])
    with pytest.raises(DataError, match=problem):
        reconstruct_tiny(out, synthetic_splits, f"--out_ids={hostile}", "--restart")
    assert sorted(p.name for p in ood.iterdir()) == before  # nothing deleted, nothing overwritten


def test_a_relative_eval_checkpoint_means_the_runs_folder(tmp_path, monkeypatch):
    run_dir, elsewhere = tmp_path / "runs" / "m", tmp_path / "cwd"
    run_dir.mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "best_model.pth").write_text("another run's model")
    monkeypatch.chdir(elsewhere)
    assert RunFiles(run_dir).find_model_file("best_model.pth") == run_dir / "best_model.pth"
    assert RunFiles(run_dir).find_model_file(str(elsewhere / "best_model.pth")) == elsewhere / "best_model.pth"


def test_a_model_identity_difference_names_the_parts_that_differ():
    """Issue 33, wording: reconstruct.py's identity refusal showed two hex digests; now the parts that differ,
    with the values of the short ones."""
    parts = {"weights": "a" * 64, "prediction": "epsilon", "noise": None, "image_space": [1, [1, 28, 28]]}
    other = {**parts, "weights": "b" * 64, "prediction": "v_prediction"}
    said = manifest_differences({"model_id": "1" * 64, "seed": 0}, {"model_id": "2" * 64, "seed": 0}, (parts, other))
    assert said == ["model identity (its parts that differ: prediction ('epsilon' vs 'v_prediction'), weights)"]
    assert "1111" not in said[0]
    # without the parts (manifests written before them): the identities, as before
    assert manifest_differences({"model_id": "1"}, {"model_id": "2"}) == ["model identity ('1' vs '2')"]
