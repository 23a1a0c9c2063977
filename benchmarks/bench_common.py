"""What both benchmarks share: device synchronisation, FLOP counting and the share of a peak."""
from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queue, so that a wall-clock timer measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, channels: int, size: int, device: torch.device, backward: bool = False,
                dims: int = 2) -> int:
    """FLOPs of one image (``dims`` 3: volume) through the UNet (torch.utils.flop_counter): forward, plus backward
    if asked."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.rand(1, channels, *(size,) * dims, device=device), torch.full((1,), 500, device=device)
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


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a pre-empted machine would.

    torchrun starts each rank in a session of its own, so killing torchrun's process group
    would leave the ranks running (and, with a partner gone, waiting forever in a collective).
    The tree is read from /proc (Linux): every process whose parent chain leads to ``pid``.
    """
    import os
    import signal
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process has just exited
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
