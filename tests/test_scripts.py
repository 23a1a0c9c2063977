"""The four scripts end to end on synthetic images, the seed README's command lines, resume,
and each script's error on a missing input."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import ROOT, TINY_CONFIG
from ddpm_ood.data.loading import DataError
from ddpm_ood.metrics.distances import LPIPSUnavailable
from helpers.scripts import reconstruct_args


def train_args(out, splits, epochs=2, *extra):
    return train.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}",
        f"--n_epochs={epochs}", "--batch_size=8", "--eval_freq=1", "--num_sample_images=4", "--sample_steps=3",
        "--num_workers=0", *extra])


@pytest.mark.slow
def test_all_four_scripts_end_to_end(tmp_path, synthetic_splits, random_alexnet_home, capsys):
    out = tmp_path / "models"
    summary = train.main(train_args(out, synthetic_splits))
    run = out / "blobs"
    assert summary["epochs"] == 2
    for name in ("config.yaml", "checkpoint.pth", "best_model.pth", "final_model.pth"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    stored = torch.load(run / "best_model.pth", weights_only=True)
    assert stored["config"]["ldm"]["params"]["unet_config"]["params"]["model_channels"] == 8

    written = reconstruct.main(reconstruct_args(out, synthetic_splits))
    assert set(written) == {"val", "in", "Stripes", "Blobs_vflip"}
    val = pd.read_csv(run / "ood" / "results_val.csv")
    assert {"filename", "type", "t", "mse", "perceptual_difference"} <= set(val.columns)
    assert len(val) == 8 * 4 and sorted(val["t"].unique()) == [1, 301, 601, 901]
    assert val["perceptual_difference"].notna().all() and (val["mse"] >= 0).all()

    table = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs"]))
    printed = capsys.readouterr().out
    assert "AUC for blobs vs Stripes: " in printed and "AUC for blobs vs Blobs_vflip: " in printed
    assert set(table["score"]) == {"mse+lpips", "mse", "lpips"}
    assert table["auroc"].between(0, 1).all() and (table["n_in"] == 6).all()
    assert (run / "ood" / "summary_auroc.csv").is_file()
    limited = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--max_t=302"]))
    assert len(limited) == len(table)


@pytest.mark.slow
def test_mse_only_run_needs_no_lpips_weights(tmp_path, synthetic_splits, no_alexnet, capsys):
    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    with pytest.raises(LPIPSUnavailable):
        reconstruct.main(reconstruct_args(out, synthetic_splits))
    assert not (out / "blobs" / "ood").exists()  # failed before any work
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse", "--max_start_t=400"))
    val = pd.read_csv(out / "blobs" / "ood" / "results_val.csv")
    assert sorted(val["t"].unique()) == [1, 301] and val["perceptual_difference"].isna().all()
    # Sequential, chunked and channels_last runs give the same numbers.
    (out / "blobs" / "ood" / "results_val.csv").unlink()
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse", "--max_start_t=400", "--no-fused",
                                      "--max_model_batch=3", "--channels_last", "--run_in=0", "--run_out=0"))
    again = pd.read_csv(out / "blobs" / "ood" / "results_val.csv")
    pd.testing.assert_series_equal(again["mse"], val["mse"], rtol=1e-4, atol=1e-7)
    table = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs"]))
    assert set(table["score"]) == {"mse"}


@pytest.mark.slow
def test_rerun_resumes_and_equals_an_uninterrupted_run(tmp_path, synthetic_splits):
    train.main(train_args(tmp_path / "a", synthetic_splits, 3))
    train.main(train_args(tmp_path / "b", synthetic_splits, 1))
    summary = train.main(train_args(tmp_path / "b", synthetic_splits, 3))  # same command, more epochs: resumes
    assert summary["epochs"] == 3
    a = torch.load(tmp_path / "a/blobs/checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "b/blobs/checkpoint.pth", weights_only=True)
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_seed_readme_command_lines_parse():
    t = train.parse_args("--output_dir=o --model_name=fashionmnist --training_ids=d/FashionMNIST_train.csv "
                         "--validation_ids=d/FashionMNIST_val.csv --is_grayscale=1 "
                         "--config_diffusion_file=src/configs/diffusion/diffusion_grayscale.yaml --n_epochs=300".split())
    assert t.n_epochs == 300 and t.is_grayscale == 1 and t.batch_size == 180
    r = reconstruct.parse_args("--output_dir=o --model_name=fashionmnist --validation_ids=d/FashionMNIST_val.csv "
                               "--in_ids=d/FashionMNIST_test.csv --out_ids=d/MNIST_test.csv,d/MNIST_vflip_test.csv,"
                               "d/MNIST_hflip_test.csv --is_grayscale=1 "
                               "--config_diffusion_file=src/configs/diffusion/diffusion_grayscale.yaml "
                               "--num_inference_steps=100 --inference_skip_factor=16 --run_val=1 --run_in=1 "
                               "--run_out=1".split())
    assert r.inference_skip_factor == 16 and r.run_out == 1 and r.out_ids.count(",") == 2
    o = ood_detection.parse_args(["--output_dir=o", "--model_name=fashionmnist"])
    assert o.t_skip == 1 and o.max_start_t is None


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("train.py", ["--output_dir=OUT", "--model_name=m", "--training_ids=OUT/nope_train.csv",
                  "--validation_ids=OUT/nope_val.csv"]),
    ("reconstruct.py", ["--output_dir=OUT", "--model_name=m", "--validation_ids=OUT/nope_val.csv",
                        "--in_ids=OUT/nope_test.csv", "--metrics=mse"]),
    ("ood_detection.py", ["--output_dir=OUT", "--model_name=m"]),
    ("get_datasets.py", ["--data_root=OUT/d", "--datasets", "MNIST", "--source_dir", "OUT/nope"]),
])
def test_missing_input_exits_2_and_names_the_file(tmp_path, script, args):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "nope" in result.stderr or "results_val.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_config_flag_that_disagrees_with_the_checkpoint_is_reported(caplog):
    from omegaconf import OmegaConf

    from ddpm_ood.models.config import warn_if_config_differs

    stored = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG))
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        warn_if_config_differs(TINY_CONFIG, stored, "m.pth")
        assert not caplog.records
        warn_if_config_differs(TINY_CONFIG.with_name("diffusion_grayscale.yaml"), stored, "m.pth")
    assert "unet_config" in caplog.text and "using the stored one" in caplog.text


@pytest.mark.slow
def test_interrupted_reconstruction_resumes_to_identical_results(tmp_path, synthetic_splits, monkeypatch):
    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    extra = ["--metrics=mse", "--chunk_size=3", "--run_in=0", "--run_out=0"]
    reconstruct.main(reconstruct_args(tmp_path / "clean", synthetic_splits, *extra,
                                      f"--eval_checkpoint={out / 'blobs' / 'best_model.pth'}"))
    clean = (tmp_path / "clean" / "blobs" / "ood" / "results_val.csv").read_bytes()

    import ddpm_ood.diffusion.reconstruction

    real = ddpm_ood.diffusion.reconstruction.measure_split
    calls = {"n": 0}

    def dies_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ddpm_ood.diffusion.reconstruction, "measure_split", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        reconstruct.main(reconstruct_args(out, synthetic_splits, *extra))
    partial = out / "blobs" / "ood" / ".partial" / "val"
    assert sorted(p.name for p in partial.glob("chunk_*.csv")) == ["chunk_00000.csv", "chunk_00001.csv"]
    assert not (out / "blobs" / "ood" / "results_val.csv").exists()

    calls["n"] = -100  # no more failures; count what is recomputed
    reconstruct.main(reconstruct_args(out, synthetic_splits, *extra))
    assert calls["n"] == -99  # only the last of the three chunks (8 images, 3 a chunk) was computed
    assert (out / "blobs" / "ood" / "results_val.csv").read_bytes() == clean
    assert not partial.exists()


@pytest.mark.slow
def test_changed_settings_are_refused_unless_restarting(tmp_path, synthetic_splits):
    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    extra = ["--metrics=mse", "--run_in=0", "--run_out=0"]
    reconstruct.main(reconstruct_args(out, synthetic_splits, *extra))
    results = out / "blobs" / "ood" / "results_val.csv"
    before = results.read_bytes()
    with pytest.raises(DataError, match="seed.*--restart"):
        reconstruct.main(reconstruct_args(out, synthetic_splits, *extra, "--seed=1"))
    assert results.read_bytes() == before  # earlier good output untouched
    reconstruct.main(reconstruct_args(out, synthetic_splits, *extra, "--seed=1", "--restart"))
    assert results.read_bytes() != before


@pytest.mark.slow
def test_seed_readme_pipeline_on_data_made_by_get_datasets(tmp_path, capsys):
    """The seed README's commands, with only the model config and epochs made tiny, on data
    that get_datasets.py made (from generated MNIST/FashionMNIST IDX files)."""
    import get_datasets
    from helpers.data import make_idx_source

    make_idx_source(tmp_path / "raw" / "MNIST", seed=1)
    make_idx_source(tmp_path / "raw" / "FashionMNIST", seed=2)
    data_root, output_root = tmp_path / "data", tmp_path / "models"
    get_datasets.main(get_datasets.parse_args(
        [f"--data_root={data_root}", "--datasets", "MNIST", "FashionMNIST", "--source_dir", str(tmp_path / "raw")]))
    splits = data_root / "data_splits"
    train.main(train.parse_args([
        f"--output_dir={output_root}", "--model_name=fashionmnist",
        f"--training_ids={splits}/FashionMNIST_train.csv", f"--validation_ids={splits}/FashionMNIST_val.csv",
        "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=1", "--num_sample_images=0"]))
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={output_root}", "--model_name=fashionmnist",
        f"--validation_ids={splits}/FashionMNIST_val.csv", f"--in_ids={splits}/FashionMNIST_test.csv",
        f"--out_ids={splits}/MNIST_test.csv,{splits}/MNIST_vflip_test.csv,{splits}/MNIST_hflip_test.csv",
        "--is_grayscale=1", "--config_diffusion_file=src/configs/diffusion/diffusion_grayscale.yaml",
        "--num_inference_steps=100", "--inference_skip_factor=64", "--run_val=1", "--run_in=1", "--run_out=1",
        "--first_n=4", "--metrics=mse"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={output_root}", "--model_name=fashionmnist"]))
    printed = capsys.readouterr().out
    for name in ("MNIST", "MNIST_vflip", "MNIST_hflip"):
        assert f"AUC for fashionmnist vs {name}: " in printed


@pytest.mark.slow
def test_saved_examples_are_the_scored_reconstructions(tmp_path, synthetic_splits):
    """--save_examples keeps the first images and their reconstructions from every t: exactly the
    ones behind the results (their MSE is the results' MSE); ood_detection draws their grid. A
    later run asking for examples does not invalidate finished results."""
    import numpy as np

    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse"))
    ood = out / "blobs" / "ood"
    before = (ood / "results_in.csv").read_bytes()
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse", "--save_examples=3"))
    assert (ood / "results_in.csv").read_bytes() == before
    with np.load(ood / "examples_in.npz") as examples:
        inputs, recons, ts = examples["inputs"], examples["reconstructions"], examples["t"]
    assert inputs.shape == (3, 1, 28, 28) and recons.shape == (3, 4, 1, 28, 28) and ts.tolist() == [1, 301, 601, 901]
    results = pd.read_csv(ood / "results_in.csv")
    for i in range(3):
        for k, t in enumerate(ts):
            mse = ((inputs[i] - recons[i, k]) ** 2).mean()
            expected = results.loc[(results["image_index"] == i) & (results["t"] == t), "mse"].item()
            assert abs(mse - expected) < 1e-6
    assert json.loads((ood / "results_in.settings.json").read_text())["examples"] == {"file": "examples_in.npz", "n": 3}
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0"]))
    assert (ood / "figures" / "examples_in.png").stat().st_size > 5000
    assert (ood / "figures" / "examples_Stripes.png").exists()


@pytest.mark.slow
def test_tensorboard_holds_training_reconstructions_hparams_and_ood_metrics(tmp_path, synthetic_splits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse"))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0",
                                                 "--no_figures"]))
    training = EventAccumulator(str(out / "blobs" / "tensorboard"), size_guidance={"images": 0}).Reload()
    images = training.Tags()["images"]
    assert "samples" in images and any(tag.startswith("reconstructions (input, then from t = ") for tag in images)
    assert any("hparams" in tag for tag in training.Tags()["tensors"])
    scoring = EventAccumulator(str(out / "blobs" / "tensorboard" / "ood_detection")).Reload()
    assert "Stripes/mse/auroc" in scoring.Tags()["scalars"] and "scores/in" in scoring.Tags()["histograms"]
    assert any(tag.startswith("pr/Stripes") for tag in scoring.Tags()["tensors"])


@pytest.mark.slow
def test_scoring_new_images_matches_the_pipeline_and_refuses_mismatches(tmp_path, synthetic_splits, capsys):
    """--score_ids (and the Python API) give the scores reconstruct.py + ood_detection.py give the
    same images; a wrongly sized image is refused with exit 2 and nothing written."""
    import numpy as np

    from conftest import make_images, write_split
    from ddpm_ood.api import OODDetector

    out = tmp_path / "models"
    train.main(train_args(out, synthetic_splits, 1))
    reconstruct.main(reconstruct_args(out, synthetic_splits, "--metrics=mse"))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0",
                                                 "--no_figures"]))
    ood = out / "blobs" / "ood"
    saved = json.loads((ood / "fits" / "recon.json").read_text())
    saved["threshold"] = saved["thresholds"]["mse"]
    val_scores = pd.read_csv(ood / "scores_val.csv")["score"]
    assert saved["tpr"] == 0.95 and (val_scores <= saved["threshold"]).mean() >= 0.95

    new = write_split(tmp_path / "new" / "New.csv", [p for p in pd.read_csv(synthetic_splits["ood"])["filename"]])
    predictions = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs",
                                                               f"--score_ids={new}"]))
    pipeline = pd.read_csv(ood / "scores_Stripes.csv")
    np.testing.assert_allclose(predictions["score"], pipeline["score"], rtol=1e-5, atol=1e-6)
    assert (predictions["is_ood"] == (pipeline["score"] > saved["threshold"])).all()
    assert pd.read_csv(ood / "predictions_New.csv")["filename"].tolist() == pipeline["filename"].tolist()
    assert "flagged as OOD" in capsys.readouterr().out

    detector = OODDetector.load(out / "blobs", device="cpu")
    from ddpm_ood.data.loading import load_split
    images = load_split(synthetic_splits["ood"], True).images
    np.testing.assert_allclose(detector.score(images), pipeline["score"], rtol=1e-5, atol=1e-6)

    big = write_split(tmp_path / "big" / "Big.csv", make_images(tmp_path / "big", "g", 2, 5, shape=(32, 32)))
    result = subprocess.run([sys.executable, str(ROOT / "ood_detection.py"), f"--output_dir={out}",
                             "--model_name=blobs", f"--score_ids={big}"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2 and "g_0.npy" in result.stderr and "(1, 32, 32)" in result.stderr
    assert "Traceback" not in result.stderr and not (ood / "predictions_Big.csv").exists()
