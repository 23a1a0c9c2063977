"""What each detector costs on a pretrained diffusers model: UNet calls and seconds per image.

    python benchmarks/pretrained_bench.py                                  # a tiny random UNet2DModel (16x16x3)
    python benchmarks/pretrained_bench.py --architecture ddpm-cifar10-32   # that model's architecture, random weights
    python benchmarks/pretrained_bench.py --pretrained google/ddpm-cifar10-32 --device cuda   # the real weights

Builds the model through the one model loader (as reconstruct.py --pretrained does), measures
``--n`` random images with every detector at its reconstruct.py settings (the paper's score at
``--steps``/``--skip``) and prints, per detector, UNet evaluations per image (counted, not
derived) and seconds per image (after one warm-up batch), all from one run. With random weights
the timing is real and the scores are not.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import sync  # noqa: E402

ARCHITECTURES = {
    "tiny": dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=4, attention_head_dim=4),
    # google/ddpm-cifar10-32 as its model card describes it: 4 levels of 128/256/256/256 channels, 2 layers per
    # level, attention at 16x16 (about 36M parameters).
    "ddpm-cifar10-32": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                            layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                                  "DownBlock2D"),
                            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_eps=1e-6,
                            downsample_padding=0, flip_sin_to_cos=False, freq_shift=1),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default=None, help="A diffusers folder or hub id; default: a random model.")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="tiny", help="The random model's shape.")
    parser.add_argument("--n", type=int, default=32, help="Images measured per detector. Default 32.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="The paper's score: PLMS steps. Default 100.")
    parser.add_argument("--skip", type=int, default=16, help="The paper's score: start-point skip. Default 16.")
    parser.add_argument("--detectors", default="recon,path,msma,denoise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    return parser.parse_args(argv)


def random_model(architecture: str, folder: Path) -> str:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(**ARCHITECTURES[architecture]).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear").save_pretrained(folder)
    return str(folder)


def main(args) -> dict:
    from ddpm_ood.detectors import detector_class, measure_knobs
    from ddpm_ood.models.loading import DiffusersModel, load_model
    from ddpm_ood.models.diffusers_models import load_pretrained

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.pretrained or random_model(args.architecture, Path(tmp) / "model")
        model = load_model(DiffusersModel(source), device, args.precision, batch_size=args.batch_size)
        parameters = sum(p.numel() for p in load_pretrained(source).module.parameters())
    calls = {"images": 0}
    inner = model.model_fn

    def counted(x, t):
        calls["images"] += x.shape[0]
        return inner(x, t)

    model.model_fn = counted
    defaults = {k.dest: k.default for k in measure_knobs()}  # reconstruct.py's, every detector's
    knobs = SimpleNamespace(**{**defaults, "num_inference_steps": args.steps, "inference_skip_factor": args.skip,
                               "metrics": "mse"})
    images = torch.rand(args.n, *model.image_shape, generator=torch.Generator().manual_seed(0))
    names = [f"image_{i}" for i in range(args.n)]
    label = args.pretrained or f"a random {args.architecture} UNet2DModel"
    print(f"{label}: {parameters / 1e6:.2f}M parameters, images {model.image_shape}, {args.n} images per "
          f"detector, batch {args.batch_size}, {device}, {args.precision}")
    print(f"{'detector':>8}  {'NFE/img':>7}  {'s/img':>8}")
    figures = {}
    for name in args.detectors.split(","):
        detector = detector_class(name).from_args(knobs, model)
        detector.measure(model, images[:args.batch_size], names[:args.batch_size], "warm-up", args.batch_size, 0, progress=False)
        sync(device)
        calls["images"] = 0
        start = time.perf_counter()
        detector.measure(model, images, names, "bench", args.batch_size, 0, progress=False)
        sync(device)
        seconds = (time.perf_counter() - start) / args.n
        nfe = calls["images"] / args.n
        assert nfe == detector.nfe(), (name, nfe, detector.nfe())  # counted = what the manifest records
        figures[name] = (nfe, seconds)
        print(f"{name:>8}  {nfe:7.0f}  {seconds:8.4f}")
    return figures


if __name__ == "__main__":
    main(parse_args())
