"""Small helpers shared by the four scripts: logging, device choice, flag parsing, exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

import torch

from src.checkpoint import CheckpointError
from src.config import ConfigError
from src.data import DataError
from src.datasets_download import DownloadError
from src.files import WriteError
from src.metrics import LPIPSUnavailable
from src.scoring import ScoringError
from src.training import NonFiniteLoss

# Errors that mean "bad input": reported as one clear line, no traceback, exit status 2.
USER_ERRORS = (DataError, ConfigError, CheckpointError, DownloadError, LPIPSUnavailable, ScoringError, NonFiniteLoss,
               WriteError, PermissionError)
logger = logging.getLogger("ddpm_ood")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


def str2bool(value: str) -> bool:
    """Accept 0/1/true/false/yes/no, as the seed README spells booleans (``--download_celeba=False``)."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "t"):
        return True
    if lowered in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {value!r}")


def binary_int(value: str) -> int:
    """The seed's ``--flag=0/1`` integers (also accepting true/false)."""
    return int(str2bool(value))


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return number


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu.")
    return device


def run_main(main: Callable[[argparse.Namespace], object], parse_args: Callable[[Sequence[str] | None], argparse.Namespace]) -> None:
    """Entry point: parse, run, and turn input errors into one message and exit status 2."""
    args = parse_args(None)
    setup_logging(getattr(args, "verbose", False))
    try:
        main(args)
    except USER_ERRORS as err:
        logger.error("%s", err)
        sys.exit(2)
