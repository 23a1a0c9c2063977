r"""Reconstruct validation, in-distribution and OOD images from several start points and
measure MSE and LPIPS between each image and each reconstruction (the paper's detector), and
the other detectors asked for.

    python reconstruct.py --output_dir=${output_root} --model_name=fashionmnist \
        --validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \
        --in_ids=${data_root}/data_splits/FashionMNIST_test.csv \
        --out_ids=${data_root}/data_splits/MNIST_test.csv,${data_root}/data_splits/FashionMNIST_vflip_test.csv \
        --is_grayscale=1 --num_inference_steps=100 --inference_skip_factor=16 --run_val=1 --run_in=1 --run_out=1

The model and schedule are rebuilt from the checkpoint (a latent model's first stage too). Writes
OUTPUT_DIR/MODEL_NAME/ood/results_val.csv, results_in.csv and results_<Name>.csv (Name: the OOD
CSV's stem without "_test"), one row per (image, start t). --detectors adds the other detectors,
each in ood/<detector>/results_<set>.csv (docs/detectors.md). ``torchrun --nproc_per_node=N``
and ``--shard K/N`` share each set's chunks; the results are byte-identical to one process.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Sequence

from ddpm_ood.cli import (add_diffusion_flags, add_knobs, add_space_flags, binary_int, detector_list, device_name,
                          map_count, non_negative_int, plain_name, positive_int, run_main, seed_value, shard_spec)
from ddpm_ood.detectors import DEFAULT_DETECTORS, detector_help, measure_knobs
from ddpm_ood.utils.runtime import PRECISIONS

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    add("--model_name", required=True, type=plain_name,
        help="Run name, a plain name (OUTPUT_DIR/MODEL_NAME/ holds the model).")
    add("--validation_ids", help="Split CSV of in-distribution validation images (z-score fit).")
    add("--in_ids", help="Split CSV of in-distribution test images.")
    add("--fit_ids", default=None, help="Optional split CSV of other in-distribution images (never test images), the "
        "first --first_n_val of them, for the fits of all but the paper's detector (ood_detection.py --fit_on=fit).")
    add("--out_ids", default="", help="Comma-separated split CSVs of OOD images; a _vflip/_hflip suffix flips the base split.")
    add("--is_grayscale", type=binary_int, default=None, help="1: one-channel images, 0: RGB. Default: the model's.")
    add("--config_diffusion_file", type=Path, default=None,
        help="Optional: the model and schedule always come from the checkpoint; if this config describes a different "
             "model or schedule, a warning says so.")
    add("--run_val", type=binary_int, default=1, help="1: reconstruct the validation set.")
    add("--run_in", type=binary_int, default=1, help="1: reconstruct the in-distribution test set.")
    add("--run_out", type=binary_int, default=1, help="1: reconstruct the OOD sets.")
    add("--first_n_val", type=non_negative_int, default=None, help="Only the first N validation images.")
    add("--first_n", type=non_negative_int, default=None, help="Only the first N images of in/OOD sets.")
    add("--eval_checkpoint", default=None,
        help="Model file to use: an absolute path, or a path relative to the run's folder OUTPUT_DIR/MODEL_NAME/ (never "
             "the working directory). Default: best_model.pth, else final_model.pth, else checkpoint.pth.")
    add("--pretrained", default=None, metavar="PATH_OR_ID", help="Score with a pretrained diffusers model (a folder, or "
        "a hub id such as google/ddpm-cifar10-32) instead of a run's own; docs/pretrained.md.")
    add("--batch_size", type=positive_int, default=64, help="Images per batch (each run from every start).")
    add("--detectors", type=detector_list, default=",".join(DEFAULT_DETECTORS),
        help=f"Comma-separated detectors to measure, from {detector_help()}, or 'all'. Default: the paper's "
             f"reconstruction score ({','.join(DEFAULT_DETECTORS)}); the others cost about 10 UNet calls per image "
             "each. See docs/detectors.md, 'Which detector, for how much'.")
    add("--seed", type=seed_value, default=0, help="Seed of the start noise of each (image, t). Default 0.")
    add("--device", type=device_name, default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    add("--precision", choices=PRECISIONS, default="fp32", help="Autocast precision of the UNet.")
    add("--max_model_batch", type=non_negative_int, default=None,
        help="Split each UNet call into chunks of at most this many images; 0: never. Default: the batch size on CPU "
             "(large calls outgrow the caches), no limit on CUDA.")
    add("--compile", action=argparse.BooleanOptionalAction, default=False,
        help="torch.compile the UNet (pays off on GPUs for long runs).")
    add("--channels_last", action=argparse.BooleanOptionalAction, default=False,
        help="Run the UNet in the channels-last layout (channels_last_3d for volumes): faster on GPUs, and on CPUs for 3D.")
    add("--num_workers", type=non_negative_int, default=4, help="Threads reading image files. Default 4.")
    add("--chunk_size", type=positive_int, default=512,
        help="Images per committed chunk: a killed run re-run with the same command redoes at most one chunk per set. "
             "Default 512.")
    add("--shard", type=shard_spec, default=None, metavar="K/N",
        help="Do only chunks k with k %% N == K (K = 0..N-1), for N independent jobs (e.g. a Slurm job array) sharing "
             "one run folder; the last job to finish joins the results (or re-run without --shard). Results are "
             "byte-identical to one process. Under torchrun the ranks share the chunks the same way without this flag.")
    add("--save_examples", type=non_negative_int, default=0,
        help="Keep the first N images of each set and their reconstructions from every start point in "
             "ood/examples_<set>.npz, for the reconstruction grid of ood_detection.py. Default 0.")
    add("--save_maps", type=map_count, default=0, metavar="N|all", help="Anomaly maps of the first N (>= 2) images of "
        "every set, or all, kept as --save_examples (docs/latent_and_3d.md, '4. Anomaly maps'). Default 0.")
    add("--restart", action=argparse.BooleanOptionalAction, default=False,
        help="Discard results (finished or partial) made with other settings instead of stopping.")
    add("--verbose", action="store_true", help="Log debug messages.")
    add_space_flags(parser, spatial_default=None)
    add_diffusion_flags(parser, training=False)  # ddpm-ood's later flags: checked against the model
    add_knobs(parser.add_argument_group(f"detector settings (detectors: {detector_help()})"), measure_knobs())
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Path]:
    from ddpm_ood.models.config import warn_if_config_differs
    from ddpm_ood.data.loading import load_images
    from ddpm_ood.detectors import detector_class
    from ddpm_ood.utils.distributed import init_distributed, shutdown
    from ddpm_ood.models.loading import ModelSource, load_model
    from ddpm_ood.diffusion.reconstruction import NOISE
    from ddpm_ood.runs.store import ResultsStore, Workers, run_chunks
    from ddpm_ood.runs.layout import RunFiles, build_manifest, planned_sets, set_entries
    from ddpm_ood.runs.lock import run_lock
    from ddpm_ood.utils.runtime import pick_device

    sets = planned_sets(args.validation_ids, args.in_ids, args.fit_ids, args.out_ids, args.run_val, args.run_in,
                        args.run_out, args.first_n_val, args.first_n)
    dist, device = init_distributed(pick_device(args.device))
    workers = Workers.of(dist, args.shard, args.restart)  # who measures which chunks
    run = RunFiles(args.output_dir / args.model_name)

    logger.info("loading model...")
    model = load_model(ModelSource.choose(run, args.eval_checkpoint, args.pretrained), device, args.precision,
                          args.channels_last, args.compile, args.max_model_batch, args.batch_size)
    is_grayscale = model.is_grayscale(args.is_grayscale)
    logger.info("%s", model.describe())
    if args.config_diffusion_file is not None and model.source.kind == "run":
        warn_if_config_differs(args.config_diffusion_file, model.config, model.source)
    detectors = [detector_class(name).from_args(args, model) for name in args.detectors]
    for detector in detectors:
        logger.info("%s", detector.describe())
    roi_and_size = model.check_run(args.spatial_dimension, sets, vars(args))  # before any work; the model's crop
    run_settings = {"seed": args.seed, "precision": model.precision, "is_grayscale": int(is_grayscale), "noise": NOISE}

    written = {}
    with run_lock(run.ood, "reconstruct", shared=not workers.alone) if dist.is_main else contextlib.nullcontext():
        dist.barrier()  # the other ranks start once rank 0 holds the run
        for name, path, first_n in sets:
            image_set = load_images(path, is_grayscale, model.spatial_dims, first_n, dist.is_main, args.num_workers,
                                    *roi_and_size)
            model.check_images(image_set, path)
            entries = set_entries(path, first_n, image_set.filenames, image_set.images)
            model.refuse_memorised(name, path, entries["images_sha256"], image_set.images)
            for detector in (d for d in detectors if name != "fit" or d.measures_fit_set):
                detector.keep_examples(kept := min(max(args.save_examples, args.save_maps), len(image_set)))
                store = ResultsStore(run, detector.folder(), name, build_manifest(
                    model.manifest(run.dir), run_settings, detector.settings(), entries, args.chunk_size), args.restart)
                written["/".join(filter(None, (detector.folder(), name)))] = store.final

                def measure(start, stop, advance, detector=detector):
                    return detector.measure(model, image_set.images[start:stop], image_set.filenames[start:stop],
                                            name, args.batch_size, args.seed, progress=advance, index_offset=start)

                if run_chunks(store, len(image_set), args.chunk_size, measure, dist, workers,
                              detector.progress_label(name)):
                    store.record_extras(detector.cost())
                    store.save_examples(run.examples(name, detector.folder()), kept, lambda n: detector.examples(
                        model, image_set.images[:n], args.seed), image_set.filenames, image_set.example_extras)
    shutdown(dist)
    return written


if __name__ == "__main__":
    run_main(main, parse_args)
