"""Numeric precision of the UNet, shared by training and inference.

``PRECISIONS`` is read by the scripts' argument parsers, so this module imports torch only
inside the functions that need it (``--help`` stays fast).
"""
from __future__ import annotations

import contextlib

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
