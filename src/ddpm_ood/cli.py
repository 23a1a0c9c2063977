"""What the four scripts share: flag types, the detectors' flags, logging, the error boundary.

Only the scripts import this module (the library takes its facts from ``ddpm_ood.utils.runtime`` and
``ddpm_ood.runs.layout``). Imports nothing heavy: the scripts parse their flags (and answer ``--help``)
before torch, pandas or scikit-learn are loaded.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from ddpm_ood.utils.errors import UserError
from ddpm_ood.runs.layout import MAX_NAME, PLAIN_NAME
from ddpm_ood.utils.runtime import install_interrupt_handler

logger = logging.getLogger("ddpm_ood")

# Exit status for bad input: one clear line, no traceback. 130 is the shell's for Ctrl-C.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
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
EVERY_IMAGE = 2**62  # --save_maps all: more than any set holds, so min(count, set size) is the set's size


def map_count(value: str) -> int:
    """--save_maps: 0 (no maps), N >= 2 (the first N images of every set), or 'all' (every image)."""
    if value.strip().lower() == "all":
        return EVERY_IMAGE
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count == 0 or count >= 2:
        return count
    raise argparse.ArgumentTypeError(f"expected 0 (no maps), 'all', or at least 2 images (the maps are z-scored on "
                                     f"the validation set's), got {value!r}")


volume_side = _ranged(_integer, lambda n: n >= 2, "a side of at least 2 voxels (a 1-voxel volume is one value, "
                      "which per-volume scaling makes 0 for every scan)")
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
    if len(value) > MAX_NAME:
        raise argparse.ArgumentTypeError(f"{len(value)} characters is too long a name ({MAX_NAME} at most: it becomes "
                                         "file names)")
    if not PLAIN_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a plain name: use letters, digits and . _ + - (starting with a letter or digit), "
            "no path separators; the run's folder is always OUTPUT_DIR/MODEL_NAME")
    return value


def shard_spec(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 0 <= K < N."""
    index, sep, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not sep or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return index, count


def detector_list(text: str) -> list[str]:
    from ddpm_ood.detectors import parse_detectors

    try:
        return parse_detectors(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_knobs(parser: argparse.ArgumentParser, knobs) -> None:
    """One flag per detector knob (``ddpm_ood.detectors.Knob``): its type and range checked by the parser."""
    for knob in knobs:
        kwargs = {"default": knob.default, "help": knob.help}
        if knob.kind == "switch":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif knob.kind == "path":
            kwargs["type"] = Path
        elif knob.kind == "choice":
            kwargs["choices"] = knob.choices
        elif knob.kind == "int":
            low, high = knob.minimum, knob.maximum
            expected = ("an integer" + (f" of at least {low}" if low is not None else "")
                        + (f" and at most {high}" if high is not None else ""))
            kwargs["type"] = _ranged(_integer, lambda n, low=low, high=high: (low is None or n >= low) and
                                     (high is None or n <= high), expected)
        parser.add_argument(knob.flag, *knob.aliases, **kwargs)


# The command-line type of each ``kind`` of setting (``ddpm_ood.training.settings.setting``).
SETTING_TYPES = {"positive_int": positive_int, "non_negative_int": non_negative_int, "positive_float": positive_float,
                 "non_negative_float": non_negative_float, "decay": decay_rate, "seed": seed_value,
                 "unit_fraction": unit_fraction}


def add_settings(parser: argparse.ArgumentParser, settings) -> None:
    """One flag per field of a settings dataclass (``ddpm_ood.training.settings.TrainSettings``): its
    default and help declared there once; its ``kind`` names the type checked here (``SETTING_TYPES``;
    ``switch`` and ``precision`` are argparse actions and choices)."""
    from ddpm_ood.utils.runtime import PRECISIONS

    for field in settings.flags():
        kind, kwargs = field.metadata["kind"], {"default": field.default, "help": field.metadata["help"]}
        if kind == "switch":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "precision":
            kwargs["choices"] = PRECISIONS
        else:
            kwargs["type"] = SETTING_TYPES[kind]
        parser.add_argument(f"--{field.name}", **kwargs)


def flags_given(args: argparse.Namespace, parse_args, dests: Sequence[str]) -> list[str]:
    """Which of ``dests`` were set to other values than their defaults."""
    required = [f"--{action}=x" for action in ("output_dir", "model_name")]
    defaults = vars(parse_args(required))
    return [dest for dest in dests if getattr(args, dest) != defaults[dest]]


def run_main(main: Callable[[argparse.Namespace], object], parse_args: Callable[[Sequence[str] | None], argparse.Namespace]) -> None:
    """Entry point: parse, run, and turn input errors into one message and exit status 2, and
    Ctrl-C into one line and exit status 130."""
    args = parse_args(None)
    setup_logging(getattr(args, "verbose", False))
    install_interrupt_handler()
    try:
        main(args)
    except (UserError, PermissionError) as err:
        logger.error("%s", err)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def roi(text: str) -> list[int]:
    """--image_roi: three positive integers (D, H, W), as "[160,160,128]" or "160,160,128"."""
    parts = [p for p in text.strip().strip("[]()").replace(" ", "").split(",") if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers such as [160,160,128], got {text!r}")
    return values


def intensity_spec(text: str) -> str:
    """--intensity: minmax, percentile or percentile:LO,HI (ddpm_ood.data.loading.parse_intensity)."""
    from ddpm_ood.data.loading import parse_intensity

    try:
        return parse_intensity(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).partition(": ")[2]) from None


def add_space_flags(parser: argparse.ArgumentParser, spatial_default: int | None = 2) -> None:
    """--spatial_dimension, --image_roi and --image_size (ddpm-ood's names) and --intensity, shared by the scripts
    that read images."""
    parser.add_argument("--spatial_dimension", type=int, choices=(2, 3), default=spatial_default,
                        help=f"2: images (default{'' if spatial_default else ': the model' + chr(39) + 's'}); 3: volumes (.npy or NIfTI .nii/.nii.gz, listed in the same split "
                             "CSVs, read from disk as needed). A model file's own dimension wins in reconstruct.py.")
    parser.add_argument("--image_roi", type=roi, default=None, metavar="[D,H,W]",
                        help="Volumes: crop this centre region first. Default: the whole volume.")
    parser.add_argument("--image_size", type=volume_side, default=None, metavar="N",
                        help="Volumes: resize to N x N x N (trilinear) after any crop. Default: as stored.")
    parser.add_argument("--intensity", type=intensity_spec, default=None, metavar="minmax|percentile[:LO,HI]",
                        help="How each image's intensities are scaled to [0, 1]: minmax (the paper's: its minimum and "
                             "maximum) or percentile:LO,HI (its LO-th and HI-th percentiles, values beyond clipped; "
                             "'percentile' is percentile:0.5,99.5): robust to a few extreme voxels, as MRI needs. "
                             "Training records it in the model; scoring uses the model's (a flag that differs is "
                             "refused). Default: minmax for a new run, the model's when scoring.")
    parser.add_argument("--cache_data", type=binary_int, default=None, metavar="0/1",
                        help="ddpm-ood's flag, accepted and changing nothing: here images are always held in memory "
                             "and volumes always read from disk as they are needed, whatever it says.")


def add_training_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training script starts with: where the run goes and the images it learns from."""
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, type=plain_name,
                        help="Run name, a plain name; files go to OUTPUT_DIR/MODEL_NAME/.")
    parser.add_argument("--training_ids", required=True, help="Split CSV of training images (in-distribution only).")
    parser.add_argument("--validation_ids", required=True, help="Split CSV of validation images (model selection).")
    parser.add_argument("--is_grayscale", type=binary_int, default=1, help="1: one-channel images, 0: RGB. Default 1.")


# --- the diffusion's settings as ddpm-ood's later scripts name them --------------------------------

SCHEDULE_NAMES = ("scaled_linear", "scaled_linear_beta", "plain_linear", "linear_beta")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "eps", "v", "x0")
MODEL_TYPES = ("small", "big")


def beta_schedule_name(value: str) -> str:
    """--beta_schedule: a name that says which schedule it is. "linear" is refused: it means linear in
    sqrt(beta) in latent-diffusion's configs (ours, the paper's) but linear in beta in ddpm-ood, MONAI and
    diffusers."""
    if value == "linear":
        raise argparse.ArgumentTypeError(
            "'linear' names two schedules: linear in sqrt(beta) in this project's (latent-diffusion's) configs, the "
            "paper's, but linear in beta in ddpm-ood's later code, MONAI and diffusers. Say which: scaled_linear (or "
            "scaled_linear_beta) for linear in sqrt(beta), linear_beta (or plain_linear) for linear in beta")
    if value not in SCHEDULE_NAMES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SCHEDULE_NAMES)}, got {value!r}")
    return value


def add_diffusion_flags(parser: argparse.ArgumentParser, training: bool) -> None:
    """ddpm-ood's later flags for the diffusion itself. train.py records each in the run's config (and so
    in the model's identity); reconstruct.py checks each one given against what the model records and
    refuses a mismatch, naming both values. Not given: the config's value (train.py) or the model's."""
    given = "Default: the config's" if training else "Checked against the model's; default: the model's"
    group = parser.add_argument_group("the diffusion (ddpm-ood's later flags)")
    group.add_argument("--beta_schedule", type=beta_schedule_name, default=None, metavar="NAME",
                       help=f"scaled_linear / scaled_linear_beta: betas linear in sqrt(beta) (the paper's); "
                            f"linear_beta / plain_linear: linear in beta. 'linear' is refused as ambiguous. {given} "
                            "(linear in sqrt(beta)).")
    group.add_argument("--beta_start", type=unit_fraction, default=None,
                       help=f"The first beta. {given} (0.0015).")
    group.add_argument("--beta_end", type=unit_fraction, default=None, help=f"The last beta. {given} (0.0195).")
    group.add_argument("--prediction_type", choices=PREDICTION_TYPES, default=None,
                       help="What the network learns to output: epsilon (eps, the noise; the paper's), v_prediction "
                            "(v) or sample (x0); every detector converts the output to eps by the schedule. "
                            f"{given} (epsilon).")
    group.add_argument("--model_type", choices=MODEL_TYPES, default=None,
                       help="ddpm-ood's MONAI DiffusionModelUNet: small (channels 128, 256, 256; attention at the last "
                            "level; 1 res block) or big (256, 512, 768; attention everywhere; 2 res blocks). "
                            + ("Default: the config's UNet (latent-diffusion's, the paper's); its parameters can be "
                               "overridden as ldm.params.unet_config.params.channels=[...]." if training else
                               "Checked against the model's."))
    group.add_argument("--b_scale", type=positive_float, default=None,
                       help="Multiply the data (images, or latents) by b before noising; reconstructions are divided "
                            f"by b (as ddpm-ood does). {given} (1).")
    group.add_argument("--snr_shift", type=positive_float, default=None,
                       help="Multiply the schedule's signal-to-noise ratio a/(1-a) by this at every t (log-SNR moved "
                            f"by its log). {given} (1).")
    group.add_argument("--simplex_noise", type=binary_int, default=None, metavar="0/1",
                       help="1: AnoDDPM's multi-scale simplex noise instead of Gaussian (6 octaves, persistence 0.8, "
                            "frequency 64; ldm.params.simplex.* change them), for training and the start noise of "
                            f"scoring. {given} (0: Gaussian, the method's).")
    if not training:
        group.add_argument("--vqvae_checkpoint", default=None, metavar="RUN_OR_FILE",
                           help="The first stage of a latent model (a train_vqvae.py run, its best_model.pth or "
                                "checkpoint.pth). The model file keeps its first stage whole and that copy scores: "
                                "this is only checked against it (other weights are refused). Default: not checked.")


def diffusion_flags_given(args: argparse.Namespace) -> dict:
    """The diffusion flags given on the command line, by name (``add_diffusion_flags``)."""
    from ddpm_ood.models.loading import DIFFUSION_FLAGS

    return {name: getattr(args, name) for name in DIFFUSION_FLAGS if getattr(args, name, None) is not None}


def diffusion_overrides(args: argparse.Namespace) -> list[str]:
    """train.py's diffusion flags as config overrides (``ldm.params.*``), before the user's own ``key=value``."""
    from ddpm_ood.diffusion.ddpm import PREDICTION_NAMES

    keys = {"beta_schedule": "beta_schedule", "beta_start": "linear_start", "beta_end": "linear_end",
            "b_scale": "b_scale", "snr_shift": "snr_shift"}
    given = diffusion_flags_given(args)
    overrides = [f"ldm.params.{keys[name]}={value}" for name, value in given.items() if name in keys]
    if given.get("simplex_noise"):
        overrides.append("ldm.params.noise=simplex")
    if "prediction_type" in given:
        to_ldm = {v: k for k, v in PREDICTION_NAMES.items()}
        overrides.append(f"ldm.params.parameterization={to_ldm.get(given['prediction_type'], given['prediction_type'])}")
    return overrides


