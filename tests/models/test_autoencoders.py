"""The contract every first-stage kind keeps (``ddpm_ood.models.autoencoders.FIRST_STAGES``), run over
the registry as the detectors' contract is: a kind added there is tested here with no new line."""
from __future__ import annotations

import pytest
import torch

import train_vqvae
from ddpm_ood.models.autoencoders import FIRST_STAGES, TRAINABLE, first_stage_kind
from ddpm_ood.models.first_stage import LatentSpace, build_autoencoder, decode_raw, encode_raw
from ddpm_ood.models.monai_models import latent_image_shape
from ddpm_ood.utils.errors import ConfigError

CASES = [(name, dims) for name in FIRST_STAGES for dims in (2, 3) if not (name == "diffusers-vqmodel" and dims == 3)]


def images(dims: int, channels: int = 1, n: int = 2, size: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, channels, *(size,) * dims)


@pytest.mark.parametrize("name,dims", CASES)
def test_encode_and_decode_shapes_follow_the_downsampling(name, dims):
    kind = FIRST_STAGES[name]
    network = kind.example_network(dims, 1)
    torch.manual_seed(0)
    module = build_autoencoder(name, network).eval()
    x = images(dims)
    with torch.no_grad():
        z = encode_raw(module, name, x)
        again = encode_raw(module, name, x)
        y = decode_raw(module, name, z)
    factor = kind.downsampling(network)
    assert z.shape[0] == 2 and z.shape[2:] == tuple(16 // factor for _ in range(dims))
    assert torch.equal(z, again), "encoding must not depend on a draw"
    assert y.shape == x.shape
    assert latent_image_shape(name, network, z.shape[1:]) == tuple(x.shape[1:])
    space = LatentSpace(module, name, network, x.shape[1:], scale=2.0, pad=1)
    assert space.encode(x).shape[2:] == tuple(d + 2 for d in z.shape[2:])
    assert torch.allclose(space.decode(space.encode(x)), y, atol=1e-5)


@pytest.mark.parametrize("name", TRAINABLE)
def test_trainable_kinds_build_from_train_vqvaes_flags_and_train(name):
    args = train_vqvae.parse_args(["--output_dir=x", "--model_name=m", "--training_ids=a", "--validation_ids=b",
                                   f"--autoencoder={name}", "--vqvae_num_channels=[8,8]", "--vqvae_embedding_dim=3"])
    kind = FIRST_STAGES[name]
    network = kind.network_from_flags(args, 2, 3)
    assert (network["in_channels"], network["out_channels"]) == (3, 3)
    torch.manual_seed(0)
    module = kind.build(network).train()
    x = images(2, channels=3)
    recon, regulariser = kind.training_forward(module, x, kl_weight=1e-6)
    assert recon.shape == x.shape and regulariser.dim() == 0 and torch.isfinite(regulariser)
    (recon.mean() + regulariser).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_trainable_kinds_are_train_vqvaes_choices_and_others_are_refused():
    base = ["--output_dir=x", "--model_name=m", "--training_ids=a", "--validation_ids=b"]
    for name in FIRST_STAGES:
        if name in TRAINABLE:
            assert train_vqvae.parse_args(base + [f"--autoencoder={name}"]).autoencoder == name
        else:
            with pytest.raises(SystemExit):
                train_vqvae.parse_args(base + [f"--autoencoder={name}"])
            with pytest.raises(ConfigError, match="cannot train"):
                FIRST_STAGES[name].network_from_flags(None, 2, 1)


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown first stage 'vae'; known: vqvae, autoencoderkl"):
        first_stage_kind("vae")


def test_a_vqvae_downsamples_by_its_strides():
    """ddpm-ood's --vqvae_downsample_parameters may use other strides than 2: the latent size follows them."""
    kind = FIRST_STAGES["vqvae"]
    network = {**kind.example_network(2, 1), "downsample_parameters": [[2, 4, 1, 1], [1, 3, 1, 1]],
               "upsample_parameters": [[1, 3, 1, 1, 0], [2, 4, 1, 1, 0]]}
    assert kind.downsampling(network) == 2
    torch.manual_seed(0)
    with torch.no_grad():
        z = encode_raw(build_autoencoder("vqvae", network).eval(), "vqvae", images(2))
    assert z.shape[2:] == (8, 8)


@pytest.mark.parametrize("flags,match", [
    (["--vqvae_num_channels=[0,8]"], "at least one channel at every level"),
    (["--vqvae_downsample_parameters=[[2,4,1],[2,4,1]]"], r"each level takes 4 integers"),
    (["--vqvae_upsample_parameters=[[2,4,1,1],[2,4,1,1]]"], r"each level takes 5 integers"),
    (["--image_size=2", "--spatial_dimension=3"], r"each side must be a multiple of 4"),
    (["--vqvae_num_channels=[8,8,8]"], r"Images of \(28, 28\) do not fit .* multiple of 8"),
])
def test_train_vqvae_checks_its_network_against_the_images_before_any_work(tmp_path, synthetic_splits, flags,
                                                                           match):
    """A network that cannot take the images is refused in one line naming the flag, and no run folder
    is left behind (they were tracebacks from torch or MONAI, after the folder was made)."""
    if "--spatial_dimension=3" in flags:
        import numpy as np

        from conftest import write_split
        volumes = []
        for i in range(3):
            volumes.append(tmp_path / f"v{i}.npy")
            np.save(volumes[-1], np.random.default_rng(i).random((8, 8, 8)).astype(np.float32))
        synthetic_splits = {"train": write_split(tmp_path / "vt.csv", volumes),
                            "val": write_split(tmp_path / "vv.csv", volumes)}
    args = train_vqvae.parse_args([f"--output_dir={tmp_path / 'out'}", "--model_name=vq",
                                   f"--training_ids={synthetic_splits['train']}",
                                   f"--validation_ids={synthetic_splits['val']}", "--num_workers=0",
                                   "--perceptual_weight=0", *flags])
    with pytest.raises(ConfigError, match=match):
        train_vqvae.main(args)
    assert not (tmp_path / "out").exists()
