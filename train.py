r"""Train the DDPM on in-distribution images.

    python train.py --output_dir=${output_root} --model_name=fashionmnist \
        --training_ids=${data_root}/data_splits/FashionMNIST_train.csv \
        --validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \
        --is_grayscale=1 --config_diffusion_file=src/configs/diffusion/diffusion_grayscale.yaml --n_epochs=300

Writes under OUTPUT_DIR/MODEL_NAME/: config.yaml, checkpoint.pth (resume state; re-running
the same command resumes), best_model.pth (lowest validation loss), final_model.pth and
tensorboard/. Extra ``key=value`` arguments override the config, e.g.
``ldm.params.unet_config.params.model_channels=128``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from src.cli import binary_int, non_negative_int, pick_device, positive_int, run_main
from src.config import build_schedule, build_unet, check_channels, default_config_file, load_config, to_container
from src.data import load_split
from src.files import write_text_atomic
from src.training import PRECISIONS, TrainSettings, train

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, help="Run name; files go to OUTPUT_DIR/MODEL_NAME/.")
    parser.add_argument("--training_ids", required=True, help="Split CSV of training images.")
    parser.add_argument("--validation_ids", required=True, help="Split CSV of validation images (model selection).")
    parser.add_argument("--is_grayscale", type=binary_int, default=1, help="1: one-channel images, 0: RGB. Default 1.")
    parser.add_argument("--config_diffusion_file", type=Path, default=None,
                        help="Model/schedule YAML (default: src/configs/diffusion/diffusion_{grayscale,colour}.yaml).")
    parser.add_argument("--n_epochs", type=positive_int, default=300, help="Epochs to train in total. Default 300.")
    parser.add_argument("--batch_size", type=positive_int, default=180, help="Images per step. Default 180.")
    parser.add_argument("--lr", type=float, default=None, help="Learning rate (default: the config's ldm.base_lr).")
    parser.add_argument("--eval_freq", type=positive_int, default=10,
                        help="Validate (loss, samples, best model) every N epochs. Default 10.")
    parser.add_argument("--checkpoint_every", type=positive_int, default=1,
                        help="Write checkpoint.pth every N epochs. Default 1.")
    parser.add_argument("--checkpoint_every_steps", type=non_negative_int, default=0,
                        help="Also write checkpoint.pth every N optimizer steps inside an epoch (0: off, default).")
    parser.add_argument("--num_workers", type=int, default=4,
                        help="Threads reading image files at start-up; the data then stays in memory. Default 4.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for initialisation, data order and noise. Default 0.")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fp16 autocast + GradScaler on CUDA as the paper did, fp32 on CPU.")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the UNet for training (pays off on GPUs).")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                        help="Train in channels_last memory format (faster convolutions on some GPUs).")
    parser.add_argument("--ema_decay", type=float, default=0.0,
                        help="EMA of the weights used for validation and scoring; 0 (default, as the paper) is off.")
    parser.add_argument("--num_sample_images", type=int, default=16,
                        help="Images sampled to TensorBoard at each validation; 0 disables. Default 16.")
    parser.add_argument("--sample_steps", type=positive_int, default=50, help="PLMS steps for those samples.")
    parser.add_argument("--max_minutes", type=float, default=None,
                        help="Stop after the epoch during which this many minutes have passed (time-boxed runs).")
    parser.add_argument("--first_n", type=int, default=None, help="Use only the first N training images.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Config overrides (OmegaConf dotlist).")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    run_dir = args.output_dir / args.model_name
    run_dir.mkdir(parents=True, exist_ok=True)

    logger.info("loading config...")
    cfg = load_config(args.config_diffusion_file or default_config_file(bool(args.is_grayscale)), args.overrides)
    check_channels(cfg, bool(args.is_grayscale), str(args.config_diffusion_file))
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))

    logger.info("loading data...")
    train_set = load_split(args.training_ids, bool(args.is_grayscale), first_n=args.first_n, num_workers=args.num_workers)
    val_set = load_split(args.validation_ids, bool(args.is_grayscale), num_workers=args.num_workers)

    logger.info("creating model...")
    torch.manual_seed(args.seed)  # the initial weights; a resumed run loads its own
    model, schedule = build_unet(cfg), build_schedule(cfg)
    logger.info("UNet with %.2fM parameters on %s", sum(p.numel() for p in model.parameters()) / 1e6, device)

    logger.info("training...")
    settings = TrainSettings(
        n_epochs=args.n_epochs, batch_size=args.batch_size, lr=args.lr or float(cfg.ldm.base_lr),
        eval_freq=args.eval_freq, checkpoint_every=args.checkpoint_every, seed=args.seed,
        ema_decay=args.ema_decay, precision=args.precision, num_sample_images=args.num_sample_images,
        sample_steps=args.sample_steps, max_minutes=args.max_minutes, compile=args.compile,
        channels_last=args.channels_last, checkpoint_every_steps=args.checkpoint_every_steps,
    )
    summary = train(model, schedule, train_set.images, val_set.images, settings, run_dir, to_container(cfg), device)
    logger.info("done: %d epochs, best validation loss %.5f; files in %s", summary["epochs"], summary["best_val_loss"], run_dir)
    return summary


if __name__ == "__main__":
    run_main(main, parse_args)
