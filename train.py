r"""Train the DDPM on in-distribution images. ``train_ddpm.py`` (ddpm-ood's later name) is this program.

    python train.py --output_dir=${output_root} --model_name=fashionmnist \
        --training_ids=${data_root}/data_splits/FashionMNIST_train.csv \
        --validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \
        --is_grayscale=1 --config_diffusion_file=src/configs/diffusion/diffusion_grayscale.yaml --n_epochs=300

Writes under OUTPUT_DIR/MODEL_NAME/: config.yaml, checkpoint.pth (resume state; re-running
the same command resumes), best_model.pth (lowest validation loss), final_model.pth and
tensorboard/. Extra ``key=value`` arguments override the config, e.g.
``ldm.params.unet_config.params.model_channels=128``.

``torchrun --nproc_per_node=N train.py <the same flags>`` trains on N processes with DDP
(--batch_size stays the global batch, split over the processes: ddpm-ood's was per process, so its
--batch_size=B on N GPUs is --batch_size=N*B here); see docs/distributed.md.

ddpm-ood's later flags (--beta_schedule, --beta_start, --beta_end, --prediction_type, --model_type,
--b_scale, --snr_shift, --checkpoint_every, --cache_data, --vqvae_checkpoint=<run>/checkpoint.pth) are
taken with their meanings there; docs/ddpm_ood_later.md lists them.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Sequence

from ddpm_ood.cli import (add_diffusion_flags, add_settings, add_space_flags, add_training_run_flags, device_name,
                          non_negative_int, positive_int, run_main)
from ddpm_ood.training.settings import TrainSettings

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_run_flags(parser)  # --output_dir, --model_name, --training_ids, --validation_ids, --is_grayscale
    parser.add_argument("--config_diffusion_file", type=Path, default=None,
                        help="Model/schedule YAML (default: src/configs/diffusion/diffusion_{grayscale,colour}.yaml). "
                             "An existing run keeps its config: a different one is refused.")
    add_settings(parser, TrainSettings)  # the training settings: defaults and help in src/ddpm_ood/training/settings.py
    parser.add_argument("--num_workers", type=non_negative_int, default=4,
                        help="Threads reading image files at start-up; the data then stays in memory. Default 4.")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--first_n", type=positive_int, default=None, help="Use only the first N training images.")
    add_space_flags(parser)
    add_diffusion_flags(parser, training=True)
    parser.add_argument("--vqvae_checkpoint", default=None, metavar="RUN_OR_FILE",
                        help="Train a latent DDPM: on the latents of this first stage (a run folder of train_vqvae.py "
                             "or its best_model.pth). The UNet's in/out channels become the latent channels; the "
                             "first stage is kept inside every model file. Default: a pixel-space DDPM.")
    parser.add_argument("--latent_pad", type=non_negative_int, default=0,
                        help="Zero-pad the latents by this many positions on every side (for a UNet whose "
                             "downsampling needs a larger latent). Default 0.")
    parser.add_argument("--init_weights", default=None, metavar="MODEL_FILE",
                        help="Start training from this model file's weights (e.g. final_model.pth of a run whose "
                             "checkpoints were deleted), with a fresh optimizer: an absolute path or one relative to "
                             "the run's folder. Default: a fresh model, or the run's checkpoint.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Config overrides (OmegaConf dotlist), e.g. ldm.params.unet_config.params.model_channels=64; "
                             "unknown keys and invalid values are refused.")
    return parser.parse_args(argv)


def check_same_config(run, cfg) -> None:
    """An existing run keeps its config: the model and schedule its checkpoints were trained with.

    A run that has written no checkpoint or model file yet may take a new config. No key is
    safe to change afterwards (every one shapes the model, the schedule or the default lr the
    optimizer state was built with), so any difference is refused, naming the keys.
    """
    from omegaconf import OmegaConf

    from ddpm_ood.models.config import config_differences, to_container
    from ddpm_ood.utils.errors import ConfigError

    stored_file = run.config
    if not (stored_file.exists() and run.trained_files()):
        return
    try:
        stored = to_container(OmegaConf.load(stored_file))
    except Exception as err:  # OmegaConf raises several types for a damaged YAML file
        raise ConfigError(f"Cannot read {stored_file} ({err}); restore it or start a new run (--model_name).") from err
    differences = config_differences(stored, to_container(cfg))
    if differences:
        raise ConfigError(
            f"The run {run.dir} was trained with the config in {stored_file}; this command asks for another: "
            f"{'; '.join(differences)}. A trained run's model and schedule cannot change: use the same "
            "--config_diffusion_file and overrides to resume, or a new --model_name for a new run.")


def check_same_space(run, args) -> None:
    """A trained run resumes in its own space, said before any data is read (a latent run resumed without
    --vqvae_checkpoint would otherwise be refused as a config difference of in_channels)."""
    import torch

    from ddpm_ood.training.ddpm import check_resume_space

    for path in run.trained_files():
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # a damaged file: the training loop says so, or falls back to another
            continue
        if isinstance(state, dict):
            check_resume_space(run.dir, state.get("first_stage"), args.vqvae_checkpoint is not None)
            return


def first_stage_of(args) -> dict | None:
    """--vqvae_checkpoint's first stage, read and checked against --spatial_dimension before any data is loaded."""
    from ddpm_ood.utils.errors import ConfigError
    from ddpm_ood.models.first_stage import read_first_stage

    if args.vqvae_checkpoint is None:
        return None
    record = read_first_stage(args.vqvae_checkpoint)
    dims = record["network"]["spatial_dims"]
    if dims != args.spatial_dimension:
        raise ConfigError(f"The first stage {record['file']} is {dims}D, but --spatial_dimension is "
                          f"{args.spatial_dimension}: pass --spatial_dimension {dims} or another first stage.")
    return record


def preprocessing_of(args, record: dict | None) -> dict | None:
    """How the volumes are cropped and resized; a first stage made its latents of volumes made the same way."""
    from ddpm_ood.data.loading import describe_preprocessing, preprocessing_record, record_intensity
    from ddpm_ood.utils.errors import ConfigError

    preprocessing = preprocessing_record(args.spatial_dimension, args.image_roi, args.image_size, args.intensity)
    if record is not None and (("preprocessing" in record and record["preprocessing"] != preprocessing) or
                               record_intensity(record.get("preprocessing")) != record_intensity(preprocessing)):
        raise ConfigError(f"The first stage {record['file']} was trained on {describe_preprocessing(record.get('preprocessing'))}"
                          f", but this command makes {describe_preprocessing(preprocessing)}: a DDPM learns the latents "
                          "of images made as its first stage's were. Give its --image_roi, --image_size and --intensity.")
    return preprocessing


def latents_of(args, record, train_set, val_set, device, dist):
    """The first stage of --vqvae_checkpoint (checked against the images), and both sets encoded by it,
    scaled to unit standard deviation on the training set and padded by --latent_pad."""
    import torch
    from tqdm import tqdm

    from ddpm_ood.training.first_stage import latent_scale
    from ddpm_ood.models.first_stage import LatentSpace, check_images_for

    where = record["file"]
    check_images_for(record, train_set.images.shape[1:], args.training_ids, where)
    space = LatentSpace.from_record({**record, "pad": 0}, where).to(device)

    def encode(images, what):
        parts = [space.encode_unscaled(images[i:i + args.batch_size].to(device)).cpu()
                 for i in tqdm(range(0, len(images), args.batch_size), desc=f"encoding {what}", leave=False,
                               disable=not dist.is_main)]
        return torch.cat(parts)

    train_latents, val_latents = encode(train_set.images, "training set"), encode(val_set.images, "validation set")
    space.scale, space.pad = latent_scale(train_latents), args.latent_pad
    logger.info("first stage %s: latents of shape %s, scaled by %.4f%s", where, tuple(train_latents.shape[1:]),
                space.scale, f", padded by {args.latent_pad}" if args.latent_pad else "")
    return space, space.place(train_latents), space.place(val_latents)


def set_network_shape(cfg, spatial_dimension: int, latent_channels: int | None):
    """The UNet's dims (2 or 3) and, for a latent model, its channels: those of the first stage's latents."""
    from omegaconf import OmegaConf, open_dict

    from ddpm_ood.models.config import is_monai_unet

    unet = cfg.ldm.params.unet_config.params
    with open_dict(unet):
        if is_monai_unet(cfg):
            unet.spatial_dims = spatial_dimension
        elif spatial_dimension == 3 or "dims" in unet:
            unet.dims = spatial_dimension
        if latent_channels is not None:
            channels = int(latent_channels)
            if unet.in_channels != channels:
                logger.info("latent model: the UNet takes the first stage's %d latent channels (in_channels and "
                            "out_channels set from %d)", channels, unet.in_channels)
            unet.in_channels = unet.out_channels = channels
    return OmegaConf.create(OmegaConf.to_container(cfg))


def main(args: argparse.Namespace) -> dict:
    import torch
    from omegaconf import OmegaConf

    from ddpm_ood.cli import diffusion_overrides
    from ddpm_ood.models.config import (b_scale, build_schedule, build_unet, check_channels, check_config,
                                        default_config_file, load_config, to_container)
    from ddpm_ood.data.loading import check_image_shape, load_images, profile_training_set
    from ddpm_ood.utils.errors import ConfigError
    from ddpm_ood.utils.files import write_text_atomic
    from ddpm_ood.utils.distributed import init_distributed, shutdown
    from ddpm_ood.runs.layout import RunFiles, images_sha256
    from ddpm_ood.training.loop import refuse_another_kind_of_run
    from ddpm_ood.runs.lock import run_lock
    from ddpm_ood.utils.runtime import pick_device
    from ddpm_ood.training.settings import data_record
    from ddpm_ood.training.ddpm import train

    run = RunFiles(args.output_dir / args.model_name)
    logger.info("loading config...")
    cfg = load_config(args.config_diffusion_file or default_config_file(bool(args.is_grayscale)),
                      diffusion_overrides(args) + list(args.overrides), args.model_type, args.spatial_dimension)
    if args.vqvae_checkpoint is None:
        check_channels(cfg, bool(args.is_grayscale), str(args.config_diffusion_file))
    dist, device = init_distributed(pick_device(args.device))
    if args.batch_size < dist.world_size:
        raise ConfigError(f"--batch_size {args.batch_size} is the global batch; it must be at least the number of "
                          f"processes ({dist.world_size}).")

    if dist.is_main:
        logger.info("--batch_size %d is the global batch: %s per step (ddpm-ood's --batch_size was per process)",
                    args.batch_size, f"{args.batch_size} images" if dist.world_size == 1 else
                    f"about {args.batch_size // dist.world_size} images on each of {dist.world_size} processes")

    # Under torchrun the ranks share the run: rank 0 holds the lock and writes the run's files.
    with run_lock(run.dir, "train") if dist.is_main else contextlib.nullcontext():
        refuse_another_kind_of_run(run, "checkpoint")  # a first stage's folder is not a DDPM's
        check_same_space(run, args)
        record = first_stage_of(args)
        preprocessing = preprocessing_of(args, record)  # checked against the first stage's before any data is read
        logger.info("loading data...")
        space_args = dict(spatial_dimension=args.spatial_dimension, image_roi=args.image_roi,
                          image_size=args.image_size, intensity=args.intensity)
        train_set = load_images(args.training_ids, bool(args.is_grayscale), first_n=args.first_n,
                                num_workers=args.num_workers, progress=dist.is_main, **space_args)
        val_set = load_images(args.validation_ids, bool(args.is_grayscale), num_workers=args.num_workers,
                              progress=dist.is_main, **space_args)
        check_image_shape(val_set, train_set.images.shape[1:], f"the training set {args.training_ids}",
                          args.validation_ids)
        profile = profile_training_set(train_set, args.training_ids)  # refuses constant images
        train_images, val_images, first_stage = train_set.images, val_set.images, None
        if args.vqvae_checkpoint is not None:
            first_stage, train_images, val_images = latents_of(args, record, train_set, val_set, device, dist)
        scale = b_scale(cfg)
        if scale != 1.0:  # the data times b before noising (ddpm-ood's --b_scale), undone on decoding
            logger.info("b_scale %g: the %s are multiplied by it before noising", scale,
                        "latents" if first_stage else "images")
            if first_stage is not None:
                first_stage.scale *= scale
            train_images, val_images = train_images * scale, val_images * scale
        cfg = set_network_shape(cfg, args.spatial_dimension, train_images.shape[1] if first_stage else None)
        check_config(cfg, f"the config with --spatial_dimension {args.spatial_dimension}")
        check_same_config(run, cfg)
        if dist.is_main:  # only now: bad input above writes nothing
            write_text_atomic(run.config, OmegaConf.to_yaml(cfg))

        logger.info("creating model...")
        torch.manual_seed(args.seed)  # the initial weights; a resumed run loads its own
        model, schedule = build_unet(cfg), build_schedule(cfg)
        logger.info("%s with %.2fM parameters on %s, predicting %s", type(model).__name__,
                    sum(p.numel() for p in model.parameters()) / 1e6, device, schedule.prediction)

        logger.info("training...")
        settings = TrainSettings.from_args(args, float(cfg.ldm.base_lr))
        data = {name: data_record(path, images_sha256(split.images), len(split), args.first_n if name == "training"
                                  else None, profile=profile if name == "training" else None)
                for name, path, split in (("training", args.training_ids, train_set),
                                          ("validation", args.validation_ids, val_set))}
        init = run.find_model_file(args.init_weights) if args.init_weights else None
        summary = train(model, schedule, train_images, val_images, settings, run.dir, to_container(cfg),
                        device, dist, init, data, first_stage, val_set.images[:4], preprocessing)
    shutdown(dist)
    if dist.is_main:
        logger.info("done: %d epochs, best validation loss %.5f; files in %s", summary["epochs"],
                    summary["best_val_loss"], run.dir)
    return summary


if __name__ == "__main__":
    run_main(main, parse_args)
