"""The model boundary: a model is its weights' values *and* its configs. Two models' results are
never scored together, whatever is edited, moved, copied or re-saved; a run uses its own model;
what the boundary cannot take is refused in one line that names the file and the value; the
Python API checks images as the scripts do; a checkpoint records how it was trained."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import TINY_CONFIG, blob_splits
from ddpm_ood.api import OODDetector
from ddpm_ood.data.loading import load_split
from ddpm_ood.models.loading import DiffusersModel, RunModel, load_model
from ddpm_ood.utils.errors import ConfigError, DataError, ScoringError
from helpers.pipeline import tiny_reconstruct_args, tiny_score, tiny_train_args

diffusers = pytest.importorskip("diffusers")
from helpers.diffusers_fakes import colour_split, scheduler, tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny diffusers model: the UNet and its scheduler saved into one folder."""
    root = tmp_path_factory.mktemp("boundary") / "model"
    tiny_unet().save_pretrained(root)
    scheduler().save_pretrained(root)
    return root


def copy_of(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def identity(path):
    return load_model(DiffusersModel(str(path)))


# --- identity ---------------------------------------------------------------------------------------

def test_the_same_weights_in_another_format_or_folder_are_the_same_model(folder, tmp_path):
    base = identity(folder)
    resaved = tmp_path / "bin"
    unet = diffusers.UNet2DModel.from_pretrained(folder)
    unet.save_pretrained(resaved, safe_serialization=False)  # diffusion_pytorch_model.bin
    scheduler().save_pretrained(resaved)
    assert not (resaved / "diffusion_pytorch_model.safetensors").exists()
    assert identity(resaved).identity == base.identity
    assert identity(copy_of(folder, tmp_path, "moved")).identity == base.identity


@pytest.mark.parametrize("file, change, part", [
    ("scheduler_config.json", {"beta_end": 0.03}, "alphas cumprod"),
    ("scheduler_config.json", {"prediction_type": "v_prediction"}, "prediction ('epsilon' vs 'v_prediction')"),
    ("config.json", {"flip_sin_to_cos": False}, "network"),  # a weight-free key
])
def test_an_edited_config_is_another_model(folder, tmp_path, file, change, part):
    """Each of these left the weights file alone, and each changes every number the model gives."""
    base = identity(folder)
    edited = copy_of(folder, tmp_path)
    edit_json(edited / file, **change)
    other = identity(edited)
    assert other.identity != base.identity
    assert other.differs_from(base.manifest()) == part


def test_one_changed_weight_is_another_model(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    edited = copy_of(folder, tmp_path)
    weights = edited / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3
    save_file(state, str(weights))
    assert identity(edited).differs_from(identity(folder).manifest()) == "weights"


@pytest.fixture
def scored(folder, tmp_path):
    """A pretrained model's run, measured (denoise, cheap) and scored; returns a runner of the scripts."""
    model = copy_of(folder, tmp_path, "model")
    splits = {"val": colour_split(tmp_path / "val", "Blobs_val", 8, 0, "blobs"),
              "in": colour_split(tmp_path / "in", "Blobs_test", 4, 1, "blobs"),
              "ood": colour_split(tmp_path / "ood", "Stripes_test", 4, 2, "stripes")}
    out = tmp_path / "runs"

    def measure(model_path=model, *extra):
        return reconstruct.main(reconstruct.parse_args([
            f"--output_dir={out}", "--model_name=p", f"--pretrained={model_path}", f"--validation_ids={splits['val']}",
            f"--in_ids={splits['in']}", f"--out_ids={splits['ood']}", "--detectors=denoise", "--denoise_levels=2",
            "--batch_size=4", "--num_workers=0", *extra]))

    measure()
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p", "--bootstrap=0",
                                                 "--no-figures"]))
    return out / "p", model, splits, measure


def test_results_of_an_edited_pretrained_model_are_refused(scored):
    """Main before this: an edited scheduler_config.json was scored with the old fits (one row showed
    AUROC 0.0, new-image scores moved by up to 5.9 against a threshold of 0.79)."""
    from ddpm_ood.api import OODDetector

    run, model, splits, measure = scored
    edit_json(model / "scheduler_config.json", beta_end=0.03)
    with pytest.raises(ScoringError, match="another model .*alphas cumprod"):
        OODDetector.load(run, device="cpu", detector="denoise")
    # resuming or re-measuring with it: which part differs, not two hex digests (issue 33, wording)
    with pytest.raises(DataError, match=r"model identity \(its parts that differ: alphas cumprod\)"):
        measure()


def test_a_moved_pretrained_folder_can_be_pointed_at_again(scored, tmp_path):
    from ddpm_ood.api import OODDetector

    run, model, splits, _ = scored
    moved = model.rename(tmp_path / "moved")
    with pytest.raises(ScoringError, match="--pretrained PATH"):
        OODDetector.load(run, device="cpu", detector="denoise")
    assert OODDetector.load(run, device="cpu", detector="denoise", model=str(moved)).model.files["pretrained"] == \
        str(moved.resolve())
    predictions = ood_detection.main(ood_detection.parse_args([
        f"--output_dir={run.parent}", "--model_name=p", f"--score_ids={splits['ood']}", "--detector=denoise",
        f"--pretrained={moved}"]))
    assert len(predictions) == 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    paths = blob_splits(tmp)
    out = tmp / "models"

    def fit(*extra, name="blobs", training=paths["train"]):
        return train.main(train.parse_args([
            f"--output_dir={out}", f"--model_name={name}", f"--training_ids={training}",
            f"--validation_ids={paths['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--batch_size=8",
            "--num_sample_images=0", "--num_workers=0", *extra]))

    fit("--n_epochs=1")
    return out, paths, fit


@pytest.mark.slow
def test_a_copied_run_that_was_retrained_never_scores_with_the_original_model(trained, tmp_path):
    """Main before this: the copy's manifests named the original's model file, which the copy used."""
    from ddpm_ood.api import OODDetector

    out, paths, fit = trained
    run = out / "blobs"
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--validation_ids={paths['val']}", f"--in_ids={paths['test']}",
        f"--out_ids={paths['ood']}", "--detectors=denoise", "--denoise_levels=2", "--batch_size=4",
        "--num_workers=0"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs", "--bootstrap=0",
                                                 "--no-figures"]))
    manifest = json.loads((run / "ood" / "denoise" / "results_in.settings.json").read_text())
    assert manifest["model_file"] == "best_model.pth"  # the run's own file, relative to the run
    shutil.copytree(run, out / "copy")
    assert OODDetector.load(out / "copy", device="cpu", detector="denoise").model.files["model_file"] == \
        str((out / "copy" / "best_model.pth").resolve())
    fit("--n_epochs=2", name="copy")  # retrained: the copy's model is another one now
    with pytest.raises(ScoringError, match="another model .*weights"):
        OODDetector.load(out / "copy", device="cpu", detector="denoise")
    OODDetector.load(run, device="cpu", detector="denoise")  # the original is untouched


def test_a_checkpoint_records_how_it_was_trained_and_refuses_other_data(trained, tmp_path):
    from ddpm_ood.training.settings import TrainSettings

    out, paths, fit = trained
    for name in ("checkpoint.pth", "best_model.pth"):
        record = torch.load(out / "blobs" / name, weights_only=True)
        assert set(record["training"]) >= {f.name for f in TrainSettings.flags()}
        assert record["training"]["batch_size"] == 8 and record["data"]["training"]["split"] == str(paths["train"])
        assert {split: len(entry["images_sha256"]) for split, entry in record["data"].items()} == \
            {"training": 64, "validation": 64}
    moved = tmp_path / "moved"  # the same images elsewhere are the same data ...
    shutil.copytree(paths["train"].parent, moved)
    same = moved / paths["train"].name
    same.write_text(same.read_text().replace(str(paths["train"].parent), str(moved)))
    record = torch.load(out / "blobs" / "checkpoint.pth", weights_only=True)
    with pytest.raises(ConfigError, match=r"--training_ids .*Blobs_val"):  # ... other images are not
        fit("--n_epochs=9", training=paths["val"])
    assert torch.load(out / "blobs" / "checkpoint.pth", weights_only=True)["step"] == record["step"]  # nothing written


def test_train_flags_come_from_the_one_training_config():
    from ddpm_ood.training.settings import TrainSettings

    args = train.parse_args(["--output_dir=o", "--model_name=m", "--training_ids=t", "--validation_ids=v"])
    for field in TrainSettings.flags():
        assert getattr(args, field.name) == field.default, field.name
    assert TrainSettings.from_args(args, base_lr=2.5e-5) == TrainSettings(lr=2.5e-5, lr_given=False)


# --- refusals: one line naming the file and the value ----------------------------------------------

def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("file, change, words", [
    ("scheduler_config.json", {"_class_name": "ScoreSdeVeScheduler"}, "'ScoreSdeVeScheduler' is not a variance-preserving"),
    ("scheduler_config.json", {"beta_end": "0.02"}, "beta_end = '0.02' must be a number in (0, 1)"),
    ("scheduler_config.json", {"beta_start": 1.5}, "beta_start = 1.5 must be a number in (0, 1)"),
    ("scheduler_config.json", {"trained_betas": [0.1, "x"]}, "trained_betas must be a list"),
    ("scheduler_config.json", {"trained_betas": [0.1, float("nan")]}, "trained_betas must be a list"),
    ("scheduler_config.json", {"trained_betas": [0.1, float("inf")]}, "trained_betas must be a list"),
    ("config.json", {"num_class_embeds": 10}, "num_class_embeds = 10: a class-conditional UNet"),
    ("config.json", {"class_embed_type": "timestep"}, "class_embed_type = 'timestep': a class-conditional UNet"),
    ("config.json", {"sample_size": None}, "sample_size = None must be the image size"),
    ("config.json", {"_class_name": "UNet2DConditionModel"}, "'UNet2DConditionModel' is not an unconditional"),
])
def test_what_the_boundary_cannot_take_is_refused(folder, tmp_path, file, change, words):
    edited = copy_of(folder, tmp_path)
    edit_json(edited / file, **change)
    with pytest.raises(ConfigError) as err:
        load_model(DiffusersModel(str(edited)))
    assert words in one_line(err) and file in str(err.value)


def test_a_latent_pipeline_without_its_first_stage_is_refused_not_run_on_pixels(folder, tmp_path):
    """The layout of CompVis/ldm-celebahq-256 (model_index.json, vqvae/, unet/, scheduler/), with its
    VQModel's files missing: refused, never run on pixels (tests/models/test_monai_models.py loads a whole one)."""
    ldm = tmp_path / "ldm"
    (ldm / "vqvae").mkdir(parents=True)
    shutil.copytree(folder, ldm / "unet")
    shutil.copytree(folder, ldm / "scheduler")
    (ldm / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"],
                                                      "unet": ["diffusers", "UNet2DModel"],
                                                      "scheduler": ["diffusers", "DDIMScheduler"]}))
    for given in (ldm, ldm / "unet"):
        with pytest.raises(ConfigError) as err:
            load_model(DiffusersModel(str(given)))
        assert "vqvae needs config.json" in one_line(err)


@pytest.mark.parametrize("names, words", [
    (["diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model-00001-of-00002.safetensors"],
     "sharded weights"),
    (["diffusion_pytorch_model.fp16.safetensors"], "only variant weights"),
])
def test_sharded_or_variant_weights_are_refused_saying_which_files_are_there(folder, tmp_path, names, words):
    edited = copy_of(folder, tmp_path)
    weights = edited / "diffusion_pytorch_model.safetensors"
    for name in names:
        shutil.copy(weights, edited / name)
    weights.unlink()
    with pytest.raises(ConfigError) as err:
        load_model(DiffusersModel(str(edited)))
    assert words in one_line(err) and all(name in str(err.value) for name in names)


@pytest.mark.parametrize("given, words", [("", "is empty"), ("runs_that_do_not_exist/ddpm", "no such folder"),
                                          ("./ddpm-cifar10", "no such folder")])
def test_an_empty_or_mistyped_pretrained_path_is_not_taken_for_a_hub_id(given, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs_that_do_not_exist").mkdir()
    with pytest.raises(ConfigError) as err:
        load_model(DiffusersModel(given))
    assert words in one_line(err) and "snapshot_download" not in str(err.value)


def test_reconstruct_refuses_an_empty_pretrained_flag(trained):
    out, paths, _ = trained
    with pytest.raises(ConfigError, match="--pretrained is empty"):
        reconstruct.main(reconstruct.parse_args([f"--output_dir={out}", "--model_name=blobs", "--pretrained=",
                                                 f"--validation_ids={paths['val']}", "--run_in=0", "--run_out=0"]))


def test_the_api_checks_image_shape_and_channels_as_the_scripts_do(trained):
    """Main before this: ImageDetector and the pytorch-ood adapter scored 32x32 or 16x16 images with a
    28x28 model and gave numbers."""
    from ddpm_ood.api import ImageDetector, pytorch_ood_detector

    out, _, _ = trained
    model_file = out / "blobs" / "best_model.pth"
    assert load_model(RunModel(model_file)).image_space.shape == (1, 28, 28)
    detector = ImageDetector(model_file, detector="denoise", device="cpu", denoise_levels=2)
    good = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for bad, fix in ((torch.rand(2, 1, 32, 32), "resize them"), (torch.rand(2, 1, 16, 16), "resize them"),
                     (torch.rand(2, 3, 28, 28), "convert them to 1 channel")):
        with pytest.raises(DataError, match=fix):
            detector.fit_images(bad)
        detector.fit_images(good)
        with pytest.raises(DataError, match=r"takes \(1, 28, 28\)"):
            detector.predict(bad)
    pytest.importorskip("pytorch_ood")
    adapter = pytorch_ood_detector(model_file, detector="denoise", device="cpu", denoise_levels=2)
    adapter.fit([(good, torch.zeros(6))])
    with pytest.raises(DataError, match="resize them"):
        adapter(torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a folder, not a model file: pass a model file"),
    (lambda p: p.write_text("filename\n/data/a.npy\n"), "is a text file (a split CSV?), not a model file"),
    (lambda p: __import__("numpy").save(p, __import__("numpy").zeros((28, 28))), "is a numpy array"),
])
def test_a_folder_or_a_data_file_given_as_a_model_is_named_for_what_it_is(tmp_path, make, words):
    """Main before this answered 'Delete it and use another checkpoint' (and, for a CSV, torch's advice to
    load it with weights_only=False)."""
    from ddpm_ood.api import ImageDetector
    from ddpm_ood.utils.errors import CheckpointError

    given = tmp_path / "given"
    make(given)
    given = next(tmp_path.glob("given*"))
    with pytest.raises(CheckpointError) as err:
        ImageDetector(given, detector="denoise", device="cpu")
    text = one_line(err)
    assert words in text and "Delete" not in text and "weights_only" not in text



def test_an_unused_config_file_never_stops_a_run_and_a_read_only_run_is_read(trained, monkeypatch, caplog):
    """Main before this: a --config_diffusion_file that is never used (the model file's config is) could
    stop reconstruct.py, and a finished run in a read-only folder failed on its lock file."""
    import errno
    import os

    from ddpm_ood.runs import lock as runlock

    out, paths, _ = trained
    args = [f"--output_dir={out}", "--model_name=blobs", f"--validation_ids={paths['val']}", "--run_in=0",
            "--run_out=0", "--detectors=denoise", "--denoise_levels=2", "--num_workers=0"]
    reconstruct.main(reconstruct.parse_args([*args, "--config_diffusion_file=no/such/config.yaml"]))
    assert "--config_diffusion_file is not used" in caplog.text
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_open(path, *a, **k)

    monkeypatch.setattr(runlock.os, "open", read_only)
    written = reconstruct.main(reconstruct.parse_args(args))  # finished: read, nothing to write
    assert "is read-only: going on without the lock file" in caplog.text and written


def test_the_same_images_in_another_folder_are_not_measured_again(trained, tmp_path):
    """Main before this: moving the data (the same images, another folder) made every set recompute."""
    out, paths, _ = trained
    args = [f"--output_dir={out}", "--model_name=blobs", "--run_in=0", "--run_out=0", "--detectors=denoise",
            "--denoise_levels=2", "--num_workers=0"]
    reconstruct.main(reconstruct.parse_args([*args, f"--validation_ids={paths['val']}"]))
    results = out / "blobs" / "ood" / "denoise" / "results_val.csv"
    before = (results.read_bytes(), results.stat().st_mtime_ns)
    import numpy as np
    import pandas as pd

    from conftest import write_split

    moved = tmp_path / "moved"  # the same images and a split file of their own, elsewhere
    moved.mkdir()
    files = [shutil.copy(f, moved / pathlib.Path(f).name) for f in pd.read_csv(paths["val"])["filename"]]
    split = write_split(moved / "Blobs_val.csv", [pathlib.Path(f) for f in files])
    reconstruct.main(reconstruct.parse_args([*args, f"--validation_ids={split}"]))
    assert (results.read_bytes(), results.stat().st_mtime_ns) == before
    np.save(files[0], 255 - np.load(files[0]))  # other pixels: another set
    with pytest.raises(DataError, match="image pixels"):
        reconstruct.main(reconstruct.parse_args([*args, f"--validation_ids={split}"]))


def test_a_model_of_other_channels_says_to_convert_not_to_resize():
    """Main before this told a 4-channel model's user with 3-channel images to resize them."""
    from ddpm_ood.models.spaces import ImageSpace

    space = ImageSpace(4, (4, 32, 32))
    with pytest.raises(DataError, match=r"takes \(4, 32, 32\): convert them to 4 channel"):
        space.check(torch.rand(2, 3, 32, 32), "", "m")
    with pytest.raises(DataError, match="resize them"):
        space.check(torch.rand(2, 4, 16, 16), "", "m")
    space.check(torch.rand(2, 4, 32, 32), "", "m")


@pytest.mark.slow
def test_a_moved_or_copied_run_scores_with_its_own_model(scored_copy, tmp_path):
    out, paths = scored_copy
    images = load_split(paths["ood"], True).images
    expected = OODDetector.load(out / "m", device="cpu").score(images)
    moved = tmp_path / "elsewhere" / "m"
    shutil.move(str(out / "m"), moved)
    tiny_score(moved.parent)  # the run's own results still score together
    np.testing.assert_allclose(OODDetector.load(moved, device="cpu").score(images), expected, rtol=1e-6)
    reconstruct.main(tiny_reconstruct_args(moved.parent, paths, "--detectors=recon,msma"))  # complete: nothing redone
    copy = tmp_path / "copy" / "m"
    shutil.copytree(moved, copy)
    train.main(tiny_train_args(moved.parent, paths, epochs=2))  # the original trains on; the copy keeps its model
    np.testing.assert_allclose(OODDetector.load(copy, device="cpu").score(images), expected, rtol=1e-6)
