"""How much noise each score carries: the same images scored with other noise draws.

    python benchmarks/noise_bench.py                                   # the demo's run (make demo first)
    python benchmarks/noise_bench.py --run RUN_DIR --set CSV --n 24 --seeds 5 --draws 1,4

Every detector that draws noise (the paper's ``recon``, ``denoise``) gives an image a score that
depends on the draw. With a scored run's saved fits (as ``OODDetector`` scores new images), this
scores ``--n`` images of ``--set`` (default: the run's validation split) with ``--seeds`` noise
seeds and prints, per score and number of averaged draws (``--noise_draws``), the standard
deviation of an image's score over the seeds (mean over the images), beside the spread of the
scores over the images and the threshold. It also changes one pixel of each image by one float
step and prints how much the scores move (the noise is seeded by what the image shows at 8-bit
precision, so: not at all). All figures come from one run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo_output/models/fashionmnist_demo"),
                        help="A run scored by ood_detection.py. Default: the demo's.")
    parser.add_argument("--set", default=None, help="Split CSV or folder of the images (default: the run's validation split).")
    parser.add_argument("--n", type=int, default=24, help="Images. Default 24.")
    parser.add_argument("--seeds", type=int, default=5, help="Noise seeds per image. Default 5.")
    parser.add_argument("--draws", default="1,4", help="Numbers of averaged draws to measure. Default 1,4.")
    parser.add_argument("--detectors", default="recon,denoise", help="Detectors. Default recon,denoise.")
    return parser.parse_args(argv)


def scores_with(scorer, images, seed: int, draws: int) -> np.ndarray:
    """The scorer's scores of ``images`` with noise seed ``seed``, averaging ``draws`` draws."""
    scorer.settings = {**scorer.settings, "seed": seed}
    for measuring, *_ in scorer.detectors.values():
        measuring.noise_draws = draws
    return scorer.score(images)


def main(args: argparse.Namespace) -> None:
    from ddpm_ood import OODDetector
    from ddpm_ood.data.loading import load_split

    first = OODDetector.load(args.run, device="cpu", detector=args.detectors.split(",")[0])
    split = args.set or first.settings["split"]
    images = load_split(split, first.model.channels == 1, first_n=args.n, progress=False).images
    nudged = images.clone()
    nudged[:, 0, 0, 0] = torch.nextafter(nudged[:, 0, 0, 0], torch.tensor(2.0))  # one float step, one pixel
    print(f"{len(images)} images of {split}, {args.seeds} noise seeds each; run {args.run}")
    print(f"{'detector':9} {'score':10} {'draws':>5} {'NFE/img':>7} {'noise std':>9} {'std over images':>15} "
          f"{'threshold':>9} {'float step':>10} {'s/img':>6}")
    for detector in args.detectors.split(","):
        scorer = OODDetector.load(args.run, device="cpu", detector=detector)
        base = dict(scorer.settings)
        for draws in (int(d) for d in args.draws.split(",")):
            started = time.perf_counter()
            runs = np.stack([scores_with(scorer, images, seed, draws) for seed in range(args.seeds)])  # (S, N)
            seconds = (time.perf_counter() - started) / (args.seeds * len(images))
            step = np.abs(scores_with(scorer, nudged, 0, draws) - runs[0]).max()
            nfe = sum(m.nfe() for m, *_ in scorer.detectors.values())
            print(f"{detector:9} {scorer.score_name:10} {draws:>5} {nfe:>7} {runs.std(0, ddof=1).mean():>9.3f} "
                  f"{runs[0].std(ddof=1):>15.3f} {scorer.threshold:>9.3f} {step:>10.2g} {seconds:>6.2f}")
        scorer.settings = base


if __name__ == "__main__":
    main(parse_args())
