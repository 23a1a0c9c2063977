"""Training throughput and the share of step time spent waiting for data.

    python benchmarks/train_bench.py                       # the CPU setting (demo model)
    python benchmarks/train_bench.py --setting paper --device cuda --precision bf16 --compile
    python benchmarks/train_bench.py --setting cpu_3d --compare_channels_last   # the 3D demo's UNet, both layouts

Runs the training step of src/training.py (batch from the in-memory data set, forward,
L2 loss, backward, the finite check, Adam) on random images and prints images/s and the data wait share:
time spent producing batches / total step time (the device is synchronised around the
batch fetch, so the share is an upper bound). With --flops, FLOP/s achieved (the counted
forward + backward FLOPs per image) and its share of --peak_tflops.
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
from ddpm_ood.training.ddpm import MAX_DEVICE_DATA_BYTES, step_noise, train_batch, train_step  # noqa: E402
from ddpm_ood.training.loop import epoch_order  # noqa: E402
from ddpm_ood.models.unet import compile_unet  # noqa: E402
from ddpm_ood.utils.runtime import memory_format, to_channels_last  # noqa: E402

SETTINGS = {
    # name: (config, image size, channels, batch, spatial dimensions)
    "cpu": ("diffusion_demo.yaml", 28, 1, 64, 2),
    "cpu_3d": ("diffusion_3d_demo.yaml", 32, 1, 16, 3),
    "paper": ("diffusion_grayscale.yaml", 28, 1, 180, 2),
    "paper_colour": ("diffusion_colour.yaml", 32, 3, 180, 2),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=SETTINGS, default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compare_channels_last", action="store_true",
                        help="Time the default and the channels-last layout, a step of each in turn, and print the ratio.")
    parser.add_argument("--batch_size", type=int, default=None, help="Default: the setting's.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps (after 3 warm-up steps).")
    parser.add_argument("--n_images", type=int, default=None,
                        help="Size of the random in-memory data set (default 4000 images, 160 volumes as the 3D demo).")
    parser.add_argument("--flops", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None)
    return parser.parse_args(argv)


def main(args):
    config_name, size, channels, batch, dims = SETTINGS[args.setting]
    batch = args.batch_size or batch
    device = torch.device(args.device)
    cfg = load_config(CONFIG_DIR / config_name)
    schedule = build_schedule(cfg)
    layouts = (False, True) if args.compare_channels_last else (args.channels_last,)
    runs = [Run(cfg, device, channels_last, dims, args) for channels_last in layouts]
    images = torch.rand(args.n_images or (4000 if dims == 2 else 160), channels, *(size,) * dims)
    if device.type == "cuda" and images.numel() * 4 <= MAX_DEVICE_DATA_BYTES:
        images = images.to(device)  # as training does
    order = epoch_order(len(images), 0, 0).to(images.device)  # as training does
    model = runs[0].model
    print(f"setting {args.setting}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
          f"{'x'.join([str(size)] * dims)}x{channels}, batch {batch}, {device}, {args.precision}"
          f"{' + compile' if args.compile else ''}{' + channels_last' if args.channels_last else ''}")

    n_batches = len(images) // batch
    for step in range(args.steps + 3):
        for run in runs:  # step by step in turn, so that a shared machine's drift falls on every layout
            run.step(images, order, step, n_batches, batch, schedule, timed=step >= 3)
    for run in runs:
        ips = args.steps * batch / run.step_time
        label = f" ({'channels_last' if run.channels_last else 'contiguous'})" if len(runs) > 1 else ""
        print(f"training{label}: {ips:.1f} images/s ({run.step_time / args.steps * 1000:.1f} ms/step); "
              f"data wait {100 * run.data_time / run.step_time:.2f}% of step time")
    if len(runs) > 1:
        print(f"channels_last speed-up: {runs[0].step_time / runs[1].step_time:.2f}x")
    if args.flops:
        flops = count_flops(model, channels, size, device, backward=True, dims=dims)
        ips = args.steps * batch / runs[-1].step_time
        print(f"UNet forward+backward: {flops / 1e9:.2f} GFLOP/image; achieved {achieved(flops * ips, args.peak_tflops)}")


class Run:
    """One model in one memory layout, trained as train.py trains it, with its time kept."""

    def __init__(self, cfg, device, channels_last: bool, dims: int, args):
        torch.manual_seed(0)
        self.device, self.precision, self.channels_last = device, args.precision, channels_last
        self.layout = memory_format(channels_last, 2 + dims)  # as training does
        self.model = build_unet(cfg).to(device)
        if channels_last:
            to_channels_last(self.model)
        self.net = compile_unet(self.model) if args.compile else self.model  # as training does
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2.5e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        self.data_time = self.step_time = 0.0

    def step(self, images, order, step, n_batches, batch, schedule, timed: bool) -> None:
        sync(self.device)
        start = time.perf_counter()
        x0 = train_batch(images, order, step % n_batches, batch, self.device, self.layout)
        sync(self.device)
        fetched = time.perf_counter()
        t, noise = step_noise(0, step, len(x0), x0.shape[1:], schedule.num_timesteps, self.device)
        train_step(self.net, self.model, schedule, self.optimizer, self.scaler, x0, t, noise, self.precision)
        sync(self.device)
        if timed:
            self.data_time += fetched - start
            self.step_time += time.perf_counter() - start


if __name__ == "__main__":
    main(parse_args())
