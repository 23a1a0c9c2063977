"""New images, with every detector: the saved fits (plain JSON) score exactly as the pipeline did;
changed, missing or stale fits are refused; an image's score depends on the image alone; the
detectors through pytorch-ood's Detector interface."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import ROOT, blob_splits, reseal, write_split
from ddpm_ood.api import ImageDetector, OODDetector, pytorch_ood_detector
from ddpm_ood.data.loading import load_split
from ddpm_ood.detectors import COMBINATIONS, DETECTORS
from ddpm_ood.utils.errors import ConfigError, DataError, ScoringError, WriteError
from helpers.pipeline import tiny_reconstruct_args, tiny_score, tiny_train_args


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A tiny trained model, every detector measured (val 12, fit 12, in 6, one OOD set of 6) and scored."""
    tmp = tmp_path_factory.mktemp("api")
    paths = blob_splits(tmp)
    out = tmp / "models"
    train.main(tiny_train_args(out, paths, name="blobs"))
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--validation_ids={paths['val']}", f"--in_ids={paths['test']}",
        f"--out_ids={paths['ood']}", f"--fit_ids={paths['fit']}", "--num_inference_steps=10",
        "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4", "--chunk_size=5", "--num_workers=0",
        "--path_steps=4", "--msma_levels=3", "--denoise_levels=2", "--detectors=all"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0",
                                                 "--no-figures", "--max_start_t=700"]))
    return out / "blobs", paths


def every_score(run):
    summary = pd.read_csv(run / "ood" / "summary_auroc.csv")
    return list(dict.fromkeys(zip(summary["detector"], summary["score"])))


@pytest.mark.slow
def test_every_score_of_every_detector_scores_new_images_as_the_pipeline_did(scored_run):
    run, paths = scored_run
    scores = every_score(run)
    assert {d for d, _ in scores} == {*DETECTORS, *COMBINATIONS}
    measured = sum(len(json.loads((run / "ood" / "fits" / f"{d}.json").read_text())["thresholds"]) for d in DETECTORS)
    assert len(scores) == measured + 2  # and combo, combo-cheap
    for name, table_set in (("Stripes", "ood"), ("val", "val")):
        pipeline = pd.read_csv(run / "ood" / f"scores_{name}.csv")
        images = load_split(paths[table_set], True).images
        for detector, score in scores:
            column = "score" if detector == "recon" else f"score_{score}"
            scorer = OODDetector.load(run, device="cpu", detector=score, batch_size=4)
            assert scorer.score_name == score
            # In the batches reconstruct.py measured them in (chunks of 5, batches of 4), the scores are the
            # pipeline's to the last digit; in other batches the UNet's float32 rounding differs (about 1e-7
            # relative), which a density's far tail amplifies (see the test of image order below).
            chunks = [images[start:start + 5] for start in range(0, len(images), 5)]
            got = np.concatenate([scorer.score(chunk) for chunk in chunks])
            np.testing.assert_allclose(got, pipeline[column], rtol=1e-12, atol=1e-6, err_msg=score)
    # A detector's name means its main score; the default is the paper's.
    assert OODDetector.load(run, device="cpu", detector="path").score_name == "path-6d"
    assert OODDetector.load(run, device="cpu").score_name == "mse"


def test_score_ids_with_a_detector_writes_its_own_predictions(scored_run, capsys):
    run, paths = scored_run
    predictions = ood_detection.main(ood_detection.parse_args([f"--output_dir={run.parent}", "--model_name=blobs",
                                                               f"--score_ids={paths['ood']}", "--detector=combo-cheap"]))
    saved = json.loads((run / "ood" / "fits" / "combo.json").read_text())
    pipeline = pd.read_csv(run / "ood" / "scores_Stripes.csv")
    np.testing.assert_allclose(predictions["score"], pipeline["score_combo-cheap"], rtol=1e-6, atol=1e-6)
    assert (predictions["is_ood"] == (pipeline["score_combo-cheap"] > saved["thresholds"]["combo-cheap"])).all()
    assert (run / "ood" / "predictions_Stripes_combo-cheap.csv").exists()
    assert "flagged as OOD by combo-cheap" in capsys.readouterr().out
    with pytest.raises(ScoringError, match="neither a detector nor a score"):
        OODDetector.load(run, device="cpu", detector="likelihood")


def test_a_mask_listed_as_a_scan_is_flagged_by_the_input_check(scored_run, tmp_path, caplog):
    """Issue 32, part 2: a file nothing like the training images (a lesion mask given as a scan) is said, per
    file, in the predictions and a warning; the in-distribution test images pass."""
    run, paths = scored_run
    mask = np.zeros((28, 28), np.uint8)
    mask[12:15, 10:14] = 1  # a small lesion label: 12 of 784 pixels
    np.save(tmp_path / "lesion_mask.npy", mask)
    healthy = pd.read_csv(paths["test"])["filename"].tolist()[:3]
    split = write_split(tmp_path / "New_test.csv", [*healthy, tmp_path / "lesion_mask.npy"])
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        predictions = ood_detection.main(ood_detection.parse_args([f"--output_dir={run.parent}", "--model_name=blobs",
                                                                   f"--score_ids={split}"]))
    assert predictions["input_check"].fillna("").tolist()[:3] == ["", "", ""]
    flagged = predictions["input_check"].iloc[3]
    assert flagged.startswith("foreground fraction 0.0153 (training images: ")
    assert "mean foreground intensity 1 (training" in flagged and "spread of foreground intensities 0 (" in flagged
    assert "1 of 4 images are unlike the model's training images" in caplog.text and "lesion_mask.npy" in caplog.text
    saved = pd.read_csv(run / "ood" / "predictions_New.csv", keep_default_na=False)
    assert saved["input_check"].tolist() == predictions["input_check"].fillna("").tolist()


def test_fits_are_plain_json_and_their_thresholds_hold_on_validation(scored_run):
    run, _ = scored_run
    fits = {p.stem: json.loads(p.read_text()) for p in (run / "ood" / "fits").glob("*.json")}
    assert set(fits) == {*DETECTORS, *COMBINATIONS}
    val = pd.read_csv(run / "ood" / "scores_val.csv")
    for name, fit in fits.items():
        for score, threshold in fit["thresholds"].items():
            column = "score" if name == "recon" else f"score_{score}"
            assert (val[column] <= threshold).mean() >= fit["tpr"] == 0.95
    assert fits["recon"]["options"]["max_start_t"] == 700 and fits["recon"]["settings"]["start_t"] == [1, 301, 601]
    assert set(fits["path"]["state"]) == {"path-6d", "path-1d"} and "gmm" in fits["path"]["state"]["path-6d"]
    assert "kde" in fits["path"]["state"]["path-1d"] and set(fits["recon"]["state"]) == {"by", "keys", "mean", "std"}


@pytest.mark.parametrize("damage", ["edited", "missing", "restarted"])
def test_a_fit_that_was_changed_missing_or_made_from_other_results_is_refused(scored_run, tmp_path, damage):
    source, _ = scored_run
    run = tmp_path / "blobs"
    shutil.copytree(source, run)
    fit = run / "ood" / "fits" / "msma.json"
    if damage == "edited":
        record = json.loads(fit.read_text())
        record["thresholds"]["msma"] += 1.0
        fit.write_text(json.dumps(record))
        match = "was changed after ood_detection.py wrote it"
    elif damage == "missing":
        fit.unlink()
        match = "msma.json does not exist"
    else:  # the fit set re-made with other settings (reconstruct.py --restart), ood_detection.py not re-run
        reseal(run / "ood" / "msma" / "results_val.settings.json", msma_t=[0, 1, 2])
        match = "was fitted on other results"
    with pytest.raises(ScoringError, match=match):
        OODDetector.load(run, device="cpu", detector="msma")
    with pytest.raises(ScoringError, match=match):  # a combination needs every member's fit
        OODDetector.load(run, device="cpu", detector="combo")


def test_an_images_score_depends_on_the_image_alone(scored_run):
    run, paths = scored_run
    images = load_split(paths["ood"], True).images
    a, b = images[0], images[1]
    for detector in ("recon", "denoise"):  # the ones that draw noise
        scorer = OODDetector.load(run, device="cpu", detector=detector)
        ab, ba = scorer.score(torch.stack([a, b])), scorer.score(torch.stack([b, a, a]))
        np.testing.assert_allclose(ab, [ba[1], ba[0]], rtol=1e-6, atol=1e-6, err_msg=detector)
        assert ba[1] == ba[2]  # a duplicated image gets the same score twice


def test_detectors_through_pytorch_oods_detector_interface(scored_run):
    pytorch_ood = pytest.importorskip("pytorch_ood")
    from pytorch_ood.metrics import OODMetrics

    from ddpm_ood.metrics.scoring import ood_metrics

    run, paths = scored_run
    val, test, ood = (load_split(paths[k], True).images for k in ("val", "test", "ood"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val, torch.zeros(len(val))), batch_size=5)
    detector = pytorch_ood_detector(run / "best_model.pth", "msma", msma_levels=3)
    assert isinstance(detector, pytorch_ood.api.Detector) and detector.requires_fit
    with pytest.raises(pytorch_ood.api.RequiresFittingException):  # pytorch-ood's own, as its detectors raise
        detector.predict(test)
    detector.fit(loader)
    metrics = OODMetrics()
    metrics.update(detector(test), torch.zeros(len(test), dtype=torch.long))
    metrics.update(detector(ood), -torch.ones(len(ood), dtype=torch.long))
    got = metrics.compute()
    ours = ood_metrics(detector.predict(test).numpy(), detector.predict(ood).numpy())
    assert got["AUROC"] == pytest.approx(ours["auroc"], abs=1e-6) and got["FPR95TPR"] == pytest.approx(ours["fpr95tpr"])
    # Fitted on the validation images, as ood_detection.py fits msma: the pipeline's scores, up to the UNet's
    # float32 rounding in other batches (about 1e-7), which the mixture's fit carries into its parameters.
    pipeline = pd.read_csv(run / "ood" / "scores_Stripes.csv")["score_msma"]
    np.testing.assert_allclose(detector.predict(ood).numpy(), pipeline, rtol=1e-4)
    plain = ImageDetector(run / "best_model.pth", "recon", num_inference_steps=10, inference_skip_factor=3,
                          max_start_t=700, metrics="mse").fit_images(val)
    np.testing.assert_allclose(plain.predict(ood).numpy(), pd.read_csv(run / "ood" / "scores_Stripes.csv")["score"],
                               rtol=1e-6, atol=1e-6)


# --- images and loaders as people have them (the third try-out) -------------------------------------

def test_lists_of_pil_images_2d_and_hwc_arrays_score_as_the_tensor_does(scored_run):
    """Main before this refused them with a hint about images[None]."""
    from PIL import Image

    run, paths = scored_run
    images = load_split(paths["ood"], True).images[:3]
    scorer = OODDetector.load(run, device="cpu", detector="msma")
    expected = scorer.score(images)
    pixels = [(image[0].numpy() * 255).round().astype(np.uint8) for image in images]
    as_pil = [Image.fromarray(p) for p in pixels]
    for given in (as_pil, pixels, [p[:, :, None] for p in pixels], [np.stack([p] * 3, axis=-1) for p in pixels]):
        np.testing.assert_allclose(scorer.score(given), expected, rtol=1e-5, atol=1e-5)


def test_the_api_draws_no_progress_bar_unless_asked(scored_run, capsys):
    run, paths = scored_run
    scorer = OODDetector.load(run, device="cpu", detector="recon")
    images = load_split(paths["ood"], True, progress=False).images[:2]
    capsys.readouterr()
    scorer.score(images)
    assert capsys.readouterr().err == ""
    scorer.progress = True
    scorer.score(images)
    assert "reconstructing new" in capsys.readouterr().err


def test_a_mistyped_run_folder_is_named_as_missing(tmp_path):
    with pytest.raises(ScoringError, match="does not exist: pass a run's folder"):
        OODDetector.load(tmp_path / "blobz", device="cpu")


def test_score_ids_takes_a_class_folder_tree_and_dot_and_writes_where_asked(scored_run, tmp_path, monkeypatch, caplog):
    """ImageFolder layout (one sub-folder per class) and what systems leave beside images; '.' is
    named after the folder; --predictions elsewhere; an earlier file is replaced with a warning."""
    run, paths = scored_run
    tree = tmp_path / "NewImages"
    files = pd.read_csv(paths["ood"])["filename"].tolist()[:4]
    for i, f in enumerate(files):
        (tree / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tree / f"class{i % 2}" / f"{i}.npy")
    (tree / "class0" / "._0.npy").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS's resource fork
    (tree / ".ipynb_checkpoints").mkdir()
    shutil.copy(files[0], tree / ".ipynb_checkpoints" / "x.npy")
    monkeypatch.chdir(tree)
    args = [f"--output_dir={run.parent}", f"--model_name={run.name}", "--score_ids=.", "--detector=msma"]
    predictions = ood_detection.main(ood_detection.parse_args(args))
    assert len(predictions) == 4 and (run / "ood" / "predictions_NewImages_msma.csv").is_file()
    ood_detection.main(ood_detection.parse_args(args))
    assert "Replacing" in caplog.text
    elsewhere = tmp_path / "out" / "p.csv"
    ood_detection.main(ood_detection.parse_args([*args, f"--predictions={elsewhere}"]))
    assert pd.read_csv(elsewhere)["score"].tolist() == predictions["score"].tolist()


def test_score_ids_checks_it_can_write_before_any_work(scored_run, monkeypatch):
    """Main before this measured every image of a read-only run, then failed to write."""

    run, paths = scored_run
    monkeypatch.setattr(OODDetector, "load", classmethod(lambda *a, **k: pytest.fail("measured before checking")))
    with pytest.raises(WriteError, match="--predictions PATH"):
        ood_detection.main(ood_detection.parse_args([f"--output_dir={run.parent}", f"--model_name={run.name}",
                                                     f"--score_ids={paths['ood']}", "--predictions=/proc/no/p.csv"]))


def test_the_pytorch_ood_adapter_behaves_as_a_pytorch_ood_detector(scored_run):
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.api import RequiresFittingException

    from ddpm_ood.data.loading import load_split as load
    from ddpm_ood.utils.errors import DataError

    run, paths = scored_run
    model = run / "best_model.pth"
    with pytest.raises(DataError, match="'path-9d' is not a score of the path detector"):  # before any work
        pytorch_ood_detector(model, "path", score="path-9d", device="cpu", path_steps=4)
    detector = pytorch_ood_detector(model, "msma", device="cpu", msma_levels=3)
    assert detector.device == torch.device("cpu")
    images = load(paths["val"], True).images
    with pytest.raises(RequiresFittingException):
        detector.predict(images[:2])
    with pytest.raises(DataError, match="no batches"):
        detector.fit([])
    with pytest.raises(DataError, match="a dict"):
        detector.fit([{"image": images[:4], "label": torch.zeros(4)}])
    detector.fit([(images, torch.zeros(len(images)))])
    assert detector(images[:2]).shape == (2,)


@pytest.mark.slow
def test_new_images_are_refused_after_retraining(scored_tiny, tmp_path):
    _, paths = scored_tiny
    out = tmp_path / "own"
    train.main(tiny_train_args(out, paths))
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon"))
    tiny_score(out)
    train.main(tiny_train_args(out, paths, epochs=2))  # training goes on ...
    shutil.copy(out / "m" / "final_model.pth", out / "m" / "best_model.pth")  # ... and makes a new best model
    with pytest.raises(ScoringError, match=r"made with another model .*\(weights differ\)"):
        OODDetector.load(out / "m", device="cpu")
    result = subprocess.run([sys.executable, str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m",
                             f"--score_ids={paths['ood']}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "made with another model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_api_prepares_images_as_the_loader_does_or_says_why_not(scored_tiny, tmp_path):
    out, paths = scored_tiny
    detector = OODDetector.load(out / "m", device="cpu", batch_size=4)
    images = load_split(paths["ood"], True).images
    reference = detector.score(images)
    raw = np.stack([np.load(f)[None] for f in pd.read_csv(paths["ood"])["filename"]])  # uint8 0..255, as stored
    np.testing.assert_allclose(detector.score(torch.from_numpy(raw)), reference, rtol=1e-6)  # scaled as files are
    # An image in [0, 0.8] (here a .npy of floats) scores the same through the API and --score_ids.
    dim = [tmp_path / f"dim_{i}.npy" for i in range(3)]
    for i, path in enumerate(dim):
        np.save(path, (raw[i] / 255.0 * 0.8).astype(np.float64)[0])
    listed = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=m",
                                                          f"--score_ids={write_split(tmp_path / 'Dim.csv', dim)}"]))
    arrays = np.stack([np.load(path)[None] for path in dim])
    np.testing.assert_allclose(detector.score(torch.from_numpy(arrays)), listed["score"], rtol=1e-6)
    np.testing.assert_allclose(detector.score(raw.astype(np.float64)), reference, rtol=1e-6)  # a numpy array
    np.testing.assert_allclose(detector.score(list(images)), reference, rtol=1e-6)  # a list of images
    np.testing.assert_allclose(detector.score(images.clone().requires_grad_()), reference, rtol=1e-6)
    broken = images.clone()
    broken[2, 0, 3, 3] = float("nan")
    for bad, match in ((broken, r"Image 2 of the batch contains NaN or infinite values: replace them \(e.g. "
                                r"torch.nan_to_num\) or leave the image out"),  # not "re-create the file"
                       (torch.full((1, 1, 28, 28), 1e300, dtype=torch.float64), "holds values up to 1e"), (images[:0], "empty"),
                       ([], "empty"), (images[0], r"shape \(N, C, H, W\)"), ("x", "not str")):
        with pytest.raises(DataError, match=match):
            detector.score(bad)
    with pytest.raises(DataError, match="2 filenames for 6 images"):
        detector.score(images, ["a", "b"])
    inf = images.clone()
    inf[0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="contains NaN or infinite"):
        detector.predict(inf)


@pytest.mark.parametrize("flag", ["--max_t=300", "--tpr=0.9", "--fit_on=fit", "--t_skip=2", "--min_start_t=5"])
def test_score_ids_refuses_the_flags_that_choose_the_fit(scored_tiny, flag):
    out, paths = scored_tiny
    with pytest.raises(ConfigError, match="re-run ood_detection.py with them first"):
        ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=m",
                                                     f"--score_ids={paths['ood']}", flag]))
