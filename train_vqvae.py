r"""Train a first stage (a VQ-VAE, or an AutoencoderKL) on in-distribution images, for a latent DDPM.

    python train_vqvae.py --output_dir=${output_root} --model_name=vqvae_fashionmnist \
        --training_ids=${data_root}/data_splits/FashionMNIST_train.csv \
        --validation_ids=${data_root}/data_splits/FashionMNIST_val.csv --is_grayscale=1 \
        --vqvae_num_channels=[64,128] --vqvae_num_res_channels=[64,128] --vqvae_embedding_dim=4 --n_epochs=50
    python train.py ... --vqvae_checkpoint=${output_root}/vqvae_fashionmnist   # the DDPM on its latents

Writes under OUTPUT_DIR/MODEL_NAME/: checkpoint.pth (resume state; re-running the same command
resumes), best_model.pth (lowest validation L1), final_model.pth and tensorboard/ (losses, and
reconstructions; mid-slices of volumes). Flag names follow ddpm-ood's train_vqvae.py. MONAI's
networks and losses; the perceptual loss is LPIPS with the real AlexNet (on volumes: over the
slices along the three axes).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import logging
from typing import Sequence

from ddpm_ood.cli import (add_settings, add_space_flags, add_training_run_flags, device_name, non_negative_int,
                          positive_float, positive_int, run_main, unit_fraction)
from ddpm_ood.models.autoencoders import FIRST_STAGES, TRAINABLE
from ddpm_ood.training.settings import AutoencoderSettings

logger = logging.getLogger("ddpm_ood")


def int_lists(depth: int):
    """An argparse type: a Python literal list of positive integers (depth 1) or of such lists (depth 2)."""
    def parse(text: str):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(f"expected a list such as {'[64,128]' if depth == 1 else '[[2,4,1,1]]'}, "
                                             f"got {text!r}") from None
        items = value if depth == 1 else [x for row in (value if isinstance(value, (list, tuple)) else [None])
                                          for x in (row if isinstance(row, (list, tuple)) else [None])]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(x, int) and x >= 0 for x in items):
            what = "non-negative integers" if depth == 1 else "lists of non-negative integers"
            raise argparse.ArgumentTypeError(f"expected a list of {what}, got {text!r}")
        return [list(row) for row in value] if depth == 2 else list(value)
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_run_flags(parser)  # --output_dir, --model_name, --training_ids, --validation_ids, --is_grayscale
    add_space_flags(parser)  # --spatial_dimension (ddpm-ood's default is 3; ours 2), --image_roi, --image_size
    parser.add_argument("--autoencoder", choices=TRAINABLE, default="vqvae",
                        help="The kind of first stage: vqvae (MONAI's VQVAE, as ddpm-ood) or autoencoderkl (MONAI's "
                             "AutoencoderKL). Default vqvae.")
    net = parser.add_argument_group("the network (ddpm-ood's flag names)")
    net.add_argument("--vqvae_num_channels", type=int_lists(1), default=[64, 128],
                     help="Channels per level; each level halves the size. Default [64,128] (a quarter-size latent).")
    net.add_argument("--vqvae_num_res_channels", type=int_lists(1), default=None,
                     help="Residual channels per level (default: --vqvae_num_channels).")
    net.add_argument("--vqvae_num_res_layers", type=positive_int, default=2, help="Residual layers per level. Default 2.")
    net.add_argument("--vqvae_downsample_parameters", type=int_lists(2), default=None,
                     help="(stride, kernel, dilation, padding) per level. Default [2,4,1,1] at every level.")
    net.add_argument("--vqvae_upsample_parameters", type=int_lists(2), default=None,
                     help="(stride, kernel, dilation, padding, output padding) per level. Default [2,4,1,1,0].")
    net.add_argument("--vqvae_num_embeddings", type=positive_int, default=256, help="Codebook size. Default 256.")
    net.add_argument("--vqvae_embedding_dim", type=positive_int, default=4,
                     help="Latent channels (the DDPM's in_channels). Default 4.")
    net.add_argument("--vqvae_commitment_cost", type=positive_float, default=0.25, help="Default 0.25.")
    net.add_argument("--vqvae_decay", type=unit_fraction, default=0.99, help="Codebook EMA decay. Default 0.99.")
    # Every training setting, default and help is declared once, in AutoencoderSettings.
    training = parser.add_argument_group("training")
    add_settings(training, AutoencoderSettings)
    training.add_argument("--vqvae_learning_rate", dest="lr", type=positive_float, default=argparse.SUPPRESS,
                          help="ddpm-ood's name of --lr.")
    parser.add_argument("--first_n", type=positive_int, default=None, help="Use only the first N training images.")
    parser.add_argument("--num_workers", type=non_negative_int, default=4, help="Threads reading image files.")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    from ddpm_ood.training.first_stage import AutoencoderTrainer
    from ddpm_ood.data.loading import check_image_shape, load_images, profile_training_set
    from ddpm_ood.runs.layout import RunFiles, image_digests, images_sha256
    from ddpm_ood.training.loop import refuse_another_kind_of_run
    from ddpm_ood.runs.lock import run_lock
    from ddpm_ood.utils.runtime import pick_device
    from ddpm_ood.training.settings import data_record
    from ddpm_ood.data.loading import preprocessing_record
    from ddpm_ood.training.first_stage import check_discriminator
    from ddpm_ood.utils.distributed import init_distributed, shutdown
    from ddpm_ood.utils.errors import ConfigError

    run_dir = args.output_dir / args.model_name
    dist, device = init_distributed(pick_device(args.device))  # torchrun: one process per device, DDP
    if args.batch_size < dist.world_size:
        raise ConfigError(f"--batch_size {args.batch_size} is the global batch; it must be at least the number of "
                          f"processes ({dist.world_size}).")
    space_args = dict(spatial_dimension=args.spatial_dimension, image_roi=args.image_roi, image_size=args.image_size,
                      intensity=args.intensity, num_workers=args.num_workers)
    train_set = load_images(args.training_ids, bool(args.is_grayscale), first_n=args.first_n, progress=dist.is_main,
                            **space_args)
    val_set = load_images(args.validation_ids, bool(args.is_grayscale), progress=dist.is_main, **space_args)
    check_image_shape(val_set, train_set.images.shape[1:], f"the training set {args.training_ids}", args.validation_ids)
    profile = profile_training_set(train_set, args.training_ids)  # refuses constant images
    channels = 1 if args.is_grayscale else 3
    network = FIRST_STAGES[args.autoencoder].network_from_flags(args, args.spatial_dimension, channels)
    FIRST_STAGES[args.autoencoder].check_network(network, train_set.images.shape[1:])  # before the run folder exists
    check_discriminator(train_set.images.shape[1:], args.adversarial_weight)
    settings = AutoencoderSettings(**{f.name: getattr(args, f.name) for f in AutoencoderSettings.flags()})
    # Each training image's digest is kept, so that a test set holding any of them is recognised when scored.
    data = {name: data_record(path, images_sha256(split.images), len(split), args.first_n if name == "training"
                              else None, image_digests(split.images) if name == "training" else None,
                              profile if name == "training" else None)
            for name, path, split in (("training", args.training_ids, train_set),
                                      ("validation", args.validation_ids, val_set))}
    perceptual = None
    if args.perceptual_weight:
        from ddpm_ood.metrics.distances import LPIPSMetric

        perceptual = LPIPSMetric()
    # One lock per run folder (train.py takes the same one); under torchrun rank 0 holds it and writes the files.
    with run_lock(run_dir, "train") if dist.is_main else contextlib.nullcontext():
        refuse_another_kind_of_run(RunFiles(run_dir), "first_stage_checkpoint")  # a DDPM's folder is not ours
        trainer = AutoencoderTrainer(args.autoencoder, network, train_set.images, val_set.images, settings, run_dir,
                                     device, data, perceptual, preprocessing_record(args.spatial_dimension,
                                     args.image_roi, args.image_size, args.intensity), dist)
        if dist.is_main:
            logger.info("first stage: %s with %.2fM parameters on %s%s; --batch_size %d is the global batch",
                        args.autoencoder, sum(p.numel() for p in trainer.model.parameters()) / 1e6, device,
                        f" x {dist.world_size} processes" if dist.active else "", args.batch_size)
        summary = trainer.run()
    shutdown(dist)
    if dist.is_main:
        logger.info("done: %d epochs, best validation L1 %.5f; files in %s", summary["epochs"],
                    summary["best_val_loss"], run_dir)
    return summary


if __name__ == "__main__":
    run_main(main, parse_args)
