"""Training throughput and the share of step time spent waiting for data.

    python benchmarks/train_bench.py                       # the CPU setting (demo model)
    python benchmarks/train_bench.py --setting paper --device cuda --precision bf16 --compile
    python benchmarks/train_bench.py --setting cpu_3d --channels_last   # the 3D demo's UNet on 32^3 volumes

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
    parser.add_argument("--steps", type=int, default=20, help="Timed steps (after 3 warm-up steps).")
    parser.add_argument("--n_images", type=int, default=None,
                        help="Size of the random in-memory data set (default 4000 images, 160 volumes as the 3D demo).")
    parser.add_argument("--flops", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None)
    return parser.parse_args(argv)


def main(args):
    config_name, size, channels, batch, dims = SETTINGS[args.setting]
    device = torch.device(args.device)
    cfg = load_config(CONFIG_DIR / config_name)
    torch.manual_seed(0)
    layout = memory_format(args.channels_last, 2 + dims)  # as training does
    model = build_unet(cfg).to(device)
    if args.channels_last:
        to_channels_last(model)
    net = compile_unet(model) if args.compile else model  # as training does
    schedule = build_schedule(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    images = torch.rand(args.n_images or (4000 if dims == 2 else 160), channels, *(size,) * dims)
    if device.type == "cuda" and images.numel() * 4 <= MAX_DEVICE_DATA_BYTES:
        images = images.to(device)  # as training does
    order = epoch_order(len(images), 0, 0).to(images.device)  # as training does
    print(f"setting {args.setting}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter UNet, "
          f"{'x'.join([str(size)] * dims)}x{channels}, batch {batch}, {device}, {args.precision}{' + compile' if args.compile else ''}"
          f"{' + channels_last' if args.channels_last else ''}")

    data_time = step_time = 0.0
    n_batches = len(images) // batch
    for step in range(args.steps + 3):
        sync(device)
        start = time.perf_counter()
        x0 = train_batch(images, order, step % n_batches, batch, device, layout)
        sync(device)
        fetched = time.perf_counter()
        t, noise = step_noise(0, step, len(x0), x0.shape[1:], schedule.num_timesteps, device)
        train_step(net, model, schedule, optimizer, scaler, x0, t, noise, args.precision)
        sync(device)
        if step >= 3:
            data_time += fetched - start
            step_time += time.perf_counter() - start
    ips = args.steps * batch / step_time
    print(f"training: {ips:.1f} images/s ({step_time / args.steps * 1000:.1f} ms/step); "
          f"data wait {100 * data_time / step_time:.2f}% of step time")
    if args.flops:
        flops = count_flops(model, channels, size, device, backward=True, dims=dims)
        print(f"UNet forward+backward: {flops / 1e9:.2f} GFLOP/image; achieved {achieved(flops * ips, args.peak_tflops)}")

if __name__ == "__main__":
    main(parse_args())
