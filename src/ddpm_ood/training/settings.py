"""How a model is trained: every training setting, its default and its help, declared once.

``train.py``'s flags are generated from :class:`TrainSettings` and ``train_vqvae.py``'s from
:class:`AutoencoderSettings` (``ddpm_ood.cli.add_settings``), the trainers read them, and every
checkpoint and model file keeps them (``training``) beside the
digests of the training and validation images (``data``): :func:`data_record` makes them, and
:func:`data_differences` says which split changed, so that a run is never resumed on other data.

Imports nothing heavy: train.py's ``--help`` reads it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def setting(default, help: str, kind: str, flag: bool = True):
    """A training setting: ``kind`` names its command-line type (``ddpm_ood.cli.SETTING_TYPES``)."""
    return field(default=default, metadata={"help": help, "kind": kind, "flag": flag})


class Settings:
    """A dataclass of :func:`setting` fields: the flags it generates and the record files keep."""

    @classmethod
    def flags(cls) -> list:
        """The settings that are flags (``--<name>``), in declaration order."""
        return [f for f in fields(cls) if f.metadata.get("flag")]

    def record(self) -> dict:
        return asdict(self)


@dataclass
class TrainSettings(Settings):
    n_epochs: int = setting(300, "Epochs to train in total. Default 300.", "positive_int")
    batch_size: int = setting(180, "Images per step: the global batch, split over the processes under torchrun "
                                   "(ddpm-ood's was per process: its B on N GPUs is N*B here). Default 180.", "positive_int")
    lr: float | None = setting(None, "Learning rate, above 0 (default: the config's ldm.base_lr). A resumed run may "
                                     "change it (applied from the resumed step on).", "positive_float")
    eval_freq: int = setting(10, "Validate (loss, samples, best model) every N epochs. Default 10.", "positive_int")
    checkpoint_every: int = setting(0, "Also keep a snapshot checkpoint_<epoch>.pth every N epochs (ddpm-ood's meaning; "
                                       "0: none, default). checkpoint.pth, the resume state, is written every epoch "
                                       "whatever this says.", "non_negative_int")
    checkpoint_every_steps: int = setting(0, "Also write checkpoint.pth every N optimizer steps inside an epoch (0: "
                                             "off, default).", "non_negative_int")
    seed: int = setting(0, "Seed for initialisation, data order and noise (0 to 2**63 - 1). Default 0.", "seed")
    precision: str = setting("auto", "auto: fp16 autocast + GradScaler on CUDA as the paper did, fp32 on CPU.",
                             "precision")
    compile: bool = setting(False, "torch.compile the UNet for training (pays off on GPUs).", "switch")
    channels_last: bool = setting(False, "Train in the channels-last memory layout (channels_last_3d for volumes): "
                                         "faster convolutions on GPUs, and for 3D on CPUs (1.24x per step of the 3D "
                                         "demo here; 2D was 0.86x).", "switch")
    ema_decay: float = setting(0.0, "EMA decay in [0, 1) of the weights used for validation and scoring; 0 (default, "
                                    "as the paper) is off.", "decay")
    num_sample_images: int = setting(16, "Images sampled to TensorBoard at each validation; 0 disables. Default 16.",
                                     "non_negative_int")
    sample_steps: int = setting(50, "PLMS steps for those samples. Default 50.", "positive_int")
    max_minutes: float | None = setting(None, "Stop at the first training step after this many minutes, with a "
                                              "checkpoint at that step (re-run to continue). Default: no limit.",
                                        "non_negative_float")
    lr_given: bool = setting(True, "", "", flag=False)  # False: lr is the config's default; a resumed run keeps its own

    @classmethod
    def from_args(cls, args, base_lr: float) -> "TrainSettings":
        """The settings train.py's flags ask for; ``base_lr``: the config's, when --lr is not given."""
        chosen = {f.name: getattr(args, f.name) for f in cls.flags()}
        return cls(**{**chosen, "lr": base_lr if args.lr is None else args.lr, "lr_given": args.lr is not None})


@dataclass
class AutoencoderSettings(Settings):
    """Every setting of a first stage's training, its default and its help, declared once:
    train_vqvae.py's flags are generated from it, and its checkpoints and model files keep it."""

    n_epochs: int = setting(100, "Epochs in total. Default 100.", "positive_int")
    batch_size: int = setting(16, "Images per step. Default 16.", "positive_int")
    lr: float = setting(1e-4, "Autoencoder learning rate. Default 1e-4. A resumed run may change it (from the "
                              "resumed step on).", "positive_float")
    lr_d: float = setting(5e-4, "Discriminator learning rate. Default 5e-4. A resumed run may change it.",
                          "positive_float")
    seed: int = setting(0, "Seed. Default 0.", "seed")
    eval_freq: int = setting(1, "Validate every N epochs. Default 1.", "positive_int")
    checkpoint_every_steps: int = setting(0, "Also write checkpoint.pth every N optimizer steps inside an epoch (0: "
                                             "off, default).", "non_negative_int")
    perceptual_weight: float = setting(0.001, "LPIPS weight (0: off, needs no AlexNet). Default 0.001.",
                                       "non_negative_float")
    spectral_weight: float = setting(1.0, "MONAI JukeboxLoss (spectral) weight (0: off). Default 1.",
                                     "non_negative_float")
    adversarial_weight: float = setting(0.01, "Patch-adversarial weight (0: no discriminator). Default 0.01.",
                                        "non_negative_float")
    adversarial_warmup: int = setting(0, "Ramp the adversarial weight up linearly over this many epochs (0: off, "
                                         "default; ddpm-ood's --adversarial_warmup=1 ramps over 50).",
                                      "non_negative_int")
    kl_weight: float = setting(1e-6, "KL weight of an AutoencoderKL. Default 1e-6.", "non_negative_float")
    max_minutes: float | None = setting(None, "Stop after this many minutes, validated and with a checkpoint at "
                                              "that step (re-run to continue).", "non_negative_float")

    # A resumed run keeps these (the others may change: more epochs, more time, the learning rates).
    FIXED = ("batch_size", "seed", "perceptual_weight", "spectral_weight", "adversarial_weight", "kl_weight")


# Saved with every checkpoint. A resumed run must keep these (a different batch size moves the
# position within the epoch; seed, precision and EMA decay would make the run a mix of two);
# the learning rate may change (applied from the resumed step on), and so may the world size.
FIXED_SETTINGS = ("batch_size", "seed", "precision", "ema_decay")
SPLITS = {"training": "--training_ids", "validation": "--validation_ids"}


def data_record(split: str, images_sha256: str, n_images: int, first_n: int | None = None,
                digests: list[str] | None = None, profile: dict | None = None) -> dict:
    """One split's entry in a checkpoint's ``data``: the split file as given, how many images and
    the SHA-256 of their pixels as loaded (what the model saw, wherever the files are now); ``digests``:
    each image's own (``ddpm_ood.runs.layout.image_digests``; a first stage's training split keeps them, so
    its images are recognised in any test set); ``profile``: the training images' range of foreground and
    intensity (``ddpm_ood.data.loading.profile_training_set``), for the input check at scoring time."""
    record = {"split": str(split), "n_images": int(n_images), "first_n": first_n, "images_sha256": images_sha256}
    if digests is not None:
        record["image_digests"] = list(digests)
    if profile is not None:
        record["profile"] = profile
    return record


def data_differences(stored: dict | None, current: dict) -> list[str]:
    """Which splits hold other images than the run was trained on, as flag: 'was -> now' (none for a
    checkpoint of an older version, which recorded no data)."""
    if not stored:
        return []
    return [f"{SPLITS.get(name, name)} {current[name]['split']} gives {current[name]['n_images']} images that are not "
            f"the {stored[name]['n_images']} the run was trained with (from {stored[name]['split']})"
            for name in current if name in stored and stored[name]["images_sha256"] != current[name]["images_sha256"]]
