"""Small helpers shared by the four scripts: logging, device choice, flag parsing, exit codes.

Imports nothing heavy: the scripts parse their flags (and answer ``--help``) before torch,
pandas or scikit-learn are loaded.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
from typing import Callable, Sequence

from src.errors import ConfigError, UserError

logger = logging.getLogger("ddpm_ood")

# Exit status for bad input: one clear line, no traceback. 130 is the shell's for Ctrl-C.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# A run or set name becomes a folder or file name: letters, digits and . _ + -, starting with a
# letter or digit (so never "", ".", ".." or a hidden name), and no path separator.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


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


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value}")
    return number


def _ranged(convert: Callable[[str], float], is_valid: Callable[[float], bool], expected: str):
    """An argparse type: ``convert`` the text, then refuse values outside the range, saying which."""
    def parse(value: str):
        number = convert(value)
        if not is_valid(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return number
    return parse


positive_int = _ranged(_integer, lambda n: n >= 1, "a positive integer")
non_negative_int = _ranged(_integer, lambda n: n >= 0, "a non-negative integer")
positive_float = _ranged(_number, lambda x: x > 0, "a number above 0")
non_negative_float = _ranged(_number, lambda x: x >= 0, "a number of at least 0")
unit_fraction = _ranged(_number, lambda x: 0 < x < 1, "a fraction strictly between 0 and 1")
decay_rate = _ranged(_number, lambda x: 0 <= x < 1, "a decay in [0, 1) (0: off)")  # an EMA decay
# A random seed: what every generator we seed accepts.
seed_value = _ranged(_integer, lambda n: 0 <= n < 2**63, "a seed between 0 and 2**63 - 1")


def device_name(value: str) -> str:
    if not DEVICE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def plain_name(value: str) -> str:
    """A run name: one plain folder name inside --output_dir, never a path."""
    if not PLAIN_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a plain name: use letters, digits and . _ + - (starting with a letter or digit), "
            "no path separators; the run's folder is always OUTPUT_DIR/MODEL_NAME")
    return value


def pick_device(name: str):
    """``auto``: CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but CUDA is not available; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


# Results set names that are not OOD sets: results_val/in/fit.csv (reconstruct.py names OOD sets
# after their split CSVs, so it refuses these; ood_detection.py does not score them as OOD).
RESERVED_SETS = ("val", "in", "fit")

_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed. Long loops call this at safe points: a
    KeyboardInterrupt raised inside a finalizer or a callback is only printed by Python and
    lost, and the run would go on; the flag is not."""
    if _interrupted:
        raise KeyboardInterrupt


def run_main(main: Callable[[argparse.Namespace], object], parse_args: Callable[[Sequence[str] | None], argparse.Namespace]) -> None:
    """Entry point: parse, run, and turn input errors into one message and exit status 2, and
    Ctrl-C into one line and exit status 130."""
    args = parse_args(None)
    setup_logging(getattr(args, "verbose", False))
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        main(args)
    except (UserError, PermissionError) as err:
        logger.error("%s", err)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
