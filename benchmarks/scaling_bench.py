"""Throughput of training and reconstruction on 1 and N processes (torchrun, one thread each),
and the scaling efficiency: N-process throughput / (N x 1-process throughput).

    python benchmarks/scaling_bench.py                  # 1 and 2 processes, the demo UNet, CPU
    python benchmarks/scaling_bench.py --nproc 4 --device cuda --setting paper

Each measurement launches this script under ``torchrun --nproc_per_node=N`` as a worker that
runs the code the scripts run: ``TrainLoop.step_at`` (DDP, the global batch split over the
ranks) and ``measure_split`` over each rank's chunks (as reconstruct.py shares them). Warm-up
steps are not timed; the ranks meet at a barrier before and after the timed part, so the time
is the slowest rank's. Prints images/s for each and the efficiencies.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"cpu": "diffusion_demo.yaml", "paper": "diffusion_grayscale.yaml"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="Processes to compare with one. Default 2.")
    parser.add_argument("--setting", choices=SETTINGS, default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train_batch", type=int, default=64, help="Global training batch. Default 64.")
    parser.add_argument("--train_steps", type=int, default=12, help="Timed training steps. Default 12.")
    parser.add_argument("--recon_images", type=int, default=128, help="Images reconstructed. Default 128.")
    parser.add_argument("--worker", choices=("train", "reconstruct"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args) -> None:
    import torch

    from ddpm_ood.models.config import CONFIG_DIR, build_schedule, build_unet, load_config
    from ddpm_ood.diffusion.ddpm import PLMSSampler
    from ddpm_ood.utils.distributed import init_distributed, shutdown
    from ddpm_ood.models.loading import model_function
    from ddpm_ood.diffusion.reconstruction import measure_split
    from ddpm_ood.training.ddpm import TrainLoop
    from ddpm_ood.training.settings import TrainSettings
    from ddpm_ood.training.loop import epoch_order

    dist, device = init_distributed(torch.device(args.device))
    cfg = load_config(CONFIG_DIR / SETTINGS[args.setting])
    torch.manual_seed(0)
    model, schedule = build_unet(cfg), build_schedule(cfg)
    images = torch.rand(max(args.recon_images, args.train_batch * 4), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if args.worker == "train":
        settings = TrainSettings(n_epochs=1, batch_size=args.train_batch, lr=1e-4)
        loop = TrainLoop(model, schedule, images, images[:8], settings, Path("unused"), {}, device, dist)
        loop.start(None)
        order = epoch_order(len(images), 0, 0)
        steps_per_epoch = len(images) // args.train_batch
        for i in range(3):  # warm-up
            loop.step_at(order, i % steps_per_epoch)
        dist.barrier()
        start = time.perf_counter()
        for i in range(args.train_steps):
            loop.step_at(order, i % steps_per_epoch)
        dist.barrier()
        seconds, n_images = time.perf_counter() - start, args.train_steps * args.train_batch
    else:
        model = model_function(model.to(device).eval(), device)  # as reconstruct.py calls it
        sampler = PLMSSampler(schedule)
        sampler.set_timesteps(20)
        starts = sampler.start_indices(4)
        chunk, batch = 16, 16
        chunks = [(k, s) for k, s in enumerate(range(0, args.recon_images, chunk)) if k % dist.world_size == dist.rank]
        measure_split(model, schedule, sampler, images[:batch], ["w"] * batch, "warm-up", starts, batch, 0, device,
                      progress=False)
        dist.barrier()
        start = time.perf_counter()
        for k, first in chunks:
            x = images[first:first + chunk]
            measure_split(model, schedule, sampler, x, ["x"] * len(x), "bench", starts, batch, 0, device,
                          progress=False, index_offset=first)
        dist.barrier()
        seconds, n_images = time.perf_counter() - start, args.recon_images
    if dist.is_main:
        print("RESULT " + json.dumps({"images_per_s": n_images / seconds, "seconds": seconds}), flush=True)
    shutdown(dist)


def measure(args, kind: str, nproc: int) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(Path(__file__).resolve()), f"--worker={kind}", f"--setting={args.setting}", f"--device={args.device}",
               f"--train_batch={args.train_batch}", f"--train_steps={args.train_steps}",
               f"--recon_images={args.recon_images}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise SystemExit(f"{kind} on {nproc} process(es) failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])["images_per_s"]


def main(args) -> dict:
    if args.worker:
        worker(args)
        return {}
    print(f"setting {args.setting} on {args.device}, one thread per process; training batch {args.train_batch} "
          f"(global), reconstruction of {args.recon_images} images (20 steps, 5 starts)")
    figures = {}
    for kind in ("train", "reconstruct"):
        one = measure(args, kind, 1)
        many = measure(args, kind, args.nproc)
        efficiency = many / (args.nproc * one)
        figures[kind] = (one, many, efficiency)
        print(f"{kind}: 1 process {one:.1f} images/s, {args.nproc} processes {many:.1f} images/s; "
              f"scaling efficiency {efficiency:.2f}")
    return figures


if __name__ == "__main__":
    main(parse_args())
