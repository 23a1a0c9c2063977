"""CSV-driven image loading.

A split CSV lists image files. Our files have a ``filename`` header and one path per row;
split files written by the original code (every path on one single row, no header) and
headerless one-path-per-line files are read too. Relative paths are resolved against the
CSV's folder first, then the working directory.

Images are ``.npy`` arrays ((H, W), (C, H, W) or (H, W, C)) or ordinary image files
(PNG, JPEG, ... via Pillow). Each image is min-max scaled to [0, 1] on its own, as in the
paper; a constant image has no range and becomes all zeros (documented in the README).

A split name may carry a ``_vflip`` or ``_hflip`` suffix that does not exist on disk:
``MNIST_vflip_test.csv`` means the images of ``MNIST_test.csv`` flipped upside down.
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from src.errors import DataError

logger = logging.getLogger(__name__)

HEADER_NAMES = ("filename", "image", "path")
FLIPS = ("vflip", "hflip")


@dataclass(frozen=True)
class SplitSpec:
    """What a split argument asks for: the CSV that exists on disk and an optional flip."""

    requested: Path
    csv_path: Path
    flip: str | None  # "vflip", "hflip" or None

    @property
    def name(self) -> str:
        """Results name of the split: the CSV stem without a trailing ``_test``.

        ``MNIST_test.csv`` -> ``MNIST``; ``MNIST_vflip_test.csv`` -> ``MNIST_vflip``.
        """
        stem = self.requested.stem
        return stem[: -len("_test")] if stem.endswith("_test") else stem


def resolve_split(path: str | Path) -> SplitSpec:
    """Map a split path to the CSV to read and the flip to apply."""
    requested = Path(path)
    if requested.exists():
        return SplitSpec(requested, requested, None)
    for flip in FLIPS:
        if f"_{flip}" in requested.name:
            base = requested.with_name(requested.name.replace(f"_{flip}", "", 1))
            if base.exists():
                return SplitSpec(requested, base, flip)
            raise DataError(
                f"Split file {requested} does not exist, and neither does {base}, the file its "
                f"'_{flip}' variant is derived from. Run get_datasets.py or fix the path."
            )
    raise DataError(f"Split file {requested} does not exist. Run get_datasets.py or fix the path.")


def read_split_csv(path: str | Path) -> list[Path]:
    """Return the image paths listed in a split CSV, resolved to existing-or-absolute paths."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except OSError as err:
        raise DataError(f"Cannot read split file {path}: {err}.") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"Split file {path} is not a readable CSV ({err}).") from err
    if not rows:
        raise DataError(f"Split file {path} is empty: it lists no images.")

    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in HEADER_NAMES if name in header), None)
    if column is not None:
        entries = [row[column] for row in rows[1:] if len(row) > column]
    elif len(rows) == 1:
        entries = rows[0]  # the original code's layout: every path on one row
    else:
        entries = [row[0] for row in rows]
    entries = [e.strip() for e in entries if e.strip()]
    if not entries:
        raise DataError(f"Split file {path} lists no images (it has only a header).")
    return [_resolve_entry(e, path.parent) for e in entries]


IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (``.npy`` or what Pillow reads), sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"Folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def _resolve_entry(entry: str, csv_dir: Path) -> Path:
    p = Path(entry)
    if p.is_absolute():
        return p
    beside_csv = csv_dir / p
    return beside_csv if beside_csv.exists() else p


def load_image(path: str | Path) -> np.ndarray:
    """Read one image as float32 (C, H, W) without scaling."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Image file {path} does not exist (listed in a split CSV). Fix the CSV or restore the file.")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                if img.mode in ("I", "I;16", "F"):  # high bit-depth grayscale: keep the values
                    array = np.asarray(img)
                else:
                    array = np.asarray(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"))
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise DataError(f"Cannot read image {path}: {err}. Re-create or remove the file.") from err
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise DataError(f"Image {path} has shape {array.shape}; expected (H, W), (C, H, W) or (H, W, C) with C = 1 or 3.")
    return array


def minmax_scale(image: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """Scale one image to [0, 1]; a constant image (no range) becomes all zeros."""
    if not np.isfinite(image).all():
        raise DataError(f"Image {source} contains NaN or infinite values. Re-create the file.")
    low, high = image.min(), image.max()
    if high == low:
        return np.zeros_like(image)
    return (image - low) / (high - low)


def apply_flip(image: np.ndarray, flip: str | None) -> np.ndarray:
    if flip == "vflip":
        return np.ascontiguousarray(image[:, ::-1, :])  # upside down: reverse rows
    if flip == "hflip":
        return np.ascontiguousarray(image[:, :, ::-1])  # mirror: reverse columns
    return image


@dataclass
class ImageSet:
    """A whole split in memory: small benchmark sets fit easily and load once."""

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    filenames: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.filenames)


def load_split(path: str | Path, is_grayscale: bool, first_n: int | None = None, progress: bool = True,
               num_workers: int = 4) -> ImageSet:
    """Load a split CSV (with optional ``_vflip``/``_hflip`` suffix) into one tensor.

    Files are read by ``num_workers`` threads (file reads release the GIL); 0 reads in this thread.
    """
    if first_n is not None and first_n < 0:
        raise DataError(f"first_n must be a non-negative number of images, got {first_n}.")
    spec = resolve_split(path)
    files = folder_images(spec.csv_path) if spec.csv_path.is_dir() else read_split_csv(spec.csv_path)
    if first_n is not None:
        files = files[:first_n]
        if not files:
            raise DataError(f"first_n=0 leaves no images from {spec.csv_path}.")
    channels = 1 if is_grayscale else 3
    images = None
    if num_workers > 0:
        pool = ThreadPoolExecutor(num_workers)
        loaded = pool.map(load_image, files)
    else:
        pool, loaded = None, map(load_image, files)
    try:
        for i, (f, image) in enumerate(zip(files, tqdm(loaded, total=len(files), desc=f"loading {spec.name}",
                                                         disable=not progress, leave=False))):
            images = _place(images, i, f, image, len(files), channels, is_grayscale, spec)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    logger.info("Loaded %d images of shape %s from %s%s", len(files), tuple(images.shape[1:]), spec.csv_path,
                f" ({spec.flip})" if spec.flip else "")
    return ImageSet(torch.from_numpy(images), [str(f) for f in files], spec.name)


def _place(images: np.ndarray | None, i: int, f: Path, image: np.ndarray, n_files: int, channels: int,
           is_grayscale: bool, spec: SplitSpec) -> np.ndarray:
    """Check one loaded image and store it, scaled and flipped, at row i."""
    if image.shape[0] != channels:
        kind = "grayscale" if is_grayscale else "colour"
        raise DataError(
            f"Image {f} has {image.shape[0]} channel(s) but the model is {kind} "
            f"(--is_grayscale={int(is_grayscale)}); pass the matching --is_grayscale or convert the image."
        )
    if images is None:
        images = np.empty((n_files, *image.shape), dtype=np.float32)
    elif image.shape != images.shape[1:]:
        raise DataError(
            f"Image {f} has shape {image.shape} but the first image of {spec.csv_path} has "
            f"{images.shape[1:]}; all images of a split must have one size."
        )
    images[i] = apply_flip(minmax_scale(image, f), spec.flip)
    return images



def check_image_shape(image_set: ImageSet, expected, what: str, split: str | Path) -> None:
    """The images of a split must have the shape (C, H, W) that ``what`` (a model, the training
    set) has; ``expected`` None means unknown (a model file from an older version): not checked."""
    if expected is None:
        return
    shape = tuple(int(d) for d in image_set.images.shape[1:])
    if shape != tuple(int(d) for d in expected):
        raise DataError(
            f"Images of {split} (e.g. {image_set.filenames[0]}) have shape {shape}, but {what} expects "
            f"{tuple(int(d) for d in expected)}. Resize the images or use a model trained on this size."
        )


def prepare_images(images, filenames=None) -> torch.Tensor:
    """Images given from Python as the split loader makes them from files: an (N, C, H, W) float32
    tensor, each image min-max scaled to [0, 1] on its own (so uint8 0..255, [0, 0.8] or float64
    images score as their files would). Takes a tensor (detached; on any device), a numpy array
    or a list of same-shaped images; refuses an empty batch, another rank, NaN or infinite pixels
    and a ``filenames`` list of another length, saying which."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("The batch is empty: pass at least one image.")
        try:
            images = np.stack([np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i) for i in images])
        except ValueError as err:
            raise DataError(f"The images of the list differ in shape ({err}); pass images of one size.") from None
    if isinstance(images, np.ndarray):
        if images.dtype == object:
            raise DataError("The images are not numbers (a numpy array of objects); pass a numeric array or tensor.")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise DataError(f"Images must be a torch tensor, a numpy array or a list of them, not {type(images).__name__}.")
    if images.dim() != 4:
        raise DataError(f"Images must be a batch of shape (N, C, H, W), got shape {tuple(images.shape)} (for one image "
                        "use images[None]).")
    if len(images) == 0:
        raise DataError("The batch is empty: pass at least one image.")
    if filenames is not None and len(filenames) != len(images):
        raise DataError(f"{len(filenames)} filenames for {len(images)} images: pass one name per image.")
    pixels = images.detach().to("cpu", torch.float32).numpy()
    names = filenames or [f"image {i} of the batch" for i in range(len(images))]
    return torch.from_numpy(np.stack([minmax_scale(image, name) for image, name in zip(pixels, names)]))
