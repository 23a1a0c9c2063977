"""Results read back (ddpm_ood.runs.results): damaged, incomplete or unmanifested results are refused naming the file."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import write_results
from ddpm_ood.utils.errors import ScoringError
from helpers.pipeline import run_script, score_run, tiny_score, toy_results


def test_results_files_with_missing_images_are_refused(scored_copy, tmp_path):
    out, _ = scored_copy
    results = out / "m" / "ood" / "results_Stripes.csv"
    frame = pd.read_csv(results)
    frame[frame["image_index"] < 3].to_csv(results, index=False)  # half the rows deleted
    with pytest.raises(ScoringError, match="results_Stripes.csv was changed after reconstruct.py wrote it"):
        tiny_score(out)
    # Unsealed (by hand, or an older version): the image count and names in the manifest still tell.
    ood = tmp_path / "fake" / "m" / "ood"
    rows = lambda n: pd.DataFrame([{"filename": f"f{i}", "image_index": i, "type": "x", "t": t, "mse": 0.1 * i + t,
                                    "perceptual_difference": np.nan} for i in range(n) for t in (1, 11)])
    write_results(ood, "val", rows(4))
    write_results(ood, "in", rows(3))
    write_results(ood, "Far", rows(3))
    manifest = ood / "results_in.settings.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "n_images": 4}))
    with pytest.raises(ScoringError, match="results_in.csv holds 3 images, but its manifest records 4"):
        tiny_score(tmp_path / "fake")


def corrupt(frame, case):
    frame = frame.copy()
    if case == "missing":
        return frame.drop(index=5), r"image_index 2 has no row for t = \[11\]"
    if case == "duplicate":
        return pd.concat([frame, frame.iloc[[3]]], ignore_index=True), r"line 10: a second row for image_index 1"
    frame["mse"] = frame["mse"].astype(object)
    value = {"nan": np.nan, "inf": np.inf, "text": "abc"}[case]
    frame.loc[4, "mse"] = value
    return frame, rf"line 6: mse = {re.escape(repr(value if case == 'text' else float(value)))} is not a"


@pytest.mark.parametrize("case", ["missing", "duplicate", "nan", "inf", "text"])
def test_damaged_rows_are_refused_naming_file_line_and_value(tmp_path, case):
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", toy_results())
    write_results(ood, "in", toy_results())
    frame, match = corrupt(toy_results(), case)
    write_results(ood, "Bad", frame)
    with pytest.raises(ScoringError, match=rf"results_Bad.csv:? {match}"):
        score_run(tmp_path)


@pytest.mark.slow
def test_a_damaged_row_exits_2_with_one_line(tmp_path):
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", toy_results())
    write_results(ood, "in", toy_results())
    write_results(ood, "Bad", corrupt(toy_results(), "text")[0])
    result = run_script("ood_detection.py", f"--output_dir={tmp_path}", "--model_name=m")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "results_Bad.csv line 6: mse = 'abc'" in result.stderr


@pytest.mark.slow
def test_results_without_a_manifest(tmp_path, capsys, caplog):
    """Decision: an OOD results file reconstruct.py did not write is skipped with a warning;
    validation or in-distribution results without one are refused before anything is printed."""
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", toy_results())
    write_results(ood, "in", toy_results())
    write_results(ood, "X", toy_results(offset=1))
    toy_results(offset=2).to_csv(ood / "results_Stray.csv", index=False)  # no manifest
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        table = score_run(tmp_path)
    assert list(table["ood_set"]) == ["X"] and "Skipping" in caplog.text and "results_Stray.csv" in caplog.text
    assert "Stray" not in capsys.readouterr().out
    (ood / "results_in.settings.json").unlink()
    with pytest.raises(ScoringError, match="results_in.csv has no settings manifest"):
        score_run(tmp_path)
    assert capsys.readouterr().out == ""


def test_read_feature_results_names_the_line_and_value(tmp_path):
    """The reader itself, on hand-made files: good rows come back typed; a NaN, a text value and a
    second row for one image are refused naming the CSV line (the header is line 1)."""
    from ddpm_ood.runs.results import image_key, read_feature_results
    from ddpm_ood.utils.errors import ScoringError

    good = pd.DataFrame({"filename": ["a", "b", "c"], "image_index": [0, 1, 2], "f0": [0.5, 1.5, 2.5]})
    good.to_csv(tmp_path / "good.csv", index=False)
    frame = read_feature_results(tmp_path / "good.csv", ["f0"])
    assert frame["image_index"].dtype == np.int64 and frame["f0"].tolist() == [0.5, 1.5, 2.5]
    assert image_key(frame) == "image_index" and image_key(frame.drop(columns="image_index")) == "filename"
    for name, bad, match in (("nan", good.assign(f0=[0.5, np.nan, 2.5]), r"line 3: f0 = nan is not a finite"),
                             ("text", good.assign(f0=["0.5", "0.7", "x"]), r"line 4: f0 = 'x' is not a finite"),
                             ("twice", good.assign(image_index=[0, 1, 1]), r"line 4: a second row for image_index 1")):
        bad.to_csv(tmp_path / f"{name}.csv", index=False)
        with pytest.raises(ScoringError, match=match):
            read_feature_results(tmp_path / f"{name}.csv", ["f0"])
    with pytest.raises(ScoringError, match=r"lacks column\(s\) \['f1'\]"):
        read_feature_results(tmp_path / "good.csv", ["f1"])
