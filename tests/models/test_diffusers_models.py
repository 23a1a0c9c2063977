"""Pretrained diffusers models (reconstruct.py --pretrained): a tiny random UNet2DModel saved with
save_pretrained in both layouts; our eps, schedule and PLMS against diffusers' own; the whole
pipeline on it; refusals (missing files, unknown schedules, a malicious pickle)."""
from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
from conftest import ROOT, reseal, write_split
from ddpm_ood.detectors import COMBINATIONS, DETECTORS
from ddpm_ood.models.diffusers_models import DiffusersEps, load_pretrained, locate, schedule_from_config
from ddpm_ood.models.loading import DiffusersModel, ModelSource, load_model
from ddpm_ood.utils.errors import CheckpointError, ConfigError, ScoringError
from helpers.diffusers_fakes import colour_split, scheduler, tiny_unet

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """The same tiny model in the root layout (save_pretrained of the UNet and the scheduler into one
    folder) and in the pipeline layout (unet/ and scheduler/)."""
    root = tmp_path_factory.mktemp("pretrained")
    unet = tiny_unet()
    unet.save_pretrained(root / "flat")
    scheduler().save_pretrained(root / "flat")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler()).save_pretrained(root / "pipeline")
    return {"flat": root / "flat", "pipeline": root / "pipeline", "unet": unet.eval()}


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_our_eps_is_the_unet_on_images_mapped_to_minus_one_one(model_dirs, layout):
    model = load_model(DiffusersModel(str(model_dirs[layout])), CPU)
    assert model.image_shape == (3, 16, 16) and model.channels == 3
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 250, 500, 999])
    with torch.no_grad():
        ours = model.model_fn(model.space.encode(x), t)
        theirs = model_dirs["unet"](2 * x - 1, t).sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.space.decode(model.space.encode(x)), x, rtol=0, atol=1e-7)
    assert model.manifest()["pretrained"] == str(model_dirs[layout].resolve())
    assert len(model.manifest()["model_id"]) == 64 and model.manifest()["model_source"] == "diffusers"


@pytest.mark.parametrize("config", [{"beta_schedule": "linear"}, {"beta_schedule": "scaled_linear",
                                                                  "beta_start": 0.00085, "beta_end": 0.012},
                                    {"beta_schedule": "squaredcos_cap_v2"},
                                    {"trained_betas": np.linspace(1e-4, 0.03, 500).tolist(), "num_train_timesteps": 500}])
def test_our_schedule_is_the_schedulers_for_each_beta_schedule(tmp_path, config):
    theirs = scheduler(**config)
    theirs.save_pretrained(tmp_path)
    ours, prediction = schedule_from_config(tmp_path / "scheduler_config.json")
    assert prediction == "epsilon" and ours.num_timesteps == len(theirs.alphas_cumprod)
    np.testing.assert_array_equal(ours.alphas_cumprod, theirs.alphas_cumprod.double().numpy())
    # t indexes alphas_cumprod exactly as DDPMScheduler.add_noise does.
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 1, ours.num_timesteps // 2, ours.num_timesteps - 1])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=1e-6)


def test_diffusers_linear_is_our_plain_linear_and_scaled_linear_our_linear(tmp_path):
    """The name clash: diffusers' linear is linear in beta; our config's linear is linear in sqrt(beta)."""
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    scheduler(beta_schedule="linear").save_pretrained(tmp_path / "a")
    scheduler(beta_schedule="scaled_linear").save_pretrained(tmp_path / "b")
    linear, _ = schedule_from_config(tmp_path / "a" / "scheduler_config.json")
    scaled, _ = schedule_from_config(tmp_path / "b" / "scheduler_config.json")
    np.testing.assert_allclose(linear.alphas_cumprod, DDPMSchedule(1000, "plain_linear", 1e-4, 0.02).alphas_cumprod,
                               rtol=1e-5)
    np.testing.assert_allclose(scaled.alphas_cumprod, DDPMSchedule(1000, "linear", 1e-4, 0.02).alphas_cumprod, rtol=1e-5)


def test_v_and_x0_predictions_are_converted_to_eps_exactly():
    """Single-point data c with known noise e: x_t = sqrt(a) c + sqrt(1 - a) e. A model predicting
    v = sqrt(a) e - sqrt(1 - a) c exactly, or x0 = c exactly, must give back e."""
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    schedule = DDPMSchedule(1000, "plain_linear", 1e-4, 0.02)
    gen = torch.Generator().manual_seed(0)
    c, e = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1, torch.randn(6, 3, 4, 4, generator=gen,
                                                                                         dtype=torch.float64)
    t = torch.tensor([0, 10, 300, 600, 900, 999])
    a = torch.from_numpy(schedule.alphas_cumprod[t.numpy()]).reshape(-1, 1, 1, 1)  # float64: 1 - a is exact enough
    x_t, c, e, a = (v.float() for v in (a.sqrt() * c + (1 - a).sqrt() * e, c, e, a))
    # x0 -> eps divides by sqrt(1 - a) (0.01 at t = 0): float32 rounding of x_t is amplified as much.
    a64 = torch.from_numpy(schedule.alphas_cumprod[t.numpy()]).reshape(-1, 1, 1, 1)
    v = (a64.sqrt() * e.double() - (1 - a64).sqrt() * c.double()).float()
    for prediction, target, atol in (("v_prediction", v, 1e-5),
                                     ("sample", c.expand_as(e), 1e-4), ("epsilon", e, 0)):
        eps = DiffusersEps(Predicts(target), schedule, prediction)
        torch.testing.assert_close(eps(x_t, t), e, rtol=0, atol=atol, msg=prediction)


class Predicts(torch.nn.Module):
    """A stand-in UNet2DModel that outputs a fixed prediction."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output, self.config = output, SimpleNamespace(in_channels=output.shape[1])

    def forward(self, x, t):
        return SimpleNamespace(sample=self.output)


@pytest.mark.parametrize("start_index", [3, 6])
def test_our_plms_reconstruction_is_diffusers_pndm_in_plms_mode(model_dirs, start_index):
    """From the same x_t and model, our PLMS and PNDMScheduler(skip_prk_steps=True) agree to float32
    rounding. PNDM runs a trajectory from grid point k as k, k-1, k-1, k-2, ..., 0: its second call
    at the repeated point is the first step's corrector (the model at the predicted sample and the
    next grid point), which our sampler makes in one step. A one-step trajectory (k = 0) has no
    PNDM counterpart: its corrector would be evaluated at a negative timestep, so it is left out."""
    from ddpm_ood.diffusion.ddpm import PLMSSampler
    from ddpm_ood.diffusion.reconstruction import reconstruct_sequential, start_noise

    model = load_model(DiffusersModel(str(model_dirs["flat"])), CPU)
    sampler = PLMSSampler(model.schedule)
    sampler.set_timesteps(10)
    grid = sampler.grid.tolist()
    x0 = model.space.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)))
    noise = start_noise((3, 16, 16), 0, [0, 1], [grid[start_index]])
    ours = reconstruct_sequential(model.model_fn, model.schedule, sampler, x0, [start_index], noise)[:, 0]

    pndm = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                   skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pndm.set_timesteps(10)
    assert sorted(pndm._timesteps.tolist()) == grid  # the same grid: 1, 101, ..., 901
    x = pndm.add_noise(x0, noise[:, 0], torch.full((2,), grid[start_index]))
    steps = [grid[start_index], grid[start_index - 1], *grid[start_index - 1::-1]]
    with torch.no_grad():
        for t in steps:
            x = pndm.step(model_dirs["unet"](x, torch.full((2,), t)).sample, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=2e-5)


# --- the pipeline on a pretrained model -------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained_run(model_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained_run")
    splits = {"val": colour_split(tmp / "val", "Blobs_val", 12, 0, "blobs"),
              "in": colour_split(tmp / "in", "Blobs_test", 6, 1, "blobs"),
              "ood": colour_split(tmp / "ood", "Stripes_test", 6, 2, "stripes")}
    out = tmp / "runs"

    def run(*extra, model=str(model_dirs["pipeline"])):
        return reconstruct.main(reconstruct.parse_args([
            f"--output_dir={out}", "--model_name=p", f"--pretrained={model}", f"--validation_ids={splits['val']}",
            f"--in_ids={splits['in']}", f"--out_ids={splits['ood']}", "--num_inference_steps=10",
            "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4", "--chunk_size=5", "--num_workers=0",
            "--path_steps=4", "--msma_levels=3", "--denoise_levels=2", *extra]))

    run("--detectors=all")
    return out, splits, run


@pytest.mark.slow
def test_every_detector_runs_on_a_pretrained_model_and_records_its_source(pretrained_run, model_dirs, capsys):
    out, splits, _ = pretrained_run
    ood = out / "p" / "ood"
    manifest = json.loads((ood / "results_val.settings.json").read_text())
    assert manifest["pretrained"] == str(model_dirs["pipeline"].resolve()) and manifest["is_grayscale"] == 0
    assert manifest["model_file"].endswith("unet/diffusion_pytorch_model.safetensors")
    assert json.loads((ood / "msma" / "results_in.settings.json").read_text())["model_id"] == manifest["model_id"]
    summary = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p", "--bootstrap=0",
                                                           "--no-figures"]))
    assert capsys.readouterr().out.startswith("AUC for p vs Stripes: ")
    assert set(summary["detector"]) == {*DETECTORS, *COMBINATIONS}
    assert summary["auroc"].between(0, 1).all()

    # New images score as in the pipeline, through --score_ids and the API.
    from ddpm_ood.api import OODDetector

    predictions = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p",
                                                               f"--score_ids={splits['ood']}"]))
    pipeline = pd.read_csv(ood / "scores_Stripes.csv")
    np.testing.assert_allclose(predictions["score"], pipeline["score"], rtol=1e-5, atol=1e-6)
    from ddpm_ood.data.loading import load_split

    images = load_split(splits["ood"], False).images
    np.testing.assert_allclose(OODDetector.load(out / "p", device="cpu").score(images), pipeline["score"],
                               rtol=1e-5, atol=1e-6)


def test_results_of_a_pretrained_and_of_another_model_are_never_mixed(pretrained_run, model_dirs, tmp_path):
    out, splits, run = pretrained_run
    other = tmp_path / "other"
    tiny_unet(seed=5).save_pretrained(other)
    scheduler().save_pretrained(other)
    from ddpm_ood.utils.errors import DataError

    with pytest.raises(DataError, match="model identity"):  # the finished results of the first model are kept
        run("--run_in=0", "--run_out=0", model=str(other))
    ood = out / "p" / "ood"
    extra = write_split(tmp_path / "Extra_test.csv", pd.read_csv(splits["ood"])["filename"].tolist())
    run("--run_val=0", "--run_in=0", f"--out_ids={extra}", model=str(other))
    with pytest.raises(ScoringError, match=r"results_Extra.csv was made with other settings .*model identity"):
        ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p", "--bootstrap=0"]))
    for path in ood.glob("results_Extra*"):
        path.unlink()


def test_a_pretrained_model_that_changed_is_refused_for_new_images(pretrained_run, model_dirs, tmp_path):
    import shutil

    out, splits, run = pretrained_run
    copy = tmp_path / "copy"
    shutil.copytree(out / "p", copy / "p")
    for manifest in (copy / "p" / "ood").rglob("results_*.settings.json"):  # as if made with other weights
        reseal(manifest, model_id="0" * 64)
    ood_detection.main(ood_detection.parse_args([f"--output_dir={copy}", "--model_name=p", "--bootstrap=0",
                                                 "--no-figures", "--fit_on=val"]))
    from ddpm_ood.api import OODDetector

    with pytest.raises(ScoringError, match="made with another model"):
        OODDetector.load(copy / "p", device="cpu")


@pytest.mark.slow
def test_an_imported_models_intensity_is_recorded_and_new_images_are_made_with_it(model_dirs, tmp_path):
    """Another library's model records no preprocessing: the --intensity its sets were read with goes into the
    results manifest, and new images (--score_ids, the API) are scaled the same way (they were min-max scaled,
    so their scores differed from the pipeline's). Resuming with another --intensity is refused, naming it."""
    splits = {"val": colour_split(tmp_path / "val", "Blobs_val", 8, 0, "blobs"),
              "in": colour_split(tmp_path / "in", "Blobs_test", 4, 1, "blobs"),
              "ood": colour_split(tmp_path / "ood", "Stripes_test", 4, 2, "stripes")}
    out = tmp_path / "runs"

    def run(intensity):
        return reconstruct.main(reconstruct.parse_args([
            f"--output_dir={out}", "--model_name=p", f"--pretrained={model_dirs['pipeline']}",
            f"--validation_ids={splits['val']}", f"--in_ids={splits['in']}", f"--out_ids={splits['ood']}",
            "--num_inference_steps=10", "--inference_skip_factor=5", "--metrics=mse", "--batch_size=4",
            "--num_workers=0", f"--intensity={intensity}"]))

    run("percentile:5,95")
    ood = out / "p" / "ood"
    manifest = json.loads((ood / "results_val.settings.json").read_text())
    assert manifest["preprocessing"] == {"intensity": "percentile:5,95"}
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p", "--bootstrap=0",
                                                 "--no-figures"]))
    from ddpm_ood.api import OODDetector

    assert OODDetector.load(out / "p", device="cpu").intensity == "percentile:5,95"
    predictions = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=p",
                                                               f"--score_ids={splits['ood']}"]))
    np.testing.assert_allclose(predictions["score"], pd.read_csv(ood / "scores_Stripes.csv")["score"], rtol=1e-5,
                               atol=1e-6)
    from ddpm_ood.utils.errors import DataError

    with pytest.raises(DataError, match="another library's model's --image_roi, --image_size, --intensity"):
        run("minmax")


# --- refusals ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_malicious_pickle_never_runs(model_dirs, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "scheduler_config.json"):
        (folder / name).write_bytes((model_dirs["flat"] / name).read_bytes())
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps({"weights": Exploit()}, protocol=2)
    pickle.loads(payload)  # the exploit is real: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(payload)
    with pytest.raises(CheckpointError, match="nothing in the file was run"):
        load_pretrained(str(folder))
    assert not marker.exists()
    result = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), f"--output_dir={tmp_path}", "--model_name=m",
                             f"--pretrained={folder}", "--run_val=0", "--run_in=0", "--run_out=0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr and not marker.exists()
    assert len(errors) == 1 and "diffusion_pytorch_model.bin" in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("case,match", [
    ("missing", r"model: no such folder \(the nearest one that exists is"),
    ("no_scheduler", r"scheduler_config.json does not exist"),
    ("schedule", r"scheduler_config.json: beta_schedule = 'sigmoid' is not supported"),
    ("prediction", r"scheduler_config.json: prediction_type = 'flow' is not supported"),
])
def test_bad_model_folders_exit_2_with_one_line_naming_the_file_and_value(model_dirs, tmp_path, case, match):
    folder = tmp_path / "model"
    if case != "missing":
        folder.mkdir()
        for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
            (folder / name).write_bytes((model_dirs["flat"] / name).read_bytes())
        config = json.loads((folder / "scheduler_config.json").read_text())
        if case == "no_scheduler":
            (folder / "scheduler_config.json").unlink()
        elif case == "schedule":
            (folder / "scheduler_config.json").write_text(json.dumps({**config, "beta_schedule": "sigmoid"}))
        else:
            (folder / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "flow"}))
    with pytest.raises(ConfigError, match=match):
        locate(str(folder)) if case in ("missing", "no_scheduler") else load_pretrained(str(folder))
    result = subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), f"--output_dir={tmp_path}", "--model_name=m",
                             f"--pretrained={folder}", "--run_val=0", "--run_in=0", "--run_out=0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(errors) == 1 and re.search(match, errors[0]), result.stderr


def test_a_hub_id_is_read_from_the_cache_offline_or_says_how_to_fetch_it(model_dirs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--google--tiny-ddpm" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        (snapshot / name).write_bytes((model_dirs["flat"] / name).read_bytes())
    (cache / "models--google--tiny-ddpm" / "refs").mkdir()
    (cache / "models--google--tiny-ddpm" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_pretrained("google/tiny-ddpm")
    assert model.location == "google/tiny-ddpm" and model.files["pretrained"] == "google/tiny-ddpm"
    with pytest.raises(ConfigError, match=r"google/ddpm-cifar10-32 is not in the Hugging Face cache.*snapshot_download"
                                          r"\('google/ddpm-cifar10-32'\)"):
        load_pretrained("google/ddpm-cifar10-32")


def test_pretrained_and_eval_checkpoint_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="two models"):
        ModelSource.choose(None, "best_model.pth", "google/ddpm-cifar10-32")


@pytest.mark.slow
def test_help_and_the_papers_path_never_import_diffusers():
    code = ("import sys, reconstruct\ntry:\n    reconstruct.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "import ddpm_ood.models.loading, ddpm_ood.api, ddpm_ood.evaluation.scores\nassert 'diffusers' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_shards_and_torchrun_on_a_pretrained_model_give_the_same_bytes(pretrained_run, model_dirs, tmp_path):
    """As for a trained run. Each run has one thread per process (CPU kernels may round differently
    with other thread counts, whatever the split of the work)."""
    import os

    _, splits, _ = pretrained_run
    common = [f"--pretrained={model_dirs['pipeline']}", f"--validation_ids={splits['val']}", "--run_in=0",
              "--run_out=0", "--num_inference_steps=10", "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4",
              "--chunk_size=5", "--num_workers=0", "--detectors=recon,msma", "--msma_levels=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for name, launcher, extra in (("one", [sys.executable], []), ("shard1", [sys.executable], ["--shard=1/2"]),
                                  ("shard0", [sys.executable], ["--shard=0/2"]), ("torchrun", torchrun, [])):
        out = tmp_path / ("shards" if name.startswith("shard") else name)
        done = subprocess.run([*launcher, str(ROOT / "reconstruct.py"), f"--output_dir={out}", "--model_name=p",
                               *common, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results_val.csv", "msma/results_val.csv"):
        expected = (tmp_path / "one" / "p" / "ood" / name).read_bytes()
        assert (tmp_path / "shards" / "p" / "ood" / name).read_bytes() == expected, name
        assert (tmp_path / "torchrun" / "p" / "ood" / name).read_bytes() == expected, name
