"""Reconstruction throughput, fused vs sequential, and how close the full path is to the bare UNet.

    python benchmarks/reconstruct_bench.py                 # the CPU setting
    python benchmarks/reconstruct_bench.py --setting paper --device cuda --precision bf16 --compile

Prints, for one batch of images reconstructed from every start point and scored:
- UNet image-evaluations per second and images scored per second, fused and sequential;
- the efficiency ratio = time of the bare UNet calls the fused path makes (same batch shapes,
  same run) / time of the full fused reconstruct-and-score path (1.0 = no overhead at all);
- with --flops, FLOP/s achieved (torch.utils.flop_counter) and its share of --peak_tflops;
- with --profile, the operators that take the most time in one fused batch.
All figures come from one run, so their ratios are comparable on a noisy machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import achieved, count_flops, sync  # noqa: E402
from ddpm_ood.models.config import CONFIG_DIR, build_schedule, build_unet, load_config  # noqa: E402
from ddpm_ood.diffusion.ddpm import PLMSSampler  # noqa: E402
from ddpm_ood.metrics.distances import LPIPSMetric  # noqa: E402
from ddpm_ood.models.loading import default_model_batch, in_chunks, unet_caller  # noqa: E402
from ddpm_ood.diffusion.reconstruction import measure_split  # noqa: E402

SETTINGS = {
    # name: (config, image size, channels, steps, skip, batch)
    "cpu": ("diffusion_demo.yaml", 28, 1, 20, 2, 16),
    "paper": ("diffusion_grayscale.yaml", 28, 1, 100, 16, 64),
    "paper_colour": ("diffusion_colour.yaml", 32, 3, 100, 16, 64),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=SETTINGS, default="cpu")
    parser.add_argument("--batch_size", default=None,
                        help="Override the setting's batch size; several, comma-separated, are timed in turn in one "
                             "process (one compilation), e.g. 64,256.")
    parser.add_argument("--steps", type=int, default=None, help="Override the setting's number of PLMS steps.")
    parser.add_argument("--skip", type=int, default=None, help="Override the setting's inference skip factor.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet.")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--cudnn_benchmark", action="store_true",
                        help="Let cuDNN time its convolution algorithms for each new shape.")
    parser.add_argument("--max_model_batch", type=int, default=-1,
                        help="Split UNet calls into chunks of this many images (0: never; default: the batch size on CPU).")
    parser.add_argument("--lpips", action="store_true",
                        help="Score with LPIPS too, as reconstruct.py does. Its AlexNet is randomly initialised "
                             "(the timing is real, the values are not), so no weights file is needed.")
    parser.add_argument("--repeats", type=int, default=2,
                        help="Timed repetitions of each path, alternating fused and sequential (after one warm-up each).")
    parser.add_argument("--skip_sequential", action="store_true", help="Only time the fused path.")
    parser.add_argument("--flops", action="store_true", help="Count FLOPs and report FLOP/s.")
    parser.add_argument("--peak_tflops", type=float, default=None, help="The card's peak, for the share of peak.")
    parser.add_argument("--profile", action="store_true",
                        help="Profile one more fused batch (the last batch size) and print the costliest operators.")
    return parser.parse_args(argv)


def main(args):
    config_name, size, channels, steps, skip, batch = SETTINGS[args.setting]
    batches = [int(b) for b in str(args.batch_size).split(",")] if args.batch_size else [batch]
    steps, skip = args.steps or steps, args.skip or skip
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    cfg = load_config(CONFIG_DIR / config_name)
    torch.manual_seed(0)
    model = build_unet(cfg).to(device).eval()
    unet = unet_caller(model, device, args.precision, args.channels_last, args.compile)
    schedule = build_schedule(cfg)
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(steps)
    starts = sampler.start_indices(skip)
    lpips_metric = LPIPSMetric(random_backbone=True).to(device) if args.lpips else None
    calls: list[int] = []

    def unet_call(x, t):
        calls.append(x.shape[0])
        return unet(x, t)

    evals_per_image = sum(int(j) + 2 for j in starts)
    print(f"setting {args.setting}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
          f"{size}x{size}x{channels}, {steps} steps, skip {skip} ({len(starts)} starts, {evals_per_image} evals/image), "
          f"{device}, {args.precision}{' + compile' if args.compile else ''}"
          f"{', channels_last' if args.channels_last else ''}{', cudnn.benchmark' if args.cudnn_benchmark else ''}, "
          f"{'MSE + LPIPS (random AlexNet)' if args.lpips else 'MSE'}")
    flops_per_image = count_flops(model, channels, size, device) if args.flops else None
    for batch in batches:
        max_batch = default_model_batch(batch, device) if args.max_model_batch < 0 else args.max_model_batch
        model_fn = in_chunks(unet_call, max_batch)
        images = torch.rand(batch, channels, size, size)
        names = [str(i) for i in range(batch)]

        def run(fused):
            measure_split(model_fn, schedule, sampler, images, names, "bench", starts, batch, 0, device,
                          lpips_metric=lpips_metric, fused=fused, progress=False)
            sync(device)

        print(f"-- batch {batch}, UNet calls of at most {max_batch or 'any number of'} images")
        # Warm up (and compile) every path, then alternate them, so that drift in a shared
        # machine's speed falls on both alike.
        modes = [True] if args.skip_sequential else [True, False]
        for fused in modes:
            run(fused)
        seconds, shapes = dict.fromkeys(modes, 0.0), {}
        for repeat in range(args.repeats):
            for fused in (modes if repeat % 2 == 0 else modes[::-1]):
                calls.clear()
                start = time.perf_counter()
                run(fused)
                seconds[fused] += (time.perf_counter() - start) / args.repeats
                shapes[fused] = list(calls)
        results = {fused: (seconds[fused], shapes[fused]) for fused in modes}
        for fused, (secs, call_shapes) in results.items():
            label = "fused" if fused else "sequential"
            print(f"{label:>10}: {secs:8.3f} s/batch  {batch * evals_per_image / secs:10.0f} UNet image-evals/s  "
                  f"{batch / secs:8.2f} images scored/s  ({len(call_shapes)} UNet calls/batch)")
        if False in results:
            print(f"fused speed-up over sequential: {results[False][0] / results[True][0]:.2f}x")

        bare = time_bare_calls(unet_call, results[True][1], channels, size, device, args.repeats)
        print(f"bare UNet calls: {bare:.3f} s/batch; efficiency ratio (bare / full fused path): {bare / results[True][0]:.3f}")
        if flops_per_image is not None:
            rate = flops_per_image * batch * evals_per_image / results[True][0]
            print(f"UNet forward: {flops_per_image / 1e9:.2f} GFLOP/image; fused path achieved "
                  f"{achieved(rate, args.peak_tflops)}")
    if args.profile:
        print_profile(lambda: run(True), device)


def time_bare_calls(unet_call, shapes: list[int], channels: int, size: int, device, repeats: int) -> float:
    """Seconds per batch for the bare UNet calls of ``shapes`` (one warm-up call per shape first)."""
    inputs = {n: torch.rand(n, channels, size, size, device=device) for n in set(shapes)}
    timesteps = {n: torch.full((n,), 500, device=device) for n in set(shapes)}
    with torch.no_grad():
        for n in set(shapes):
            unet_call(inputs[n], timesteps[n])
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            for n in shapes:
                unet_call(inputs[n], timesteps[n])
        sync(device)
    return (time.perf_counter() - start) / repeats


def print_profile(run, device, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of one fused batch, top {rows} operators by {sort_by}:")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


if __name__ == "__main__":
    main(parse_args())
