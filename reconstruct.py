r"""Reconstruct validation, in-distribution and OOD images from several start points and
measure MSE and LPIPS between each image and each reconstruction.

    python reconstruct.py --output_dir=${output_root} --model_name=fashionmnist \
        --validation_ids=${data_root}/data_splits/FashionMNIST_val.csv \
        --in_ids=${data_root}/data_splits/FashionMNIST_test.csv \
        --out_ids=${data_root}/data_splits/MNIST_test.csv,${data_root}/data_splits/FashionMNIST_vflip_test.csv \
        --is_grayscale=1 --num_inference_steps=100 --inference_skip_factor=16 --run_val=1 --run_in=1 --run_out=1

The model and schedule are rebuilt from the checkpoint. Writes OUTPUT_DIR/MODEL_NAME/ood/
results_val.csv, results_in.csv and results_<Name>.csv (Name: the OOD CSV's stem without
"_test", e.g. MNIST, FashionMNIST_vflip), one row per (image, start t).

``--detectors recon,path,msma,denoise`` (or ``all``) also measures the other detectors of
src/detectors/ (DiffPath's path statistics, MSMA's score norms, the denoising error), each in
ood/<detector>/results_<set>.csv, one row per image; the default is the paper's alone.

``torchrun --nproc_per_node=N reconstruct.py <the same flags>`` shares each set's chunks over
N processes; ``--shard K/N`` does the same for independent jobs. Either way the results are
byte-identical to one process.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Sequence

from src.cli import (PLAIN_NAME, RESERVED_SETS, binary_int, check_interrupted, device_name, non_negative_int,
                     pick_device, plain_name, positive_int, run_main, seed_value)
from src.detectors import DEFAULT_DETECTORS, DETECTORS, parse_detectors
from src.detectors.recon import METRICS
from src.errors import DataError
from src.precision import PRECISIONS

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, type=plain_name,
                        help="Run name, a plain name (OUTPUT_DIR/MODEL_NAME/ holds the model).")
    parser.add_argument("--validation_ids", help="Split CSV of in-distribution validation images (z-score fit).")
    parser.add_argument("--in_ids", help="Split CSV of in-distribution test images.")
    parser.add_argument("--fit_ids", default=None,
                        help="Optional split CSV of other in-distribution images (never test images) for the density "
                             "fits of the path/msma/denoise detectors (ood_detection.py --fit_on=fit); measured by "
                             "those detectors only, first --first_n_val of them. Default: none (fits use val).")
    parser.add_argument("--out_ids", default="",
                        help="Comma-separated split CSVs of OOD images; a _vflip/_hflip suffix flips the base split.")
    parser.add_argument("--is_grayscale", type=binary_int, default=1, help="1: one-channel images, 0: RGB.")
    parser.add_argument("--config_diffusion_file", type=Path, default=None,
                        help="Optional: the model and schedule always come from the checkpoint; if this config "
                             "describes a different model or schedule, a warning says so.")
    parser.add_argument("--num_inference_steps", type=positive_int, default=100,
                        help="PLMS grid size S: points 1, 1+T//S, ... Default 100 (t = 1, 11, ..., 991).")
    parser.add_argument("--inference_skip_factor", type=positive_int, default=16,
                        help="Start points are grid[::skip]; 16 on 100 steps gives 7 (t = 1, 161, ..., 961).")
    parser.add_argument("--max_start_t", type=positive_int, default=None,
                        help="Keep only start points t < MAX_START_T (low starts are cheap and carry much of the "
                             "signal; the paper used all). Default: all.")
    parser.add_argument("--min_start_t", type=non_negative_int, default=None,
                        help="Keep only start points t >= MIN_START_T (near t = 1 the error mostly measures how "
                             "smooth an image is). Default: all.")
    parser.add_argument("--run_val", type=binary_int, default=1, help="1: reconstruct the validation set.")
    parser.add_argument("--run_in", type=binary_int, default=1, help="1: reconstruct the in-distribution test set.")
    parser.add_argument("--run_out", type=binary_int, default=1, help="1: reconstruct the OOD sets.")
    parser.add_argument("--first_n_val", type=non_negative_int, default=None, help="Only the first N validation images.")
    parser.add_argument("--first_n", type=non_negative_int, default=None, help="Only the first N images of in/OOD sets.")
    parser.add_argument("--eval_checkpoint", default=None,
                        help="Model file to use: an absolute path, or a path relative to the run's folder "
                             "OUTPUT_DIR/MODEL_NAME/ (never the working directory). Default: best_model.pth, else "
                             "final_model.pth, else checkpoint.pth.")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="Images per batch (each run from every start).")
    parser.add_argument("--metrics", default="mse,lpips",
                        help="Comma-separated metrics: mse, lpips. 'mse' alone skips LPIPS (no AlexNet weights needed).")
    parser.add_argument("--detectors", type=detector_list, default=",".join(DEFAULT_DETECTORS),
                        help=f"Comma-separated detectors to measure, from {', '.join(DETECTORS)}, or 'all'. Default "
                             "recon, the paper's reconstruction score; path (DiffPath), msma (MSMA) and denoise "
                             "(denoising error) cost about 10 UNet calls per image each. See README, 'Detectors'.")
    parser.add_argument("--path_steps", type=positive_int, default=10,
                        help="DDIM steps of the path detector's path from the image to noise (its UNet calls per "
                             "image). Default 10, as DiffPath.")
    parser.add_argument("--msma_levels", type=positive_int, default=10,
                        help="Noise levels of the msma detector (its UNet calls per image). Default 10, as MSMA.")
    parser.add_argument("--denoise_levels", type=positive_int, default=10,
                        help="Timesteps of the denoise detector (its UNet calls per image). Default 10.")
    parser.add_argument("--lpips_weights", type=Path, default=None,
                        help="torchvision AlexNet weights file (alexnet-owt-7be5be79.pth); default: the torch hub cache.")
    parser.add_argument("--lpips_pad", type=non_negative_int, default=2,
                        help="Zero padding on each side for images under 32x32 before LPIPS (28 -> 32). Default 2.")
    parser.add_argument("--clamp_for_lpips", action=argparse.BooleanOptionalAction, default=False,
                        help="Clamp colour reconstructions to [0, 1] before LPIPS too. Default off, as the paper's "
                             "code: MSE (and grayscale LPIPS) use the clamped reconstruction, colour LPIPS the "
                             "unclamped one.")
    parser.add_argument("--seed", type=seed_value, default=0, help="Seed of the start noise of each (image, t). Default 0.")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="Autocast precision of the UNet.")
    parser.add_argument("--max_model_batch", type=non_negative_int, default=None,
                        help="Split each UNet call into chunks of at most this many images; 0: never. Default: "
                             "the batch size on CPU (large calls outgrow the caches), no limit on CUDA.")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the UNet (pays off on GPUs for long runs).")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                        help="Run the UNet in channels_last memory format (faster convolutions on some GPUs).")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="Advance all start points of a batch together (default); --no-fused runs them one by one.")
    parser.add_argument("--num_workers", type=non_negative_int, default=4, help="Threads reading image files. Default 4.")
    parser.add_argument("--chunk_size", type=positive_int, default=512,
                        help="Images per committed chunk: a killed run re-run with the same command redoes at "
                             "most one chunk per set. Default 512.")
    parser.add_argument("--shard", type=shard_spec, default=None, metavar="K/N",
                        help="Do only chunks k with k %% N == K (K = 0..N-1), for N independent jobs (e.g. a Slurm "
                             "job array) sharing one run folder; the last job to finish joins the results (or re-run "
                             "without --shard). Results are byte-identical to one process. Under torchrun the "
                             "ranks share the chunks the same way without this flag.")
    parser.add_argument("--save_examples", type=non_negative_int, default=0,
                        help="Keep the first N images of each set and their reconstructions from every start point "
                             "in ood/examples_<set>.npz, for the reconstruction grid of ood_detection.py. Default 0.")
    parser.add_argument("--restart", action=argparse.BooleanOptionalAction, default=False,
                        help="Discard results (finished or partial) made with other settings instead of stopping.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    return parser.parse_args(argv)


def shard_spec(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 0 <= K < N."""
    index, sep, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not sep or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return index, count


def detector_list(text: str) -> list[str]:
    try:
        return parse_detectors(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or "mse" not in metrics:
        raise DataError(f"--metrics {text!r}: choose 'mse' or 'mse,lpips' (unknown: {unknown}).")
    return metrics


def planned_sets(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(results name, split CSV, first_n) for every set to reconstruct, checked before any work."""
    sets = []
    if args.run_val:
        sets.append(("val", args.validation_ids, args.first_n_val))
    if args.run_in:
        sets.append(("in", args.in_ids, args.first_n))
    if args.fit_ids:
        sets.append(("fit", args.fit_ids, args.first_n_val))
    for name, path, _ in sets:
        if not path:
            raise DataError(f"--{ {'val': 'validation'}.get(name, name)}_ids is required when that set is run "
                            f"(or pass --run_{name}=0).")
        from src.data import resolve_split

        resolve_split(path)  # fails now, naming the file, rather than after hours of work
    if args.run_out:
        # resolve_split checks each OOD file (or its base, for _vflip/_hflip) as it names the set.
        for path in (p.strip() for p in args.out_ids.split(",")):
            if path:
                sets.append((ood_set_name(path), path, args.first_n))
    names = [name for name, _, _ in sets]
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise DataError(f"Two sets would write the same results file: {sorted(clashes)}. Rename one split CSV.")
    return sets


def finalise_shared(store, n_images: int, chunk_size: int, out_dir: Path) -> None:
    """With independent --shard jobs: whichever finds every chunk on disk joins them, one at a
    time (the others find the set complete and leave it)."""
    from src.runlock import run_lock

    if not store.all_done(n_images, chunk_size):
        left = len(store.pending(n_images, chunk_size))
        logger.info("%s: %d chunk(s) left to other shards; the last shard to finish joins them (or re-run "
                    "without --shard).", store.final.name, left)
        return
    with run_lock(out_dir, "finalise", wait=True):
        if store.partial.exists() and store.all_done(n_images, chunk_size):
            store.finalise(n_images, chunk_size)


def ood_set_name(path: str) -> str:
    """The results name of an OOD split CSV (``MNIST_test.csv`` -> ``MNIST``), checked: it names
    files and a folder, so it must be a plain name, and not one of the reserved ``val``/``in``."""
    from src.data import resolve_split

    name = resolve_split(path).name
    if not PLAIN_NAME.fullmatch(name) or name in RESERVED_SETS:
        raise DataError(
            f"--out_ids {path}: its results name would be {name!r}, which "
            + (f"is reserved for the {dict(val='validation', fit='fit').get(name, 'in-distribution')} results"
               if name in RESERVED_SETS else "is not a plain name (letters, digits, . _ + -, starting with a "
               "letter or digit)")
            + ". Rename or copy the split CSV (the set is named after the file, without '_test').")
    return name


def warn_if_config_differs(config_file: Path, stored: dict, model_file: Path) -> None:
    """The checkpoint's config wins; say so when the config given on the command line disagrees."""
    from src.config import load_config, to_container

    given = to_container(load_config(config_file)).get("ldm", {}).get("params", {})
    stored_params = stored.get("ldm", {}).get("params", {})
    differing = sorted(k for k in set(given) | set(stored_params) if given.get(k) != stored_params.get(k))
    if differing:
        logger.warning("%s differs from the config stored in %s (%s); using the stored one.",
                       config_file, model_file, ", ".join(differing))


def main(args: argparse.Namespace) -> dict[str, Path]:
    import numpy as np
    from tqdm import tqdm

    from src.checkpoint import find_model_file, load_model
    from src.config import check_channels
    from src.data import check_image_shape, load_split
    from src.diffusion import PLMSSampler
    from src.distributed import init_distributed, launched_by_torchrun, shutdown
    from src.files import save_npz_atomic
    from src.metrics import LPIPSMetric
    from src.precision import resolve_precision
    from src.reconstruction import (default_model_batch, in_chunks, measure_split, reconstruction_examples,
                                    unet_caller)
    from src.detectors import feature_detector_class
    from src.detectors.base import measure_features
    from src.detectors.recon import nfe as recon_nfe
    from src.results_store import ResultsStore
    from src.runlock import run_lock

    metrics = parse_metrics(args.metrics)
    sets = planned_sets(args)
    if args.shard is not None and (launched_by_torchrun() or args.restart):
        raise DataError("--shard is for independent jobs: use it without torchrun (whose ranks share the chunks "
                        "by themselves) and without --restart (which could discard another shard's work; run "
                        "one --restart without --shard first).")
    dist, device = init_distributed(pick_device(args.device))
    run_dir = args.output_dir / args.model_name
    out_dir = run_dir / "ood"

    logger.info("loading model...")
    model_file = find_model_file(run_dir, args.eval_checkpoint)
    model, schedule, config, info = load_model(model_file, device)
    check_channels(config, bool(args.is_grayscale), str(model_file))
    logger.info("model %s (epoch %s); the config stored in it is used", model_file, info.get("epoch"))
    if args.config_diffusion_file is not None:
        warn_if_config_differs(args.config_diffusion_file, config, model_file)
    use_recon = "recon" in args.detectors
    lpips_metric = (LPIPSMetric(args.lpips_weights, pad=args.lpips_pad).to(device)
                    if use_recon and "lpips" in metrics else None)
    features = {name: feature_detector_class(name)(n, schedule.num_timesteps)
                for name, n in (("path", args.path_steps), ("msma", args.msma_levels),
                                ("denoise", args.denoise_levels)) if name in args.detectors}

    sampler = PLMSSampler(schedule)
    try:
        sampler.set_timesteps(args.num_inference_steps)
        start_indices = sampler.start_indices(args.inference_skip_factor)
    except ValueError as err:
        raise DataError(f"{err} (--num_inference_steps={args.num_inference_steps}, "
                        f"--inference_skip_factor={args.inference_skip_factor})") from err
    start_t = sampler.grid[start_indices]
    keep = (start_t < (args.max_start_t or np.inf)) & (start_t >= (args.min_start_t or 0))
    if not keep.any():
        raise DataError(f"--min_start_t/--max_start_t leave none of the start points {start_t.tolist()}.")
    start_indices = start_indices[keep]
    nfe = {"recon": recon_nfe(start_indices), **{name: d.nfe() for name, d in features.items()}}
    if use_recon:
        logger.info("recon: %d reconstructions per image from t = %s; %d model evaluations per image",
                    len(start_indices), sampler.grid[start_indices].tolist(), nfe["recon"])
    for name, detector in features.items():
        logger.info("%s: %s; %d model evaluations per image", name, detector.settings(), nfe[name])
    precision = resolve_precision(args.precision, device)

    unet = unet_caller(model, device, precision, args.channels_last, args.compile)
    max_batch = args.max_model_batch if args.max_model_batch is not None else default_model_batch(args.batch_size, device)
    model_fn = in_chunks(unet, max_batch)

    model_stat = model_file.stat()
    common = {
        "model_file": str(model_file.resolve()), "model_file_bytes": model_stat.st_size,
        "model_file_mtime_ns": model_stat.st_mtime_ns, "num_inference_steps": args.num_inference_steps,
        "start_t": sampler.grid[start_indices].tolist(), "metrics": metrics, "lpips_pad": args.lpips_pad,
        "clamp_for_lpips": bool(args.clamp_for_lpips),
        "seed": args.seed, "precision": precision, "is_grayscale": int(args.is_grayscale),
        "chunk_size": args.chunk_size,
    }

    def save_examples(store, name: str, image_set) -> None:
        """--save_examples: the first images and their reconstructions, once the set's results
        exist, recorded in its settings manifest (not a setting of the results themselves)."""
        n = min(args.save_examples, len(image_set))
        path = out_dir / f"examples_{name}.npz"
        if not n or not store.final.exists() or store.extras().get("examples") == {"file": path.name, "n": n}:
            return
        examples = reconstruction_examples(model_fn, schedule, sampler, image_set.images[:n], start_indices,
                                           args.seed, device)
        save_npz_atomic(path, filenames=np.asarray(image_set.filenames[:n]), **examples)
        store.record_extras({"examples": {"file": path.name, "n": n}})

    model_settings = {key: common[key] for key in ("model_file", "model_file_bytes", "model_file_mtime_ns", "seed",
                                                   "precision", "is_grayscale", "chunk_size")}
    written = {}
    # Who does which chunks: chunk k goes to worker k % n_workers (torchrun ranks, or --shard jobs).
    worker, n_workers = (dist.rank, dist.world_size) if dist.active else args.shard or (0, 1)
    alone = args.shard is None  # no writer outside this process (group) touches the run

    def run_set(store, n_images: int, measure, desc: str) -> bool:
        """Measure the pending chunks of one (detector, set) and join them. True when this process
        should write the add-ons (rank 0, once the results file exists; False while other --shard
        jobs still hold chunks of it)."""
        complete = store.is_complete() if dist.is_main else None
        if dist.broadcast_object(complete):
            if dist.is_main:
                logger.info("%s is complete for these settings; skipping", store.final)
            return dist.is_main  # only rank 0 writes
        if dist.is_main:
            store.prepare(alone=alone)
        dist.barrier()
        if not dist.is_main:
            store.prepare(alone=False)  # reads the manifest rank 0 has just checked
        mine = [c for c in store.pending(n_images, args.chunk_size) if c[0] % n_workers == worker]
        # One bar per set, across its chunks (this process's share of them).
        with tqdm(total=sum(stop - start for _, start, stop in mine), unit="img", desc=desc, dynamic_ncols=True,
                  disable=not dist.is_main) as bar:
            for k, start, stop in mine:
                check_interrupted()  # a Ctrl-C the interpreter swallowed still stops at the next chunk
                store.commit(k, measure(start, stop, bar.update))
        dist.barrier()  # every rank's chunks are on disk
        if dist.active and not dist.is_main:
            return False
        if alone:
            store.finalise(n_images, args.chunk_size)
        else:
            finalise_shared(store, n_images, args.chunk_size, out_dir)
        if store.final.exists():
            logger.info("wrote %s (%d images)", store.final, n_images)
        return store.final.exists()

    lock = run_lock(out_dir, "reconstruct", shared=not alone) if dist.is_main else contextlib.nullcontext()
    with lock:
        dist.barrier()  # the other ranks start once rank 0 holds the run
        for name, path, first_n in sets:
            image_set = load_split(path, bool(args.is_grayscale), first_n=first_n, num_workers=args.num_workers,
                                   progress=dist.is_main)
            check_image_shape(image_set, info.get("image_shape"), f"the model {model_file}", path)
            split_settings = {"split": str(Path(path).resolve()), "first_n": first_n, "n_images": len(image_set),
                              "files_digest": hashlib.sha256("\n".join(image_set.filenames).encode()).hexdigest()}
            images, filenames = image_set.images, image_set.filenames
            if use_recon and name != "fit":  # the recon scores z-score with the validation set itself
                store = ResultsStore(out_dir, name, {**common, **split_settings}, restart=args.restart)
                written[name] = store.final

                def measure(start, stop, advance):
                    return measure_split(model_fn, schedule, sampler, images[start:stop], filenames[start:stop],
                                         name, start_indices, args.batch_size, args.seed, device, lpips_metric,
                                         fused=args.fused, progress=advance, index_offset=start,
                                         clamp_for_lpips=args.clamp_for_lpips)

                if run_set(store, len(image_set), measure, f"reconstructing {name}"):
                    # The cost, for ood_detection.py's table (per start point too, for its --max_t).
                    store.record_extras({"nfe_per_image": nfe["recon"], "nfe_per_start": {
                        str(int(sampler.grid[j])): recon_nfe([j]) for j in start_indices}})
                    save_examples(store, name, image_set)
            for detector_name, detector in features.items():
                store = ResultsStore(out_dir / detector_name, name,
                                     {**model_settings, "detector": detector_name, **detector.settings(),
                                      **split_settings}, restart=args.restart)
                written[f"{detector_name}/{name}"] = store.final

                def measure(start, stop, advance, detector=detector):
                    return measure_features(detector, model_fn, schedule, images[start:stop], filenames[start:stop],
                                            name, args.batch_size, args.seed, device, progress=advance,
                                            index_offset=start)

                if run_set(store, len(image_set), measure, f"{detector_name} {name}"):
                    store.record_extras({"nfe_per_image": nfe[detector_name]})
    shutdown(dist)
    return written


if __name__ == "__main__":
    run_main(main, parse_args)
