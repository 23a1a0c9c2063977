"""Distances between an input image and its reconstruction: MSE and LPIPS.

LPIPS is the ``lpips`` package's AlexNet v0.1 metric, as in the paper: inputs mapped from
[0, 1] to [-1, 1], images smaller than 32x32 zero-padded by ``lpips_pad`` pixels on each side
first (28 -> 32), a one-channel image repeated over the three input channels.

The linear heads ship inside the ``lpips`` wheel; the AlexNet backbone
(``alexnet-owt-7be5be79.pth``) is torchvision's, which downloads it on first use into
``$TORCH_HOME/hub/checkpoints/``. :func:`load_lpips` takes it from an explicit file, from that
cache, or downloads it, and otherwise fails with a message saying where to put the file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_ood.errors import LPIPSUnavailable

logger = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"


def mse_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over channels and pixels of the squared difference: (N, C, H, W) x2 -> (N,)."""
    return ((images.float() - reconstructions.float()) ** 2).flatten(1).mean(dim=1)


def alexnet_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def find_alexnet_weights(weights_path: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """Locate the AlexNet backbone weights: an explicit file, the torch hub cache, or a download."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise LPIPSUnavailable(f"AlexNet weights file {path} (--lpips_weights) does not exist.")
        return path
    cached = alexnet_cache_path()
    if cached.is_file():
        return cached
    if allow_download:
        try:
            download_weights(ALEXNET_URL, cached)
            return cached
        except OSError as err:  # URLError, HTTPError, socket errors, ...: all mean "not here"
            logger.debug("AlexNet download failed: %s", err)
    raise LPIPSUnavailable(
        f"LPIPS needs torchvision's AlexNet weights ({ALEXNET_FILE}), which are neither in the torch "
        f"hub cache ({cached}) nor downloadable from here. Download {ALEXNET_URL} on a machine with "
        f"internet access and put it at {cached} (or pass --lpips_weights PATH), or score with MSE only "
        "by passing --metrics mse."
    )


def download_weights(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` atomically, checking the SHA-256 prefix that
    torchvision puts in its file names (``alexnet-owt-<8 hex digits>.pth``).

    Nothing is logged until the server has answered: offline, the caller's error is the only
    message (no "Downloading ..." line for a download that never starts).
    """
    import hashlib
    import re
    import urllib.request

    from ddpm_ood.files import atomic_path

    expected = re.search(r"-([0-9a-f]{8,})\.", url.rsplit("/", 1)[-1])
    with urllib.request.urlopen(url, timeout=timeout) as response:
        logger.info("Downloading %s to %s", url, destination)
        digest = hashlib.sha256()
        with atomic_path(destination) as tmp, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
            if expected and not digest.hexdigest().startswith(expected.group(1)):
                raise LPIPSUnavailable(f"The file downloaded from {url} is damaged (SHA-256 {digest.hexdigest()[:8]}..., "
                                       f"expected {expected.group(1)}...); it was not saved. Try again.")


def _load_alexnet_features(lpips_model: torch.nn.Module, weights_path: Path) -> None:
    """Copy torchvision AlexNet ``features.<i>.*`` weights into lpips' slices (``sliceN.<i>.*``)."""
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    target = {}
    for name in lpips_model.net.state_dict():
        _, rest = name.split(".", 1)  # "slice2.3.weight" -> "3.weight"
        if rest not in features:
            raise LPIPSUnavailable(f"{weights_path} is not a torchvision AlexNet state dict (no features.{rest}).")
        target[name] = features[rest]
    lpips_model.net.load_state_dict(target)


class LPIPSMetric(torch.nn.Module):
    """Batched LPIPS between images in [0, 1]; returns one distance per image."""

    def __init__(self, weights_path: str | os.PathLike | None = None, pad: int = 2, min_size: int = 32,
                 allow_download: bool = True, random_backbone: bool = False):
        super().__init__()
        import lpips  # imported here: only runs that ask for LPIPS need it

        self.pad = pad
        self.min_size = min_size
        # pnet_rand=True builds AlexNet without torchvision's download; the real backbone
        # weights are copied in below. The linear heads come from the lpips wheel.
        self.net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        if not random_backbone:
            _load_alexnet_features(self.net, find_alexnet_weights(weights_path, allow_download))
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        a, b = (self._prepare(x) for x in (images, reconstructions))
        return self.net(a, b, normalize=False).flatten()  # (N,)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if min(x.shape[-2:]) < self.min_size and self.pad:
            x = F.pad(x, (self.pad,) * 4)  # zero padding, as the paper's code did
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x * 2 - 1
