"""ddpm-ood's later README (the LDM and 3D work's), run as written: its FashionMNIST DDPM commands, its
torchrun line and its Decathlon VQ-VAE, LDM, reconstruction and OOD commands, with only paths, epoch
counts and sizes scaled down (marked ``# scaled``), on data made by get_datasets.py in the published
layouts. Also each later flag's effect on its own: the prediction types, b_scale, the start points and
reconstruct.py's checks against the model."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import get_datasets
import ood_detection
import reconstruct
import train
import train_vqvae
from conftest import ROOT, TINY_CONFIG
from ddpm_ood.utils.errors import ConfigError
from helpers.pipeline import reconstruct_tiny, train_tiny

SCRIPTS = {"train_ddpm.py": train, "train_vqvae.py": train_vqvae, "reconstruct.py": reconstruct,
           "ood_detection.py": ood_detection}
AUC_LINE = re.compile(r"^AUC for (\S+) vs (\S+): (\d+\.\d)$", re.M)


def run_command(text: str, **paths) -> None:
    """One of the README's commands, its ${data_root} / ${output_root} filled in, run by its script's main."""
    for name, value in paths.items():
        text = text.replace("${" + name + "}", str(value))
    words = shlex.split(text.replace("\\\n", " "))
    assert words[0] == "python"
    script = SCRIPTS[words[1]]
    script.main(script.parse_args(words[2:]))


# --- the README's DDPM commands (FashionMNIST) --------------------------------------------------------

TRAIN_FASHIONMNIST = """python train_ddpm.py \\
--output_dir=${output_root} \\
--model_name=fashionmnist \\
--training_ids=${data_root}/data_splits/FashionMNIST_train.csv \\
--validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \\
--is_grayscale=1 \\
--n_epochs=1 \\
--beta_schedule=scaled_linear \\
--beta_start=0.0015 \\
--beta_end=0.0195 \\
--config_diffusion_file=${tiny_config}"""  # scaled: n_epochs (300), the UNet (the tiny config)

TORCHRUN_FASHIONMNIST = """torchrun --nproc_per_node=2 --nnodes=1 --node_rank=0 \\
train_ddpm.py \\
--output_dir=${output_root} \\
--model_name=fashionmnist \\
--training_ids=${data_root}/data_splits/FashionMNIST_train.csv \\
--validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \\
--is_grayscale=1 \\
--n_epochs=2 \\
--beta_schedule=scaled_linear \\
--beta_start=0.0015 \\
--beta_end=0.0195 \\
--config_diffusion_file=${tiny_config}"""  # scaled: n_epochs, the UNet

RECONSTRUCT_FASHIONMNIST = """python reconstruct.py \\
--output_dir=${output_root} \\
--model_name=fashionmnist \\
--validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \\
--in_ids=${data_root}/data_splits/FashionMNIST_test.csv \\
--out_ids=${data_root}/data_splits/MNIST_test.csv,${data_root}/data_splits/FashionMNIST_vflip_test.csv,${data_root}/data_splits/FashionMNIST_hflip_test.csv \\
--is_grayscale=1 \\
--beta_schedule=scaled_linear \\
--beta_start=0.0015 \\
--beta_end=0.0195 \\
--num_inference_steps=20 \\
--inference_skip_factor=4 \\
--run_val=1 \\
--run_in=1 \\
--run_out=1"""  # scaled: num_inference_steps (100)

OOD_FASHIONMNIST = """python ood_detection.py \\
--output_dir=${output_root} \\
--model_name=fashionmnist"""


@pytest.mark.slow
def test_the_later_readmes_ddpm_commands_and_torchrun_line(tmp_path, capsys, random_alexnet_home):
    from helpers.data import make_idx_source

    make_idx_source(tmp_path / "raw" / "MNIST", n_train=20, n_test=6, seed=1)
    make_idx_source(tmp_path / "raw" / "FashionMNIST", n_train=40, n_test=6, seed=2)
    paths = {"data_root": tmp_path / "data", "output_root": tmp_path / "models", "tiny_config": TINY_CONFIG}
    get_datasets.main(get_datasets.parse_args([f"--data_root={paths['data_root']}", "--datasets", "MNIST",
                                               "FashionMNIST", "--source_dir", str(tmp_path / "raw")]))
    run_command(TRAIN_FASHIONMNIST, **paths)
    run = paths["output_root"] / "fashionmnist"
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1

    # The torchrun line as written (gloo on CPUs): it resumes the run on two processes, to epoch 2.
    command = TORCHRUN_FASHIONMNIST
    for name, value in paths.items():
        command = command.replace("${" + name + "}", str(value))
    words = shlex.split(command.replace("\\\n", " "))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:]], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert state["epoch"] == 2 and state["settings"]["world_size"] == 2
    assert "global batch" in result.stderr  # the start says what --batch_size means under torchrun

    run_command(RECONSTRUCT_FASHIONMNIST, **paths)
    run_command(OOD_FASHIONMNIST, **paths)
    printed = AUC_LINE.findall(capsys.readouterr().out)
    assert {name for model, name, _ in printed if model == "fashionmnist"} >= {
        "MNIST", "FashionMNIST_vflip", "FashionMNIST_hflip"}


# --- the README's LDM commands (Medical Decathlon) ------------------------------------------------------

TRAIN_VQVAE = """python train_vqvae.py  \\
--output_dir=${output_root} \\
--model_name=vqvae_decathlon \\
--training_ids=${data_root}/data_splits/Task01_BrainTumour_train.csv \\
--validation_ids=${data_root}/data_splits/Task01_BrainTumour_val.csv  \\
--is_grayscale=1 \\
--n_epochs=1 \\
--batch_size=8  \\
--eval_freq=10 \\
--cache_data=0  \\
--vqvae_downsample_parameters=[[2,4,1,1],[2,4,1,1]] \\
--vqvae_upsample_parameters=[[2,4,1,1,0],[2,4,1,1,0]] \\
--vqvae_num_channels=[8,8] \\
--vqvae_num_res_channels=[8,8] \\
--vqvae_embedding_dim=4 \\
--vqvae_num_embeddings=16 \\
--vqvae_decay=0.9  \\
--vqvae_learning_rate=3e-5 \\
--spatial_dimension=3 \\
--image_roi=[20,20,16] \\
--image_size=16"""  # scaled: n_epochs, levels and channels, embeddings, roi and size

TRAIN_LDM = """python train_ddpm.py \\
  --output_dir=${output_root} \\
  --model_name=ddpm_decathlon \\
  --vqvae_checkpoint=${output_root}/vqvae_decathlon/checkpoint.pth \\
  --training_ids=${data_root}/data_splits/Task01_BrainTumour_train.csv \\
  --validation_ids=${data_root}/data_splits/Task01_BrainTumour_val.csv  \\
  --is_grayscale=1 \\
  --n_epochs=2 \\
  --batch_size=6 \\
  --eval_freq=25 \\
  --checkpoint_every=1 \\
  --cache_data=0  \\
  --prediction_type=epsilon \\
  --model_type=small \\
  --beta_schedule=scaled_linear_beta \\
  --beta_start=0.0015 \\
  --beta_end=0.0195 \\
  --b_scale=1.0 \\
  --spatial_dimension=3 \\
  --image_roi=[20,20,16] \\
  --image_size=16"""  # scaled: n_epochs (12000), checkpoint_every (1000), roi and size

OUT_TASKS = ("Task02_Heart", "Task03_Liver", "Task04_Hippocampus", "Task05_Prostate", "Task06_Lung",
             "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen")
RECONSTRUCT_LDM = """python reconstruct.py \\
  --output_dir=${output_root} \\
  --model_name=ddpm_decathlon \\
  --vqvae_checkpoint=${output_root}/vqvae_decathlon/checkpoint.pth \\
  --validation_ids=${data_root}/data_splits/Task01_BrainTumour_val.csv  \\
  --in_ids=${data_root}/data_splits/Task01_BrainTumour_test.csv \\
  --out_ids=${data_root}/data_splits/Task02_Heart_test.csv,${data_root}/data_splits/Task03_Liver_test.csv,${data_root}/data_splits/Task04_Hippocampus_test.csv,${data_root}/data_splits/Task05_Prostate_test.csv,${data_root}/data_splits/Task06_Lung_test.csv,${data_root}/data_splits/Task07_Pancreas_test.csv,${data_root}/data_splits/Task08_HepaticVessel_test.csv,${data_root}/data_splits/Task09_Spleen_test.csv\\
  --is_grayscale=1 \\
  --batch_size=32 \\
  --cache_data=0 \\
  --prediction_type=epsilon \\
  --beta_schedule=scaled_linear_beta \\
  --beta_start=0.0015 \\
  --beta_end=0.0195 \\
  --b_scale=1.0 \\
  --spatial_dimension=3 \\
  --image_roi=[20,20,16] \\
  --image_size=16 \\
  --num_inference_steps=10 \\
  --inference_skip_factor=2 \\
  --run_val=1 \\
  --run_in=1 \\
  --run_out=1"""  # scaled: roi and size, num_inference_steps (100); the VQ-VAE path is the one trained above

OOD_LDM = """python ood_detection.py \\
--output_dir=${output_root} \\
--model_name=ddpm_decathlon"""


@pytest.mark.slow
def test_the_later_readmes_decathlon_ldm_commands(tmp_path, capsys, random_alexnet_home):
    """The VQ-VAE, the LDM (MONAI's small DiffusionModelUNet on its latents), reconstruction with the
    later flags (checked against the model) and the AUC lines, on Decathlon tasks in their published
    layout converted by get_datasets.py."""
    from monai.networks.nets import DiffusionModelUNet

    from helpers.data import decathlon_task

    source = tmp_path / "decathlon"
    decathlon_task(source, "Task01_BrainTumour", 10, 3, modalities=4, shape=(24, 24, 20))
    for k, task in enumerate(OUT_TASKS):
        decathlon_task(source, task, 2, 2, shape=(24, 24, 20), seed=10 + k, bright=1.0 + k / 4)
    paths = {"data_root": tmp_path / "data", "output_root": tmp_path / "models"}
    get_datasets.main(get_datasets.parse_args([f"--data_root={paths['data_root']}", "--datasets", "Decathlon",
                                               "--source_dir", f"Decathlon={source}"]))
    run_command(TRAIN_VQVAE, **paths)
    run_command(TRAIN_LDM, **paths)
    run = paths["output_root"] / "ddpm_decathlon"
    assert sorted(p.name for p in run.glob("checkpoint_[0-9]*.pth")) == ["checkpoint_1.pth", "checkpoint_2.pth"]
    model = torch.load(run / "final_model.pth", weights_only=True)
    unet = model["config"]["ldm"]["params"]["unet_config"]
    assert unet["target"] == "monai.networks.nets.DiffusionModelUNet" and unet["params"]["spatial_dims"] == 3
    monai = DiffusionModelUNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(128, 256, 256),
                               attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=256)
    monai.load_state_dict(model["model"])  # ddpm-ood's small network, parameter for parameter
    from ddpm_ood.models.loading import ModelSource, load_model

    loaded = load_model(ModelSource.of("run", run / "final_model.pth"))  # the latent model as every detector calls it
    latents, t = torch.randn(2, 4, 4, 4, 4), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model_fn(latents, t), monai.eval()(latents, timesteps=t), rtol=0, atol=1e-6)

    run_command(RECONSTRUCT_LDM, **paths)
    run_command(OOD_LDM, **paths)
    printed = AUC_LINE.findall(capsys.readouterr().out)
    assert {name for model_name, name, _ in printed if model_name == "ddpm_decathlon"} >= set(OUT_TASKS)

    # The same command with a flag the model was not trained with is refused, naming both values.
    wrong = RECONSTRUCT_LDM.replace("--prediction_type=epsilon", "--prediction_type=v_prediction")
    with pytest.raises(ConfigError, match="--prediction_type v_prediction but the model was trained with "
                                          "prediction_type = epsilon"):
        run_command(wrong, **paths)


# --- each later flag on its own ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_each_prediction_type_trains_on_its_target_and_scores_as_eps(tmp_path, synthetic_splits, prediction):
    """A model trained to predict v or x0 is called through the schedule's conversion to eps by every detector:
    the loaded model's eps is the raw output converted (eps_from_prediction), and it scores."""
    from ddpm_ood.models.loading import ModelSource, load_model

    train_tiny(tmp_path, synthetic_splits, f"--prediction_type={prediction}")
    model = load_model(ModelSource.of("run", tmp_path / "m" / "best_model.pth"), torch.device("cpu"))
    assert model.schedule.prediction == prediction and model.parts["prediction"] == prediction
    raw = torch.load(tmp_path / "m" / "best_model.pth", weights_only=True)
    from ddpm_ood.models.config import build_unet

    unet = build_unet(raw["config"]).eval()
    unet.load_state_dict(raw["model"])
    x, t = torch.rand(3, 1, 28, 28), torch.tensor([2, 300, 900])
    with torch.no_grad():
        expected = model.schedule.to_eps(unet(x, t), x, t)
        torch.testing.assert_close(model.model_fn(x, t), expected.float(), rtol=0, atol=1e-5)
    reconstruct_tiny(tmp_path, synthetic_splits)
    results = pd.read_csv(tmp_path / "m" / "ood" / "results_in.csv")
    assert np.isfinite(results["mse"]).all() and len(results) == 6 * 2


@pytest.mark.slow
def test_b_scale_multiplies_the_data_and_divides_the_reconstruction(tmp_path, synthetic_splits):
    from ddpm_ood.models.loading import ModelSource, load_model

    train_tiny(tmp_path, synthetic_splits, "--b_scale=2", "--snr_shift=0.5")
    model = load_model(ModelSource.of("run", tmp_path / "m" / "best_model.pth"), torch.device("cpu"))
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model.space.encode(images), 2 * images)
    torch.testing.assert_close(model.space.decode(2 * images), images)
    assert model.parts["model_space"] == {"kind": "pixel", "range": [0.0, 2.0]}
    a = model.schedule.alphas_cumprod
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    base = DDPMSchedule().alphas_cumprod
    np.testing.assert_allclose(a / (1 - a), 0.5 * base / (1 - base), rtol=1e-9)
    reconstruct_tiny(tmp_path, synthetic_splits, "--b_scale=2", "--snr_shift=0.5")  # the model's own: accepted
    with pytest.raises(ConfigError, match="--b_scale 1.0 but the model was trained with b_scale = 2.0"):
        reconstruct_tiny(tmp_path, synthetic_splits, "--b_scale=1.0")
    with pytest.raises(ConfigError, match="--beta_schedule linear_beta but the model was trained with "
                                          "beta_schedule = linear"):
        reconstruct_tiny(tmp_path, synthetic_splits, "--beta_schedule=linear_beta")
    with pytest.raises(ConfigError, match="is a pixel-space model: it has no first stage"):
        reconstruct_tiny(tmp_path, synthetic_splits, f"--vqvae_checkpoint={tmp_path / 'vqvae' / 'checkpoint.pth'}")


@pytest.mark.slow
def test_ddpm_oods_start_points_on_request(tmp_path, synthetic_splits, capsys):
    import json

    from helpers.pipeline import tiny_reconstruct_args

    train_tiny(tmp_path, synthetic_splits)
    reconstruct.main(tiny_reconstruct_args(tmp_path, synthetic_splits, "--start_points=ddpm-ood-head"))
    results = pd.read_csv(tmp_path / "m" / "ood" / "results_in.csv")
    assert sorted(results["t"].unique()) == [100, 400, 700]  # reversed(PNDM timesteps)[1::3] of 0, 100, ..., 900
    manifest = json.loads((tmp_path / "m" / "ood" / "results_in.settings.json").read_text())
    assert manifest["grid_offset"] == 0 and manifest["start_t"] == [100, 400, 700]
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m", "--bootstrap=0",
                                                 "--no_figures"]))
    assert re.search(r"^AUC for m vs Stripes: \d+\.\d$", capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_simplex_noise_trains_and_scores(tmp_path, synthetic_splits):
    """--simplex_noise 1: the training target and the start noise of scoring are simplex fields; recorded in the
    config, the identity and what reconstruct.py checks."""
    from ddpm_ood.diffusion.noise import SimplexNoise
    from ddpm_ood.models.loading import ModelSource, load_model

    train_tiny(tmp_path, synthetic_splits, "--simplex_noise=1", "ldm.params.simplex.frequency=16")
    model = load_model(ModelSource.of("run", tmp_path / "m" / "best_model.pth"), torch.device("cpu"))
    assert model.schedule.noise == SimplexNoise(6, 0.8, 16.0) and model.parts["noise"]["frequency"] == 16.0
    reconstruct_tiny(tmp_path, synthetic_splits, "--simplex_noise=1")
    results = pd.read_csv(tmp_path / "m" / "ood" / "results_in.csv")
    assert np.isfinite(results["mse"]).all()
    with pytest.raises(ConfigError, match="--simplex_noise 0 but the model was trained with simplex_noise = 1"):
        reconstruct_tiny(tmp_path, synthetic_splits, "--simplex_noise=0")
