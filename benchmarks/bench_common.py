"""What both benchmarks share: device synchronisation, FLOP counting and the share of a peak."""
from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queue, so that a wall-clock timer measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, channels: int, size: int, device: torch.device, backward: bool = False) -> int:
    """FLOPs of one image through the UNet (torch.utils.flop_counter): forward, plus backward if asked."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.rand(1, channels, size, size, device=device), torch.full((1,), 500, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        out = model(x, t)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def achieved(flops_per_second: float, peak_tflops: float | None) -> str:
    """'12.34 TFLOP/s', with its share of ``peak_tflops`` when given."""
    text = f"{flops_per_second / 1e12:.2f} TFLOP/s"
    if peak_tflops:
        text += f" = {100 * flops_per_second / (peak_tflops * 1e12):.1f}% of {peak_tflops} TFLOP/s peak"
    return text
