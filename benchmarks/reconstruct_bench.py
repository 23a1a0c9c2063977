"""Reconstruction throughput, fused vs sequential, and how close the full path is to the bare UNet.

    python benchmarks/reconstruct_bench.py                 # the CPU setting
    python benchmarks/reconstruct_bench.py --setting paper --device cuda --precision bf16 --compile

Prints, for one batch of images reconstructed from every start point and scored:
- UNet image-evaluations per second and images scored per second, fused and sequential;
- the efficiency ratio = time of the bare UNet calls the fused path makes (same batch shapes,
  same run) / time of the full fused reconstruct-and-score path (1.0 = no overhead at all);
- with --flops, FLOP/s achieved (torch.utils.flop_counter) and its share of --peak_tflops.
All figures come from one run, so their ratios are comparable on a noisy machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import CONFIG_DIR, build_schedule, build_unet, load_config  # noqa: E402
from src.diffusion import PLMSSampler  # noqa: E402
from src.reconstruction import default_model_batch, in_chunks, measure_split, unet_caller  # noqa: E402

SETTINGS = {
    # name: (config, image size, channels, steps, skip, batch)
    "cpu": ("diffusion_demo.yaml", 28, 1, 20, 2, 16),
    "paper": ("diffusion_grayscale.yaml", 28, 1, 100, 16, 64),
    "paper_colour": ("diffusion_colour.yaml", 32, 3, 100, 16, 64),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=SETTINGS, default="cpu")
    parser.add_argument("--batch_size", type=int, default=None, help="Override the setting's batch size.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet.")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--max_model_batch", type=int, default=-1,
                        help="Split UNet calls into chunks of this many images (0: never; default: the batch size on CPU).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed repetitions (after one warm-up).")
    parser.add_argument("--skip_sequential", action="store_true", help="Only time the fused path.")
    parser.add_argument("--flops", action="store_true", help="Count FLOPs and report FLOP/s.")
    parser.add_argument("--peak_tflops", type=float, default=None, help="The card's peak, for the share of peak.")
    return parser.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(args):
    config_name, size, channels, steps, skip, batch = SETTINGS[args.setting]
    batch = args.batch_size or batch
    device = torch.device(args.device)
    cfg = load_config(CONFIG_DIR / config_name)
    torch.manual_seed(0)
    model = build_unet(cfg).to(device).eval()
    unet = unet_caller(model, device, args.precision, args.channels_last, args.compile)
    schedule = build_schedule(cfg)
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(steps)
    starts = sampler.start_indices(skip)
    calls: list[tuple[int, int]] = []

    def unet_call(x, t):
        calls.append(x.shape[0])
        return unet(x, t)

    max_batch = default_model_batch(batch, device) if args.max_model_batch < 0 else args.max_model_batch
    model_fn = in_chunks(unet_call, max_batch)

    images = torch.rand(batch, channels, size, size)
    names = [str(i) for i in range(batch)]
    evals_per_image = sum(int(j) + 2 for j in starts)
    print(f"setting {args.setting}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
          f"{size}x{size}x{channels}, {steps} steps, skip {skip} ({len(starts)} starts, {evals_per_image} evals/image), "
          f"batch {batch}, {device}, {args.precision}{' + compile' if args.compile else ''}, "
          f"UNet calls of at most {max_batch or 'any number of'} images")

    def run(fused):
        measure_split(model_fn, schedule, sampler, images, names, "bench", starts, batch, 0, device,
                      fused=fused, progress=False)
        sync(device)

    results = {}
    for fused in ([True] if args.skip_sequential else [True, False]):
        run(fused)  # warm-up (and compilation)
        calls.clear()
        start = time.perf_counter()
        for _ in range(args.repeats):
            run(fused)
        seconds = (time.perf_counter() - start) / args.repeats
        results[fused] = (seconds, list(calls[: len(calls) // args.repeats]))
        label = "fused" if fused else "sequential"
        print(f"{label:>10}: {seconds:8.3f} s/batch  {batch * evals_per_image / seconds:10.0f} UNet image-evals/s  "
              f"{batch / seconds:8.2f} images scored/s  ({len(results[fused][1])} UNet calls/batch)")
    if False in results:
        print(f"fused speed-up over sequential: {results[False][0] / results[True][0]:.2f}x")

    # Bare UNet calls with the fused path's batch shapes, timed in the same run.
    shapes = results[True][1]
    inputs = {n: torch.rand(n, channels, size, size, device=device) for n in set(shapes)}
    timesteps = {n: torch.full((n,), 500, device=device) for n in set(shapes)}
    with torch.no_grad():
        for n in set(shapes):
            unet_call(inputs[n], timesteps[n])
        sync(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            for n in shapes:
                unet_call(inputs[n], timesteps[n])
        sync(device)
    bare = (time.perf_counter() - start) / args.repeats
    print(f"bare UNet calls: {bare:.3f} s/batch; efficiency ratio (bare / full fused path): {bare / results[True][0]:.3f}")

    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.rand(1, channels, size, size, device=device), torch.full((1,), 500, device=device))
        flops_per_image = counter.get_total_flops()
        achieved = flops_per_image * batch * evals_per_image / results[True][0]
        share = f" = {100 * achieved / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops} TFLOP/s peak" if args.peak_tflops else ""
        print(f"UNet forward: {flops_per_image / 1e9:.2f} GFLOP/image; achieved {achieved / 1e12:.2f} TFLOP/s{share}")


if __name__ == "__main__":
    main(parse_args())
