"""Every kind of first stage (the autoencoder of a latent model), in one registry.

``FIRST_STAGES[kind]`` says how that kind is built from the constructor arguments a file records
(``build``), how images in [0, 1] become unscaled latents and back (``encode``, ``decode``), how
much it downsamples (``downsampling``), and, for the kinds ``train_vqvae.py`` trains, the network
its flags ask for (``network_from_flags``) and its reconstruction with the regulariser of its
loss (``training_forward``). Adding a kind is one :class:`FirstStageKind` subclass and one entry
here; ``tests/models/test_autoencoders.py`` runs the same contract over every entry.

Imports nothing heavy until used: ``train_vqvae.py --help`` reads the trainable kinds' names.
"""
from __future__ import annotations

import math

from ddpm_ood.utils.errors import ConfigError


def as_tuples(network: dict) -> dict:
    """Lists (as JSON and checkpoints keep them) -> tuples (as MONAI's constructors take them)."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in network.items()}


def monai_nets():
    try:
        from monai.networks import nets
    except ImportError as err:  # MONAI is in requirements.txt; a bare install may lack it
        raise ConfigError(f"A first stage needs MONAI ({err}); pip install -r requirements.txt.") from None
    return nets


class FirstStageKind:
    """One kind of first stage. ``trainable``: train_vqvae.py can train it (``--autoencoder NAME``)."""

    name = ""
    trainable = False

    def build(self, network: dict):
        raise NotImplementedError

    def encode(self, module, images):
        """Images in [0, 1] (N, C, *spatial) -> unscaled latents (N, C', *spatial')."""
        raise NotImplementedError

    def decode(self, module, latents):
        """Unscaled latents -> images (in [0, 1] for a well-trained first stage; not clamped)."""
        raise NotImplementedError

    def downsampling(self, network: dict) -> int:
        """How many image pixels one latent pixel spans along each spatial axis."""
        raise NotImplementedError

    def network_from_flags(self, args, spatial_dims: int, channels: int) -> dict:
        """The constructor arguments train_vqvae.py's flags (ddpm-ood's names) ask for."""
        raise ConfigError(f"train_vqvae.py cannot train a {self.name} first stage.")

    def training_forward(self, module, images, kl_weight: float):
        """The reconstruction and the regulariser of the training loss (a 0-d tensor)."""
        raise ConfigError(f"train_vqvae.py cannot train a {self.name} first stage.")

    def example_network(self, spatial_dims: int, channels: int) -> dict:
        """A small network of this kind (the registry's contract test builds one)."""
        raise NotImplementedError

    def check_network(self, network: dict, image_shape) -> None:
        """Before any work: the network fits images of ``image_shape`` (C, *spatial), or a ConfigError
        says which flag to change. A dry run (one blank image through encode and decode) catches what
        the explicit checks of a kind do not name."""
        import torch

        sides = [int(d) for d in image_shape[1:]]
        factor = self.downsampling(network)
        if any(side < factor or side % factor for side in sides):
            raise ConfigError(f"Images of {tuple(sides)} do not fit a first stage that divides every side by "
                              f"{factor}: each side must be a multiple of {factor} (choose --image_size or "
                              "--image_roi so, or fewer levels in --vqvae_num_channels).")
        try:
            module = self.build(network).eval()
            with torch.no_grad():
                out = self.decode(module, self.encode(module, torch.zeros(1, *[int(d) for d in image_shape])))
        except ConfigError:
            raise
        except Exception as err:  # MONAI and torch say it in many ways
            raise ConfigError(f"The first stage's network ({self.name}) does not run on images of "
                              f"{tuple(int(d) for d in image_shape)}: {type(err).__name__}: {str(err)[:200]}. Check "
                              "the --vqvae_* flags.") from None
        if tuple(out.shape[1:]) != tuple(int(d) for d in image_shape):
            raise ConfigError(f"The first stage's network turns images of {tuple(image_shape)} into "
                              f"{tuple(out.shape[1:])}: check --vqvae_downsample_parameters and "
                              "--vqvae_upsample_parameters (they must undo each other).")


class MonaiVQVAE(FirstStageKind):
    """MONAI's VQVAE, as ddpm-ood trains it. Encoding quantises (``encode_stage_2_inputs``) and
    decoding quantises again (``decode_stage_2_outputs``), as ddpm-ood."""

    name, trainable = "vqvae", True

    def build(self, network):
        return monai_nets().VQVAE(**as_tuples(network))

    def encode(self, module, images):
        return module.encode_stage_2_inputs(images)

    def decode(self, module, latents):
        return module.decode_stage_2_outputs(latents)

    def downsampling(self, network):
        strides = [p[0] for p in network.get("downsample_parameters") or []]
        levels = len(network.get("channels", network.get("num_channels", [0])))
        return math.prod(strides) if strides else 2 ** levels

    def network_from_flags(self, args, spatial_dims, channels):
        num_channels = list(args.vqvae_num_channels)
        num_res_channels = list(args.vqvae_num_res_channels or num_channels)
        if not all(num_channels) or not all(num_res_channels):
            raise ConfigError(f"--vqvae_num_channels {num_channels} and --vqvae_num_res_channels {num_res_channels} "
                              "need at least one channel at every level.")
        if len(num_res_channels) != len(num_channels):
            raise ConfigError(f"--vqvae_num_res_channels {num_res_channels} needs one entry per level of "
                              f"--vqvae_num_channels {num_channels}.")
        levels = len(num_channels)
        downsample = [list(p) for p in (args.vqvae_downsample_parameters or [[2, 4, 1, 1]] * levels)]
        upsample = [list(p) for p in (args.vqvae_upsample_parameters or [[2, 4, 1, 1, 0]] * levels)]
        if len(downsample) != levels or len(upsample) != levels:
            raise ConfigError(f"--vqvae_downsample_parameters and --vqvae_upsample_parameters need {levels} entries, "
                              "one per level of --vqvae_num_channels.")
        for flag, rows, size, names in (
                ("--vqvae_downsample_parameters", downsample, 4, "stride, kernel, dilation, padding"),
                ("--vqvae_upsample_parameters", upsample, 5, "stride, kernel, dilation, padding, output padding")):
            if any(len(row) != size for row in rows) or any(row[0] < 1 or row[1] < 1 for row in rows):
                raise ConfigError(f"{flag} {rows}: each level takes {size} integers ({names}), with a stride and "
                                  "a kernel of at least 1.")
        return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels,
                "channels": num_channels, "num_res_channels": num_res_channels,
                "num_res_layers": args.vqvae_num_res_layers, "downsample_parameters": downsample,
                "upsample_parameters": upsample, "num_embeddings": args.vqvae_num_embeddings,
                "embedding_dim": args.vqvae_embedding_dim, "commitment_cost": args.vqvae_commitment_cost,
                "decay": args.vqvae_decay}

    def training_forward(self, module, images, kl_weight):
        return module(images)  # the reconstruction and the quantisation loss

    def example_network(self, spatial_dims, channels):
        return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels, "channels": [8, 8],
                "num_res_channels": [8, 8], "num_res_layers": 1, "downsample_parameters": [[2, 4, 1, 1]] * 2,
                "upsample_parameters": [[2, 4, 1, 1, 0]] * 2, "num_embeddings": 16, "embedding_dim": 2}


class MonaiAutoencoderKL(FirstStageKind):
    """MONAI's AutoencoderKL (no attention: small first stages for small images). Encoding gives the
    posterior's mean, never a sample: a score must not depend on a draw."""

    name, trainable = "autoencoderkl", True

    def build(self, network):
        return monai_nets().AutoencoderKL(**as_tuples(network))

    def encode(self, module, images):
        return module.encode(images)[0]

    def decode(self, module, latents):
        return module.decode(latents)

    def downsampling(self, network):
        return 2 ** (len(network.get("channels", network.get("num_channels", [0]))) - 1)

    def network_from_flags(self, args, spatial_dims, channels):
        num_channels = list(args.vqvae_num_channels)
        groups = math.gcd(*num_channels) if len(num_channels) > 1 else num_channels[0]
        return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels,
                "channels": num_channels, "latent_channels": args.vqvae_embedding_dim,
                "num_res_blocks": args.vqvae_num_res_layers, "attention_levels": [False] * len(num_channels),
                "norm_num_groups": min(32, groups), "with_encoder_nonlocal_attn": False,
                "with_decoder_nonlocal_attn": False}

    def training_forward(self, module, images, kl_weight):
        import torch

        recon, mu, sigma = module(images)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1).mean()
        return recon, kl_weight * kl

    def example_network(self, spatial_dims, channels):
        return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels, "channels": [8, 8],
                "latent_channels": 2, "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 8,
                "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}


class DiffusersVQModel(FirstStageKind):
    """diffusers' VQModel, an LDMPipeline's first stage: it encodes images in [-1, 1] and quantises
    when it decodes, as the pipeline does. Read from pipelines, not trained here."""

    name = "diffusers-vqmodel"

    def build(self, network):
        from diffusers import VQModel

        return VQModel.from_config(network)

    def encode(self, module, images):
        return module.encode(images * 2 - 1).latents

    def decode(self, module, latents):
        return (module.decode(latents).sample + 1) / 2

    def downsampling(self, network):
        return 2 ** (len(network.get("block_out_channels", [64])) - 1)

    def example_network(self, spatial_dims, channels):
        if spatial_dims != 2:
            raise ConfigError("diffusers' VQModel is 2D only.")
        return {"in_channels": channels, "out_channels": channels, "block_out_channels": [8, 8],
                "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                "layers_per_block": 1, "latent_channels": 2, "num_vq_embeddings": 16, "norm_num_groups": 4,
                "sample_size": 16}


FIRST_STAGES: dict[str, FirstStageKind] = {kind.name: kind for kind in (MonaiVQVAE(), MonaiAutoencoderKL(),
                                                                        DiffusersVQModel())}
TRAINABLE = tuple(name for name, kind in FIRST_STAGES.items() if kind.trainable)


def first_stage_kind(name: str) -> FirstStageKind:
    if name not in FIRST_STAGES:
        raise ConfigError(f"Unknown first stage {name!r}; known: {', '.join(FIRST_STAGES)}.")
    return FIRST_STAGES[name]
