"""Model files and training checkpoints.

Both are plain dicts of tensors and primitives, readable with ``torch.load(weights_only=True)``,
and both carry the resolved config, so a model is rebuilt from its file alone (nanoGPT's habit).

- model file (``best_model.pth``, ``final_model.pth``): ``{"kind": "model", "model",
  "config", "epoch", "val_loss", "ema", "image_shape", "training", "data"}``; ``model`` holds the weights used for scoring (the
  EMA weights when EMA is on).
- training checkpoint (``checkpoint.pth``): ``{"kind": "checkpoint", "model", "optimizer",
  "scaler", "ema_model", "epoch", "step", "best_val_loss", "config", "rng", "image_shape", "settings",
  "training", "data"}``.

``training`` is every setting of :class:`ddpm_ood.training.settings.TrainSettings` (and the learning rate
and process count in use); ``data`` the digest of the training and validation images.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ddpm_ood.models.config import build_schedule, build_unet
from ddpm_ood.diffusion.ddpm import DDPMSchedule
from ddpm_ood.utils.errors import CheckpointError
from ddpm_ood.utils.files import save_torch_atomic
from ddpm_ood.models.unet import UNet

logger = logging.getLogger(__name__)

def save_model_file(path: Path, model_state: dict, config: dict, epoch: int, val_loss: float | None, ema: bool,
                    image_shape: list[int] | None = None, record: dict | None = None) -> None:
    """``image_shape``: (C, H, W) of the training images; reconstruct.py refuses other sizes.
    ``record``: how the model was trained (``training``: every setting; ``data``: each split's digest)."""
    save_torch_atomic(path, {
        "kind": "model", "model": model_state, "config": config, "epoch": epoch,
        "val_loss": val_loss, "ema": ema, "image_shape": image_shape, **(record or {}),
    })


def read_file(path: str | Path) -> dict:
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


def load_model(path: str | Path, device: torch.device) -> tuple[UNet, DDPMSchedule, dict, dict]:
    """Rebuild the model and schedule from a model file or training checkpoint.

    Returns (model in eval mode, schedule, config, the file's other entries).
    """
    obj = read_file(path)
    config = obj["config"]
    state = obj.get("ema_model") or obj["model"]
    try:
        model = build_unet(config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"Model file {path} does not match the architecture its config describes ({err}). "
            "It was written by a different version or edited by hand; retrain or use another file."
        ) from err
    info = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "ema_model", "scaler", "rng")}
    return model.to(device).eval(), build_schedule(config), config, info
