"""Latent against pixel space, and the memory of 3D reconstruction (issue 25's figures).

    python benchmarks/latent_bench.py speed     # 64x64 grayscale: reconstruct-and-score per image, pixel vs latent
    python benchmarks/latent_bench.py memory    # peak memory per volume of reconstruction, 32^3 and 64^3

``speed``: the same UNet config (the demo's) in pixel space on 64x64 images and in latent space on
a VQ-VAE's 16x16x3 latents (two downsampling levels), both reconstructing from every start of one
PLMS grid and scored with MSE (and LPIPS with --lpips) in image space, the latent one including
its encoder and decoder. Random weights: the cost does not depend on them. Both in one process,
one after the other, so the ratio is of one run.

``memory``: each configuration in a fresh subprocess (its peak resident memory is its own): the 3D
demo UNet on 32^3 and 64^3 volumes, in pixel space and on a 3D VQ-VAE's latents (a quarter per
side), one volume reconstructed from every start point; prints the peak resident set size above
what the process held after building the model, per volume. On CUDA, torch's peak allocation.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_ood.models.config import CONFIG_DIR, build_schedule, build_unet, load_config  # noqa: E402
from ddpm_ood.diffusion.ddpm import PLMSSampler  # noqa: E402
from ddpm_ood.models.first_stage import LatentSpace, build_autoencoder  # noqa: E402
from ddpm_ood.models.loading import model_function  # noqa: E402
from ddpm_ood.diffusion.reconstruction import measure_split  # noqa: E402


def vqvae(dims: int, levels: int = 2, latent: int = 3) -> LatentSpace:
    network = {"spatial_dims": dims, "in_channels": 1, "out_channels": 1, "channels": [16, 32][:levels],
               "num_res_channels": [16, 32][:levels], "num_res_layers": 1,
               "downsample_parameters": [[2, 4, 1, 1]] * levels, "upsample_parameters": [[2, 4, 1, 1, 0]] * levels,
               "num_embeddings": 64, "embedding_dim": latent}
    torch.manual_seed(0)
    module = build_autoencoder("vqvae", network).eval()
    return LatentSpace(module, "vqvae", network, (1,) + (0,) * dims, 1.0)


def model(config: str, channels: int, dims: int, device):
    cfg = load_config(CONFIG_DIR / config, [f"ldm.params.unet_config.params.in_channels={channels}",
                                            f"ldm.params.unet_config.params.out_channels={channels}",
                                            f"ldm.params.unet_config.params.dims={dims}"])
    torch.manual_seed(0)
    unet = build_unet(cfg).to(device).eval()
    return model_function(unet, device, "fp32", max_batch=0), build_schedule(cfg)


def reconstruct(fn, schedule, images, space, steps, device, lpips=None):
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(steps)
    starts = list(range(len(sampler.grid)))
    return measure_split(fn, schedule, sampler, images, [f"{i}" for i in range(len(images))], "bench", starts,
                         len(images), 0, device, lpips, progress=False, space=space)


def speed(args) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads) if args.threads else None
    images = torch.rand(args.images, 1, 64, 64)
    lpips = None
    if args.lpips:
        from ddpm_ood.metrics.distances import LPIPSMetric
        lpips = LPIPSMetric().to(device)
    space = vqvae(2).to(device)
    latent_channels = space.network["embedding_dim"]
    rows = {}
    for name, channels, sp in (("pixel", 1, None), ("latent", latent_channels, space)):
        fn, schedule = model("diffusion_demo.yaml", channels, 2, device)
        reconstruct(fn, schedule, images[:2], sp, args.steps, device, lpips)  # warm-up
        started = time.perf_counter()
        reconstruct(fn, schedule, images, sp, args.steps, device, lpips)
        rows[name] = (time.perf_counter() - started) / len(images)
    shape = tuple(space.encode(images[:1].to(device)).shape[1:])
    print(f"64x64 grayscale, {args.images} images, every start of a {args.steps}-step grid, "
          f"MSE{' + LPIPS' if lpips else ''}, {args.device}, {torch.get_num_threads()} threads")
    print(f"pixel  (1x64x64): {rows['pixel']:.3f} s per image")
    print(f"latent {shape}: {rows['latent']:.3f} s per image (VQ-VAE encode and decode included)")
    print(f"latent is {rows['pixel'] / rows['latent']:.1f}x cheaper")


def memory_one(args) -> None:
    """One configuration, in this process: prints a JSON line."""
    device = torch.device(args.device)
    space = vqvae(3).to(device) if args.space == "latent" else None
    channels = space.network["embedding_dim"] if space else 1
    fn, schedule = model("diffusion_3d_demo.yaml", channels, 3, device)
    volumes = torch.rand(1, 1, args.size, args.size, args.size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    reconstruct(fn, schedule, volumes, space, args.steps, device)
    seconds = time.perf_counter() - started
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB
    gpu = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    print(json.dumps({"size": args.size, "space": args.space, "peak_rss_mib": round(peak, 1),
                      "peak_cuda_mib": None if gpu is None else round(gpu, 1), "seconds": round(seconds, 2)}))


def memory(args) -> None:
    print(f"peak memory of reconstructing one volume from every start of a {args.steps}-step grid "
          f"(3D demo UNet; {args.device}); each in a fresh process")
    for size in (32, 64):
        for space in ("pixel", "latent"):
            out = subprocess.run([sys.executable, __file__, "memory_one", "--size", str(size), "--space", space,
                                  "--steps", str(args.steps), "--device", args.device],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            gpu = f", CUDA peak {row['peak_cuda_mib']} MiB" if row["peak_cuda_mib"] is not None else ""
            print(f"{size}^3 {space:6s}: peak RSS +{row['peak_rss_mib']} MiB{gpu}, {row['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "memory", "memory_one"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="PLMS grid steps (every start is used). Default 10.")
    parser.add_argument("--images", type=int, default=16, help="speed: images timed. Default 16.")
    parser.add_argument("--lpips", action="store_true", help="speed: score LPIPS too (needs the AlexNet weights).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--space", default="pixel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    {"speed": speed, "memory": memory, "memory_one": memory_one}[args.what](args)


if __name__ == "__main__":
    main()
