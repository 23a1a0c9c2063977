"""MONAI and latent models as sources (issue 25, part 6): diffusers' LDMPipeline, a MONAI model-zoo
bundle and a ddpm-ood run, each checked against the library's own forward passes on random-weight
models of the real configs' kinds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
diffusers = pytest.importorskip("diffusers")

from monai.networks.nets import VQVAE, AutoencoderKL, DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDPMScheduler  # noqa: E402

from ddpm_ood.models.loading import DdpmOodRun, DiffusersModel, MonaiBundle, load_model, pretrained_source  # noqa: E402
from ddpm_ood.utils.errors import ConfigError  # noqa: E402

ATOL = 1e-6


def check_eps(model, unet_call, latent_shape, schedule_alphas=None):
    torch.manual_seed(1)
    z, t = torch.randn(2, *latent_shape), torch.tensor([3, 640])
    torch.testing.assert_close(model.model_fn(z, t), unet_call(z, t), rtol=0, atol=ATOL)
    if schedule_alphas is not None:
        torch.testing.assert_close(torch.from_numpy(model.schedule.alphas_cumprod).float(), schedule_alphas, rtol=0,
                                   atol=1e-7)


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    """CompVis/ldm-celebahq-256's layout (model_index.json, vqvae/, unet/, scheduler/), tiny and random."""
    folder = tmp_path_factory.mktemp("ldm") / "ldm"
    torch.manual_seed(0)
    vqvae = diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=3,
                              num_vq_embeddings=16, norm_num_groups=4, sample_size=16, scaling_factor=0.7)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195)
    diffusers.LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder, vqvae.eval(), unet.eval(), scheduler


def test_an_ldm_pipeline_is_a_latent_model_matching_diffusers(ldm_folder):
    folder, vqvae, unet, scheduler = ldm_folder
    model = load_model(DiffusersModel(str(folder)))
    assert model.image_space.shape == (3, 16, 16) and model.parts["first_stage"]["autoencoder"] == "diffusers-vqmodel"
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        latents = vqvae.encode(images * 2 - 1).latents
        torch.testing.assert_close(model.space.encode(images), latents * 0.7, rtol=0, atol=ATOL)
        z = latents * 0.7  # the model's latents; LDMPipeline decodes them as decode(z / scaling_factor)
        decoded = (vqvae.decode(z / 0.7).sample + 1) / 2
        torch.testing.assert_close(model.space.decode(z), decoded, rtol=0, atol=ATOL)
        check_eps(model, lambda z, t: unet(z, t).sample, (3, 8, 8), scheduler.alphas_cumprod)
    # The same model given as its unet/ folder, and another first stage: another identity.
    assert load_model(DiffusersModel(str(folder / "unet"))).identity == model.identity


def monai_unet(spatial_dims=2, channels=3):
    torch.manual_seed(2)
    return DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=channels, out_channels=channels, channels=(8, 16),
                              attention_levels=(False, True), num_res_blocks=1, norm_num_groups=8,
                              num_head_channels=8).eval()


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory):
    """A MONAI model-zoo bundle as brats_mri_generative_diffusion lays it out (MONAI Generative's targets
    and argument names, @ references), 2D, tiny and random."""
    folder = tmp_path_factory.mktemp("bundle") / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.manual_seed(3)
    autoencoder = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 8), latent_channels=3,
                                num_res_blocks=1, norm_num_groups=4, attention_levels=(False, False),
                                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False).eval()
    unet = monai_unet()
    torch.save(unet.state_dict(), folder / "models" / "model.pt")
    torch.save(autoencoder.state_dict(), folder / "models" / "model_autoencoder.pt")
    config = {
        "spatial_dims": 2, "image_channels": 1, "latent_channels": 3, "latent_shape": ["@latent_channels", 8, 8],
        "scale_factor": 0.5,
        "autoencoder_def": {"_target_": "generative.networks.nets.AutoencoderKL", "spatial_dims": "@spatial_dims",
                            "in_channels": "@image_channels", "out_channels": "@image_channels",
                            "latent_channels": "@latent_channels", "num_channels": [8, 8], "num_res_blocks": 1,
                            "norm_num_groups": 4, "attention_levels": [False, False],
                            "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False},
        "network_def": {"_target_": "generative.networks.nets.DiffusionModelUNet", "spatial_dims": "@spatial_dims",
                        "in_channels": "@latent_channels", "out_channels": "@latent_channels", "num_channels": [8, 16],
                        "attention_levels": [False, True], "num_res_blocks": 1, "norm_num_groups": 8,
                        "num_head_channels": 8},
        "noise_scheduler": {"_target_": "generative.networks.schedulers.DDIMScheduler", "num_train_timesteps": 1000,
                            "beta_start": 0.0015, "beta_end": 0.0195, "schedule": "scaled_linear_beta",
                            "clip_sample": False},
        "device": "$torch.device('cpu')",  # an expression nothing we build refers to: never run
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    return folder, autoencoder, unet


def test_a_monai_bundle_matches_monais_own_forward_passes(bundle_folder):
    folder, autoencoder, unet = bundle_folder
    assert isinstance(pretrained_source(str(folder)), MonaiBundle)
    model = load_model(MonaiBundle(folder))
    assert model.image_space.shape == (1, 16, 16)
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        mean = autoencoder.encode(images)[0]
        torch.testing.assert_close(model.space.encode(images), mean * 0.5, rtol=0, atol=ATOL)
        torch.testing.assert_close(model.space.decode(mean * 0.5), autoencoder.decode(mean), rtol=0, atol=ATOL)
        expected = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                                 beta_end=0.0195).alphas_cumprod
        check_eps(model, lambda z, t: unet(z, timesteps=t), (3, 8, 8), expected)


def test_a_bundle_expression_in_what_we_build_is_refused(bundle_folder, tmp_path):
    import shutil

    folder, _, _ = bundle_folder
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "configs" / "inference.json").read_text())
    config["network_def"]["num_res_blocks"] = "$int('1')"
    (edited / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="is a Python expression; this loader runs none"):
        load_model(MonaiBundle(edited))


@pytest.fixture(scope="module")
def ddpm_ood_runs(tmp_path_factory):
    """ddpm-ood's run layout: a VQ-VAE run (vqvae_config.json, checkpoint.pth) and a latent DDPM run on it
    (checkpoint.pth with model_state_dict; args.json, its train_ddpm.py arguments)."""
    root = tmp_path_factory.mktemp("ddpm_ood")
    vq_args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "num_channels": [8, 8],
               "num_res_channels": [8, 8], "num_res_layers": 1, "downsample_parameters": [[2, 4, 1, 1]] * 2,
               "upsample_parameters": [[2, 4, 1, 1, 0]] * 2, "num_embeddings": 16, "embedding_dim": 3}
    (root / "vqvae").mkdir()
    (root / "vqvae" / "vqvae_config.json").write_text(json.dumps(vq_args))
    torch.manual_seed(4)
    vqvae = VQVAE(**{**{k: v for k, v in vq_args.items() if k != "num_channels"}, "channels": [8, 8]}).eval()
    torch.save({"model_state_dict": vqvae.state_dict(), "epoch": 3}, root / "vqvae" / "checkpoint.pth")
    (root / "ddpm").mkdir()
    torch.manual_seed(5)
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=3, channels=(128, 256, 256),
                              attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=256).eval()
    torch.save({"model_state_dict": unet.state_dict(), "epoch": 7}, root / "ddpm" / "checkpoint.pth")
    args = {"model_type": "small", "spatial_dimension": 2, "is_grayscale": 1, "image_size": 16,
            "prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.0015,
            "beta_end": 0.0195, "vqvae_checkpoint": str(root / "vqvae" / "checkpoint.pth"), "latent_pad": None,
            "b_scale": 1, "simplex_noise": 0}
    (root / "ddpm" / "args.json").write_text(json.dumps(args))
    return root, vqvae, unet


def test_a_ddpm_ood_run_matches_monais_forward_passes(ddpm_ood_runs):
    root, vqvae, unet = ddpm_ood_runs
    assert isinstance(pretrained_source(str(root / "ddpm")), DdpmOodRun)
    model = load_model(DdpmOodRun(root / "ddpm"))
    assert model.image_space.shape == (1, 16, 16) and model.parts["first_stage"]["autoencoder"] == "vqvae"
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        codes = vqvae.encode_stage_2_inputs(images)
        torch.testing.assert_close(model.space.encode(images), codes, rtol=0, atol=ATOL)
        torch.testing.assert_close(model.space.decode(codes), vqvae.decode_stage_2_outputs(codes), rtol=0, atol=ATOL)
        scheduler = DDPMScheduler(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
        a = scheduler.alphas_cumprod

        def eps_from_v(z, t):  # v = sqrt(a) eps - sqrt(1 - a) x  =>  eps = sqrt(a) v + sqrt(1 - a) x
            v = unet(z, timesteps=t)
            s, r = a[t].sqrt().reshape(-1, 1, 1, 1), (1 - a[t]).sqrt().reshape(-1, 1, 1, 1)
            return s * v + r * z
        check_eps(model, eps_from_v, (3, 4, 4), a)


def test_a_latent_ddpm_ood_run_without_its_first_stage_is_refused(ddpm_ood_runs, tmp_path):
    import shutil

    root, _, _ = ddpm_ood_runs
    shutil.copytree(root / "ddpm", tmp_path / "ddpm")
    args = json.loads((tmp_path / "ddpm" / "args.json").read_text())
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps({**args, "vqvae_checkpoint": str(tmp_path / "gone.pth")}))
    with pytest.raises(ConfigError, match="the model is latent, but its first stage's config .* cannot be read"):
        load_model(DdpmOodRun(tmp_path / "ddpm"))


@pytest.mark.slow
def test_reconstruct_and_score_with_a_pretrained_latent_pipeline_and_a_bundle(ldm_folder, bundle_folder, tmp_path,
                                                                              capsys):
    """--pretrained takes an LDMPipeline folder and a MONAI bundle: scored in image space, every detector."""
    import ood_detection
    import reconstruct
    from conftest import make_images, write_split
    from ddpm_ood.api import OODDetector
    from helpers.diffusers_fakes import colour_split

    colour = {"val": colour_split(tmp_path / "val", "Blobs_val", 10, 0, "blobs"),
              "in": colour_split(tmp_path / "in", "Blobs_test", 4, 1, "blobs"),
              "ood": colour_split(tmp_path / "ood", "Stripes_test", 4, 2, "stripes")}
    gray = {"val": write_split(tmp_path / "g" / "GBlobs_val.csv", make_images(tmp_path / "gv", "b", 10, 0, shape=(16, 16))),
            "in": write_split(tmp_path / "g" / "GBlobs_test.csv", make_images(tmp_path / "gi", "b", 4, 1, shape=(16, 16))),
            "ood": write_split(tmp_path / "g" / "GStripes_test.csv",
                               make_images(tmp_path / "go", "s", 4, 2, "stripes", shape=(16, 16)))}
    for name, folder, splits in (("ldm", ldm_folder[0], colour), ("bundle", bundle_folder[0], gray)):
        reconstruct.main(reconstruct.parse_args([
            f"--output_dir={tmp_path / 'runs'}", f"--model_name={name}", f"--pretrained={folder}",
            f"--validation_ids={splits['val']}", f"--in_ids={splits['in']}", f"--out_ids={splits['ood']}",
            "--num_inference_steps=10", "--inference_skip_factor=4", "--metrics=mse", "--batch_size=4",
            "--num_workers=0", "--detectors=recon,denoise", "--denoise_levels=2"]))
        ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path / 'runs'}", f"--model_name={name}"]))
        assert f"AUC for {name} vs {'Stripes' if name == 'ldm' else 'GStripes'}: " in capsys.readouterr().out
        scores = OODDetector.load(tmp_path / "runs" / name, device="cpu").score(torch.rand(2, *(
            (3, 16, 16) if name == "ldm" else (1, 16, 16))))
        assert scores.shape == (2,)


@pytest.mark.parametrize("pad", [1, [1], [1, 1, 1, 1]])
def test_a_ddpm_ood_latent_pad_may_be_an_int_or_a_list(ddpm_ood_runs, tmp_path, pad):
    """args.json keeps latent_pad as an int in some runs and a list in others (an int was a TypeError)."""
    import shutil

    root, _, _ = ddpm_ood_runs
    shutil.copytree(root / "ddpm", tmp_path / "ddpm")
    args = json.loads((tmp_path / "ddpm" / "args.json").read_text())
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps({**args, "latent_pad": pad}))
    model = load_model(DdpmOodRun(tmp_path / "ddpm"))
    assert model.space.pad == 1 and model.space.encode(torch.rand(2, 1, 16, 16)).shape == (2, 3, 6, 6)


def test_a_ddpm_ood_run_with_b_scale_and_snr_shift_scores_as_that_code_would(ddpm_ood_runs, tmp_path):
    """b_scale: the latents times b before noising, the *decoded image* divided by b (ddpm-ood's
    reconstruct.py); snr_shift: the schedule's SNR times it; both recorded for reconstruct.py's checks."""
    import shutil

    from ddpm_ood.diffusion.ddpm import shift_snr

    root, vqvae, _ = ddpm_ood_runs
    shutil.copytree(root / "ddpm", tmp_path / "ddpm")
    args = json.loads((tmp_path / "ddpm" / "args.json").read_text())
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps({**args, "b_scale": 2.0, "snr_shift": 0.5}))
    model = load_model(DdpmOodRun(tmp_path / "ddpm"))
    plain = load_model(DdpmOodRun(root / "ddpm"))
    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        codes = vqvae.encode_stage_2_inputs(images)
        torch.testing.assert_close(model.space.encode(images), 2 * codes, rtol=0, atol=ATOL)
        torch.testing.assert_close(model.space.decode(2 * codes), vqvae.decode_stage_2_outputs(2 * codes) / 2,
                                   rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.schedule.alphas_cumprod, shift_snr(plain.schedule.alphas_cumprod, 0.5),
                               rtol=1e-12)
    assert model.identity != plain.identity and model.info["diffusion"]["b_scale"] == 2.0
    args = {**args, "vqvae_checkpoint": None, "is_grayscale": 1, "b_scale": 3.0}  # a pixel model: the range [0, b]
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps(args))
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(128, 256, 256),
                              attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=256)
    torch.save({"model_state_dict": unet.state_dict()}, tmp_path / "ddpm" / "checkpoint.pth")
    pixel = load_model(DdpmOodRun(tmp_path / "ddpm"))
    torch.testing.assert_close(pixel.space.encode(images), 3 * images)


def test_a_ddpm_ood_run_with_simplex_noise_draws_its_noise(ddpm_ood_runs, tmp_path):
    """simplex_noise = 1: AnoDDPM's noise with ddpm-ood's defaults (6 octaves, persistence 0.8, frequency 64),
    part of the identity and of what reconstruct.py checks."""
    import shutil

    from ddpm_ood.diffusion.noise import SimplexNoise

    root, _, _ = ddpm_ood_runs
    shutil.copytree(root / "ddpm", tmp_path / "ddpm")
    args = json.loads((tmp_path / "ddpm" / "args.json").read_text())
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps({**args, "simplex_noise": 1}))
    model = load_model(DdpmOodRun(tmp_path / "ddpm"))
    assert model.schedule.noise == SimplexNoise(6, 0.8, 64.0) and model.parts["noise"]["kind"] == "simplex"
    assert model.identity != load_model(DdpmOodRun(root / "ddpm")).identity
    assert model.info["diffusion"]["simplex_noise"] == 1


def test_3d_models_whose_size_is_not_recorded_are_3d(tmp_path, ddpm_ood_runs):
    """Issue 33, case 11: a 3D bundle without a latent shape, and a 3D ddpm-ood run without image_size, were taken
    as 2D, and the two errors sent the user back and forth about --spatial_dimension."""
    import shutil

    folder = tmp_path / "bundle3d"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    unet = DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16),
                              attention_levels=(False, True), num_res_blocks=1, norm_num_groups=8, num_head_channels=8)
    torch.save(unet.state_dict(), folder / "models" / "model.pt")
    (folder / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 1, "channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1,
                        "norm_num_groups": 8, "num_head_channels": 8},
        "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000}}))
    bundle = load_model(MonaiBundle(folder))
    assert bundle.spatial_dims == 3 and bundle.image_space.describe() == "(1, D, H, W)"
    bundle.check_spatial_dimension(3)
    with pytest.raises(ConfigError, match="--spatial_dimension 2, but the model .* is 3D"):
        bundle.check_spatial_dimension(2)
    with pytest.raises(Exception, match="takes \\(1, D, H, W\\): give it volumes \\(--spatial_dimension 3\\)"):
        bundle.image_space.check(torch.rand(2, 1, 8, 8), "", "bundle3d")  # 2D images for a 3D model
    bundle.image_space.check(torch.rand(2, 1, 8, 8, 8), "", "bundle3d")

    root, _, _ = ddpm_ood_runs
    shutil.copytree(root / "ddpm", tmp_path / "ddpm")
    args = json.loads((tmp_path / "ddpm" / "args.json").read_text())
    args = {**args, "spatial_dimension": 3, "image_size": None, "vqvae_checkpoint": None}
    (tmp_path / "ddpm" / "args.json").write_text(json.dumps(args))
    unet3d = DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(128, 256, 256),
                                attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=256)
    torch.save({"model_state_dict": unet3d.state_dict()}, tmp_path / "ddpm" / "checkpoint.pth")
    assert load_model(DdpmOodRun(tmp_path / "ddpm")).spatial_dims == 3
