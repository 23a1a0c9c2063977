"""How a process runs: which device, which numeric precision, and the Ctrl-C flag.

Library modules take these from here (``src/cli.py`` belongs to the four scripts). Nothing heavy
is imported at module level: the scripts' parsers read ``PRECISIONS``, and ``--help`` must answer
without loading torch.
"""
from __future__ import annotations

import contextlib
import signal

from ddpm_ood.utils.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device) -> str:
    """``auto``: fp16 autocast with a GradScaler on CUDA (as the paper's code), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device):
    """The autocast context for ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format(channels_last: bool, ndim: int):
    """The layout of an ``ndim``-dimensional batch: contiguous, or with ``channels_last`` the channels-last
    layout of its rank (``torch.channels_last`` for 4D image batches, ``channels_last_3d`` for 5D volumes;
    torch refuses either on the other rank)."""
    import torch

    if not channels_last or ndim not in (4, 5):
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def to_channels_last(module):
    """``module`` (in place, returned) with each 4D parameter and buffer in ``channels_last`` and each 5D one in
    ``channels_last_3d``: ``Module.to(memory_format=...)`` takes one layout, which fails on a 3D model."""
    import itertools

    import torch

    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.dim() in (4, 5):
                tensor.data = tensor.data.contiguous(memory_format=memory_format(True, tensor.dim()))
    return module


def pick_device(name: str):
    """``auto``: CUDA when present, else CPU. An unavailable device is refused, naming it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Ctrl-C raises KeyboardInterrupt and sets the flag :func:`check_interrupted` reads."""
    signal.signal(signal.SIGINT, _on_sigint)


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed. Long loops call this at safe points: a
    KeyboardInterrupt raised inside a finalizer or a callback is only printed by Python and
    lost, and the run would go on; the flag is not."""
    if _interrupted:
        raise KeyboardInterrupt
