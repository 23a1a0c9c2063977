"""Every file a model lives in: written and read here, and nowhere else.

All are plain dicts of tensors and primitives, readable with ``torch.load(weights_only=True)``,
and each carries what it takes to rebuild its network, so a model is rebuilt from its file alone
(nanoGPT's habit). The ``kind`` entry says which file it is:

- ``model`` (train.py's ``best_model.pth``, ``final_model.pth``): ``{"kind", "model", "config",
  "epoch", "val_loss", "ema", "image_shape", "training", "data"}`` and, for a latent model,
  ``"first_stage"`` (its autoencoder whole: see below). ``model`` holds the weights used for
  scoring (the EMA weights when EMA is on).
- ``checkpoint`` (train.py's ``checkpoint.pth``, ``checkpoint_prev.pth``): ``{"kind", "model",
  "optimizer", "scaler", "ema_model", "epoch", "batch_in_epoch", "step", "epoch_loss_sum",
  "data_order", "best_val_loss", "config", "rng", "image_shape", "settings", "training", "data"}``
  and ``"first_stage"`` for a latent run (``ddpm_ood.training.loop`` writes the position).
- ``first_stage`` (train_vqvae.py's ``best_model.pth``, ``final_model.pth``; and the
  ``first_stage`` entry of a latent DDPM's files, with ``scale`` and ``pad``): ``{"kind",
  "autoencoder", "network", "model", "epoch", "val_loss", "config", "image_shape", "training",
  "data"}``.
- ``first_stage_checkpoint`` (train_vqvae.py's checkpoints): the first stage's entries and
  ``"discriminator", "optimizer_g", "optimizer_d"`` and the position, as a ``checkpoint``'s.

``training`` is every setting of the run (``ddpm_ood.training.settings``: TrainSettings or
AutoencoderSettings), with the learning rate and process count in use; ``data`` the digest of the
training and validation images. Other libraries' weight files (diffusers, MONAI) are read with
:func:`read_weights`: safetensors, or a state dict through weights-only loading.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ddpm_ood.models.config import build_unet
from ddpm_ood.utils.errors import CheckpointError, ConfigError
from ddpm_ood.utils.files import save_torch_atomic

logger = logging.getLogger(__name__)

MODEL_KINDS = ("model", "checkpoint", "first_stage", "first_stage_checkpoint")


def save_model_file(path: Path, model_state: dict, config: dict, epoch: int, val_loss: float | None, ema: bool,
                    image_shape: list[int] | None = None, record: dict | None = None) -> None:
    """``image_shape``: (C, H, W) of the training images; reconstruct.py refuses other sizes.
    ``record``: how the model was trained (``training``: every setting; ``data``: each split's digest)."""
    save_torch_atomic(path, {
        "kind": "model", "model": model_state, "config": config, "epoch": epoch,
        "val_loss": val_loss, "ema": ema, "image_shape": image_shape, **(record or {}),
    })


def save_first_stage_file(path: Path, autoencoder: str, network: dict, model_state: dict, epoch: int,
                          val_loss: float | None, image_shape: list[int], training: dict, data: dict,
                          preprocessing: dict | None = None) -> None:
    """A first stage's model file (train_vqvae.py's best_model.pth and final_model.pth); ``preprocessing``: how
    its volumes were cropped and resized (``ddpm_ood.data.loading.preprocessing_record``), for 3D runs."""
    save_torch_atomic(path, {"kind": "first_stage", "autoencoder": autoencoder, "network": network,
                             "model": model_state, "epoch": epoch, "val_loss": val_loss, "config": {},
                             "image_shape": image_shape, "training": training, "data": data,
                             **({"preprocessing": preprocessing} if preprocessing is not None else {})})


def file_facts(path: Path, **extra) -> dict:
    """Where a model's weights were, as manifests record them (never compared: the identity is)."""
    stat = Path(path).stat()
    return {**extra, "model_file": str(Path(path).resolve()), "model_file_bytes": stat.st_size,
            "model_file_mtime_ns": stat.st_mtime_ns}


def read_weights(path: Path, what: str = "model") -> dict:
    """Another library's weights: a state dict from safetensors, or from a .bin / .pt through weights-only
    loading (no pickle code runs); a checkpoint holding the state dict under a usual key gives that."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: the {what}'s weights are needed.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle that wants to run code, a truncated file, ...
        raise CheckpointError(f"Cannot load the weights {path} ({type(err).__name__}: {str(err)[:200]}). They must "
                              "be a safetensors file or a plain state dict; nothing in the file was run.") from None
    for key in ("model_state_dict", "state_dict", "model"):  # a checkpoint holding the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return state


def load_weights(module: torch.nn.Module, state: dict, path, against: str) -> torch.nn.Module:
    """``module.load_state_dict(state)``, or one line naming the file and what it does not match."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} does not match {against} ({str(err)[:300]}).") from None
    return module


def read_model_file(path: str | Path) -> dict:
    """torch.load a checkpoint or model file safely, naming the file in any error. A folder or a file
    of another kind is named for what it is, with the flag that takes it (never advice to delete
    what the user did not make)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Model file {path} does not exist. Train a model first (train.py) or fix the path.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file: pass a model file of train.py (e.g. "
                              f"{path / 'best_model.pth'}), or, for a diffusers model folder, --pretrained {path} "
                              "(DiffusersModel in Python).")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch's zip format nor its legacy pickle
        from ddpm_ood.data.loading import content_kind

        what = {"npy": "a numpy array (an image?)", "image": "an image file", "text": "a text file (a split CSV?)",
                "gzip": "a gzip file"}.get(content_kind(head), "not a file torch writes")
        raise CheckpointError(f"{path} is {what}, not a model file: --eval_checkpoint (and the Python API's model) "
                              "take a best_model.pth, final_model.pth or checkpoint.pth written by train.py.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"Model file {path} is truncated, damaged or not written by train.py ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Use another model file (best_model.pth, final_model.pth or "
            "checkpoint.pth of the run), or retrain."
        ) from None
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(f"Model file {path} is not a checkpoint written by train.py (no model/config entries).")
    return obj


def peek_kind(path: str | Path) -> str | None:
    """The ``kind`` entry of one of our files, read without loading its tensors (None: unreadable)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged, foreign, not a zip: whoever reads it whole says what is wrong
        return None
    return obj.get("kind", "model") if isinstance(obj, dict) else None


def unet_of(obj: dict, path: str | Path) -> torch.nn.Module:
    """The UNet of a DDPM's model file or checkpoint (read with :func:`read_model_file`), its weights
    loaded (a checkpoint's EMA weights when it has them), in eval mode."""
    kind = obj.get("kind", "model")
    if kind in ("first_stage", "first_stage_checkpoint"):
        raise CheckpointError(f"{path} is a first stage's file (train_vqvae.py's), not a DDPM's: score with the "
                              "DDPM trained on its latents (train.py --vqvae_checkpoint), and pass this file as "
                              "--vqvae_checkpoint there.")
    config = obj["config"]
    try:
        model = build_unet(config)
    except (ConfigError, RuntimeError, TypeError, KeyError, AttributeError, ValueError) as err:
        raise CheckpointError(f"Model file {path} holds a network config that does not build ({err}); it was written "
                              "by another version or edited by hand: retrain or use another file.") from None
    load_weights(model, obj.get("ema_model") or obj["model"], path, "the architecture its config describes (written by "
                 "another version or edited by hand? retrain or use another file)")
    return model.eval()
