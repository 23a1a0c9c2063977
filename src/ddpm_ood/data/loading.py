"""CSV-driven image loading.

A split CSV lists image files. Our files have a ``filename`` header and one path per row;
split files written by the original code (every path on one single row, no header) and
headerless one-path-per-line files are read too. Relative paths are resolved against the
CSV's folder first, then the working directory.

Images are ``.npy`` arrays ((H, W), (C, H, W) or (H, W, C)) or ordinary image files
(PNG, JPEG, ... via Pillow). Each image is min-max scaled to [0, 1] on its own, as in the
paper; a constant image has no range and becomes all zeros (docs/file_contracts.md).

A split name may carry a ``_vflip`` or ``_hflip`` suffix that does not exist on disk:
``MNIST_vflip_test.csv`` means the images of ``MNIST_test.csv`` flipped upside down.
"""
from __future__ import annotations

import codecs
import csv
import errno
import io
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ddpm_ood.utils.errors import DataError

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


MAX_IMAGE_BYTES = 256 * 2**20  # far beyond any image of ours; a file this big is not one
MAX_CSV_BYTES = 2**30
KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class Entry:
    """One image file of a split, and where it was listed (for messages: "Blobs_test.csv line 3")."""

    path: Path
    where: str


def os_error_advice(err: OSError, doing: str) -> str:
    """What an OSError met when a listed file was being ``doing`` ('read') means, and what to do: the end of a
    message that starts with the path."""
    if err.errno == errno.ELOOP:
        return "is a loop of symbolic links (following them comes back where they started); fix the link."
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"cannot be {doing} ({err.strerror}); check its permissions and its folders'."
    if err.errno == errno.ENOTDIR:
        return "has a part of its path that is a file, not a folder; fix the entry."
    if err.errno == errno.ENAMETOOLONG:
        return "has a name longer than the file system allows; fix the entry."
    return f"cannot be {doing} ({err.strerror or err}); check the file and the disk it is on."


def read_regular(path: Path, limit: int, where: str, what: str = "an image") -> bytes:
    """The bytes of a regular file (links followed), at most ``limit`` of them. Anything else (a
    folder, a pipe, a device, a socket) is refused without opening it, so nothing ever blocks."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        target = f" (a link to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
        raise DataError(f"{where}: {path} does not exist{target}. Fix the entry or restore the file.") from None
    except OSError as err:
        raise DataError(f"{where}: {path} {os_error_advice(err, 'looked at')}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise DataError(f"{where}: {path} is {kind}, not a file; list {what} file there.")
    if info.st_size > limit:
        raise DataError(f"{where}: {path} is {info.st_size / 2**20:.0f} MiB, more than {what} of ours can need "
                        f"({limit / 2**20:.0f} MiB); is it the right file?")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the check
                raise DataError(f"{where}: {path} is not a regular file; list {what} file there.")
            data = f.read(limit + 1)
    except OSError as err:
        raise DataError(f"{where}: {path} {os_error_advice(err, 'read')}") from None
    if len(data) > limit:
        raise DataError(f"{where}: {path} is more than {limit / 2**20:.0f} MiB, more than {what} of ours can need.")
    return data


def decode_text(data: bytes, path: Path) -> str:
    """A CSV's text, in the encodings spreadsheet programs write: UTF-8 (with or without the byte
    order mark Excel puts first), UTF-16 with its mark ("Unicode text"), else Windows-1252."""
    for mark, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                           (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(mark):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                raise DataError(f"Split file {path} starts with a {encoding} mark but is not {encoding} text; save it "
                                "again as CSV (UTF-8).") from None
    if b"\x00" in data:
        raise DataError(f"Split file {path} is not text (it holds zero bytes): is it an image or another binary "
                        "file? A split CSV lists one image file per line.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_split_entries(path: str | Path, column_names: Sequence[str] | None = None) -> list[Entry] | None:
    """The image files a split CSV lists, each with its CSV line, resolved to existing-or-absolute paths.

    Our files have a header (``filename``, ``image`` or ``path``, any case) and one path per row;
    the original code's (every path on one row, no header) and plain one-path-per-line files are
    read too, as are a spreadsheet's: with a byte order mark, in UTF-16 or Windows-1252, with ";"
    or tabs between columns (the path's column is the one headed filename/image/path, else the
    first), and quoted paths holding commas or spaces.

    ``column_names``: read the column headed by one of these instead (``mask``, ``brain_mask``: ground
    truth beside each image); None when the file has no such column.
    """
    path = Path(path)
    text = decode_text(read_regular(path, MAX_CSV_BYTES, f"Split file {path}", "a split CSV"), path)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"Split file {path} is empty: it lists no images.")
    first = lines[0]
    delimiter = next((d for d in (";", "\t") if d in first and "," not in first and
                      any(name in first.lower() for name in HEADER_NAMES)), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise DataError(f"Split file {path} line {reader.line_num} is not CSV ({err}); quote paths that hold "
                        "commas or quotes.") from None
    header = [cell.strip().lower() for cell in rows[0][1]]
    if column_names is not None:
        column = next((header.index(name) for name in column_names if name in header), None)
        if column is None:
            return None
        cells = [(line, row[column] if len(row) > column else "") for line, row in rows[1:]]
        missing = [line for line, cell in cells if not cell.strip()]
        if missing:
            raise DataError(f"Split file {path} line {missing[0]}: its {header[column]} column is empty; every row "
                            f"needs one (a {header[column]} file of the image's shape).")
        return [Entry(_resolve_entry(cell.strip(), path.parent), f"{path.name} line {line} ({header[column]})")
                for line, cell in cells]
    column = next((header.index(name) for name in HEADER_NAMES if name in header), None)
    if column is not None:
        cells = [(line, row[column]) for line, row in rows[1:] if len(row) > column]
    elif len(rows) == 1:
        cells = [(rows[0][0], cell) for cell in rows[0][1]]  # the original code's layout: every path on one row
    else:
        cells = [(line, row[0]) for line, row in rows]
    cells = [(line, cell.strip()) for line, cell in cells if cell.strip()]
    if not cells:
        raise DataError(f"Split file {path} lists no images (it has only a header).")
    return [Entry(_resolve_entry(cell, path.parent), f"{path.name} line {line}") for line, cell in cells]


def read_split_csv(path: str | Path) -> list[Path]:
    """The image paths listed in a split CSV, resolved to existing-or-absolute paths."""
    return [entry.path for entry in read_split_entries(path)]


IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def folder_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` (``.npy`` or what Pillow reads), sorted by name; with none at
    its top, those of its sub-folders (torchvision's ImageFolder layout: one folder per class),
    sorted by path. What systems leave beside images is skipped: hidden files and folders (macOS's
    ``._name.png`` and ``.DS_Store``, ``.ipynb_checkpoints``) and ``__MACOSX``."""
    def wanted(p: Path) -> bool:
        parts = p.relative_to(folder).parts
        return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and \
            not any(part.startswith(".") or part == "__MACOSX" for part in parts)

    files = sorted(p for p in folder.iterdir() if wanted(p))
    if not files:
        files = sorted((p for p in folder.rglob("*") if wanted(p)), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DataError(f"Folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}), nor do its sub-folders.")
    return files


def _resolve_entry(entry: str, csv_dir: Path) -> Path:
    p = Path(entry)
    if p.is_absolute():
        return p
    beside_csv = csv_dir / p
    return beside_csv if beside_csv.exists() else p


# What a file holds, by its first bytes (not by its name).
SIGNATURES = ((b"\x93NUMPY", "npy"), (b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"),
              (b"GIF8", "image"), (b"BM", "image"), (b"II*\x00", "image"), (b"MM\x00*", "image"),
              (b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"\x80", "pickle"))


def content_kind(data: bytes) -> str:
    kind = next((kind for magic, kind in SIGNATURES if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "image"
    if kind is None:
        try:
            data[:4096].decode("utf-8")
            kind = "text"
        except UnicodeDecodeError:
            kind = "unknown"
    return kind


def load_image(path: str | Path, where: str | None = None) -> np.ndarray:
    """Read one image as float32 (C, H, W) without scaling: a ``.npy`` array or an image file that
    Pillow reads, told apart by its content. Anything else is refused in one line saying what
    the file is and what to do (never in numpy's or Pillow's words)."""
    path = Path(path)
    where = where or "Image"
    data = read_regular(path, MAX_IMAGE_BYTES, where)
    kind = content_kind(data)
    fix = "replace it with an image saved by np.save (a numeric array) or as PNG"
    if not data:
        raise DataError(f"{where}: {path} is empty (0 bytes); {fix}.")
    if kind == "npy":
        array = _read_npy(data, path, where, fix)
    elif kind in ("image", "unknown"):
        array = _read_picture(data, path, where, fix, kind)
    else:
        what = {"zip": "a zip archive (an .npz of several arrays, or a torch file), not one image",
                "gzip": "gzip-compressed; decompress it first",
                "pickle": "a Python pickle, which this code never loads (it could run code)",
                "text": "a text file, not an image"}[kind]
        raise DataError(f"{where}: {path} is {what}; {fix}.")
    array = as_float32(array, path, where)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        hint = " (a volume? pass --spatial_dimension 3)" if array.ndim in (3, 4) else ""
        raise DataError(f"{where}: image {path} has shape {array.shape}; expected (H, W), (C, H, W) or (H, W, C) with "
                        f"C = 1 or 3{hint}.")
    return array


def _read_npy(data: bytes, path: Path, where: str, fix: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise DataError(f"{where}: {path} holds Python objects, not numbers (numpy stores those as a pickle, "
                            f"which this code never loads); {fix}.") from None
        raise DataError(f"{where}: {path} is a damaged or truncated .npy file; {fix}.") from None
    except (OSError, EOFError):
        raise DataError(f"{where}: {path} is a damaged or truncated .npy file; {fix}.") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: {path} holds {array.dtype} values, not real numbers; {fix}.")
    return array


def _read_picture(data: bytes, path: Path, where: str, fix: str, kind: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode in ("I", "I;16", "F"):  # high bit-depth grayscale: keep the values
                return np.asarray(img)
            # Palette images (GIFs, palette PNGs) become RGB; a gray palette gives R = G = B, taken as gray.
            return np.asarray(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"))
    except Image.DecompressionBombError:
        raise DataError(f"{where}: {path} has far more pixels than an image of ours; is it the right file?") from None
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError):
        what = ("a damaged or truncated image file" if kind == "image" else
                "not an image file this code reads (neither a .npy array nor an image Pillow opens)")
        raise DataError(f"{where}: {path} is {what}; {fix}.") from None


def as_float32(array, path: Path | str, where: str, fix: str = "Re-create the file.") -> np.ndarray:
    """An image's values as float32, refused naming the file (or the image of a batch: ``fix`` then says what to
    do with a tensor) when they are not finite, or finite but beyond float32's range (1e300 would become
    infinite, and be reported as such)."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        if not np.isfinite(array).all():
            raise DataError(f"{where}: image {path} contains NaN or infinite values. {fix[0].upper()}{fix[1:]}")
        largest, limit = (float(np.abs(array).max()) if array.size else 0.0), float(np.finfo(np.float32).max)
        if largest > limit:
            raise DataError(f"{where}: image {path} holds values up to {largest:.3g}, beyond what float32 holds "
                            f"({limit:.3g}); rescale it (its values are min-max scaled anyway).")
    return array.astype(np.float32, copy=False)


def minmax_scale(image: np.ndarray, source: str | Path = "image", fix: str = "re-create the file.") -> np.ndarray:
    """Scale one image to [0, 1]; a constant image (no range) becomes all zeros. ``fix``: what to do with
    NaN or infinite values (a file is re-created; a tensor's values replaced)."""
    if not np.isfinite(image).all():
        raise DataError(f"Image {source} contains NaN or infinite values: {fix}")
    low, high = image.min(), image.max()
    if high == low:
        return np.zeros_like(image)
    return (image - low) / (high - low)


MINMAX = "minmax"
PERCENTILE_DEFAULT = (0.5, 99.5)


def parse_intensity(text: str) -> str:
    """An --intensity value in its one written form: ``minmax`` (each image min-max scaled to [0, 1], the
    paper's), or ``percentile:LO,HI`` (each image's LO-th and HI-th percentiles mapped to 0 and 1, values beyond
    clipped, as MONAI's ScaleIntensityRangePercentiles(clip=True); ``percentile`` alone is
    ``percentile:0.5,99.5``). Anything else is refused, saying what is taken."""
    text = str(text).strip().lower()
    if text == MINMAX:
        return MINMAX
    name, _, bounds = text.partition(":")
    if name == "percentile":
        try:
            lo, hi = (float(v) for v in bounds.split(",")) if bounds else PERCENTILE_DEFAULT
        except ValueError:
            lo = hi = float("nan")
        if 0 <= lo < hi <= 100:
            return f"percentile:{lo:g},{hi:g}"
    raise ValueError(f"--intensity {text!r}: expected minmax, percentile, or percentile:LO,HI with "
                     "0 <= LO < HI <= 100 (e.g. percentile:0.5,99.5)")


def scale_intensity(image: np.ndarray, intensity: str = MINMAX, source: str | Path = "image",
                    fix: str = "re-create the file.") -> np.ndarray:
    """One image (or volume) scaled to [0, 1] as ``intensity`` (:func:`parse_intensity`) says. An image whose
    two percentiles are equal (mostly one value: a near-empty mask) is min-max scaled instead."""
    intensity = parse_intensity(intensity)
    if intensity == MINMAX:
        return minmax_scale(image, source, fix)
    if not np.isfinite(image).all():
        raise DataError(f"Image {source} contains NaN or infinite values: {fix}")
    lo_q, hi_q = (float(v) for v in intensity.partition(":")[2].split(","))
    lo, hi = np.percentile(image, [lo_q, hi_q])
    if hi <= lo:
        return minmax_scale(image, source, fix)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def apply_flip(image: np.ndarray, flip: str | None) -> np.ndarray:
    """An image (C, H, W) or volume (C, D, H, W) flipped as a split's suffix asks: ``vflip`` reverses the rows
    (H: upside down), ``hflip`` the columns (W: mirrored); a volume's every slice is flipped so, its depth kept."""
    if flip == "vflip":
        return np.ascontiguousarray(np.flip(image, axis=-2))
    if flip == "hflip":
        return np.ascontiguousarray(np.flip(image, axis=-1))
    return image


MASK_COLUMNS = {"masks": ("mask",), "brain_masks": ("brain_mask",)}  # ground truth a split CSV may carry


@dataclass
class ImageSet:
    """A whole split in memory: small benchmark sets fit easily and load once."""

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    filenames: list[str]
    name: str
    source: Path | None = None  # the split CSV (its mask columns are read from it)
    preprocessing: tuple = (None, None)  # a volume split's (--image_roi, --image_size)

    def __len__(self) -> int:
        return len(self.filenames)

    def masks(self, n: int) -> dict[str, np.ndarray]:
        """The ground truth of the first ``n`` images, from the split CSV's ``mask`` (the lesion: any non-zero
        voxel is abnormal) and ``brain_mask`` (where to evaluate) columns, made as the images are (cropped,
        resized by nearest neighbour): bool arrays (n, *spatial), by key ``masks`` and ``brain_masks``; {}
        without those columns."""
        return read_masks(self.source, n, self.images.shape[1:], *self.preprocessing) if self.source else {}

    def example_extras(self, n: int) -> dict[str, np.ndarray]:
        """What the kept examples of the first ``n`` images carry beside them: their ground truth
        (:meth:`masks`) and, for volumes, how they were made from their files (``image_roi``, ``image_size``,
        ``flip``), so that maps can be brought back to each scan's grid (:func:`to_scan_grid`)."""
        extras = self.masks(n)
        if self.images.dim() == 5:
            roi, size = self.preprocessing
            extras.update(image_roi=np.asarray(list(roi or []), np.int64), image_size=np.asarray(int(size or 0)),
                          flip=np.asarray(getattr(self.images, "flip", None) or ""))
        return extras


def read_masks(split: Path, n: int, image_shape, image_roi=None, image_size: int | None = None) -> dict:
    """:meth:`ImageSet.masks` of a split CSV whose images have ``image_shape`` (C, *spatial) once made."""
    arrays = {}
    for key, names in MASK_COLUMNS.items():
        entries = read_split_entries(split, names)
        if entries is None:
            continue
        arrays[key] = np.stack([read_mask(entry, tuple(int(d) for d in image_shape[1:]), image_roi, image_size)
                                for entry in entries[:n]])
    return arrays


def read_mask(entry: Entry, shape: tuple[int, ...], image_roi=None, image_size: int | None = None) -> np.ndarray:
    """One mask file as a bool array of ``shape``: non-zero anywhere in its channels; a volume's cropped and
    resized (nearest neighbour) as the images are. Another shape is refused, naming the file."""
    if not entry.path.is_file():
        raise DataError(f"{entry.where}: the mask {entry.path} does not exist.")
    if len(shape) == 3:
        mask = read_volume(entry.path, entry.where)
        mask = center_crop(mask, image_roi) if image_roi else mask
        mask = torch.from_numpy(np.ascontiguousarray(mask != 0).astype(np.float32))
        if image_size and tuple(mask.shape[1:]) != (image_size,) * 3:
            mask = torch.nn.functional.interpolate(mask[None], size=(image_size,) * 3, mode="nearest")[0]
        mask = mask.numpy() > 0.5
    else:
        mask = load_image(entry.path, entry.where) != 0
    mask = mask.any(axis=0)
    if mask.shape != tuple(shape):
        raise DataError(f"{entry.where}: the mask {entry.path} has shape {mask.shape} once made as the images are, "
                        f"but the images have {tuple(shape)}: give each image a mask of its own shape.")
    return mask


def load_split(path: str | Path, is_grayscale: bool, first_n: int | None = None, progress: bool = True,
               num_workers: int = 4, intensity: str = MINMAX) -> ImageSet:
    """Load a split CSV (with optional ``_vflip``/``_hflip`` suffix) into one tensor.

    Files are read by ``num_workers`` threads (file reads release the GIL); 0 reads in this thread.
    """
    if first_n is not None and first_n < 0:
        raise DataError(f"first_n must be a non-negative number of images, got {first_n}.")
    spec = resolve_split(path)
    if spec.csv_path.is_dir():
        entries = [Entry(f, f"folder {spec.csv_path}") for f in folder_images(spec.csv_path)]
    else:
        entries = read_split_entries(spec.csv_path)
    if first_n is not None:
        entries = entries[:first_n]
        if not entries:
            raise DataError(f"first_n=0 leaves no images from {spec.csv_path}.")
    files = [entry.path for entry in entries]
    read = lambda entry: load_image(entry.path, entry.where)
    channels = 1 if is_grayscale else 3
    images = None
    if num_workers > 0:
        pool = ThreadPoolExecutor(num_workers)
        loaded = pool.map(read, entries)
    else:
        pool, loaded = None, map(read, entries)
    try:
        for i, (f, image) in enumerate(zip(files, tqdm(loaded, total=len(files), desc=f"loading {spec.name}",
                                                         disable=not progress, leave=False))):
            images = _place(images, i, f, image, len(files), channels, is_grayscale, spec, intensity)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    logger.info("Loaded %d images of shape %s from %s%s", len(files), tuple(images.shape[1:]), spec.csv_path,
                f" ({spec.flip})" if spec.flip else "")
    return ImageSet(torch.from_numpy(images), [str(f) for f in files], spec.name,
                    None if spec.flip or spec.csv_path.is_dir() else spec.csv_path)


def _place(images: np.ndarray | None, i: int, f: Path, image: np.ndarray, n_files: int, channels: int,
           is_grayscale: bool, spec: SplitSpec, intensity: str = MINMAX) -> np.ndarray:
    """Check one loaded image and store it, scaled and flipped, at row i."""
    if image.shape[0] == 3 and channels == 1 and (image[0] == image[1]).all() and (image[1] == image[2]).all():
        image = image[:1]  # a grayscale image saved as RGB (R = G = B) is the grayscale image it shows
    if image.shape[0] != channels:
        kind = "grayscale (1 channel)" if is_grayscale else "colour (3 channels)"
        raise DataError(
            f"Image {f} has {image.shape[0]} channel(s), but {kind} images are needed here: convert the image "
            f"(train.py and reconstruct.py take --is_grayscale={1 - int(is_grayscale)} for a model of such images)."
        )
    if images is None:
        images = np.empty((n_files, *image.shape), dtype=np.float32)
    elif image.shape != images.shape[1:]:
        raise DataError(
            f"Image {f} has shape {image.shape} but the first image of {spec.csv_path} has "
            f"{images.shape[1:]}; all images of a split must have one size."
        )
    images[i] = apply_flip(scale_intensity(image, intensity, f), spec.flip)
    return images



def preprocessing_record(spatial_dimension: int | None, image_roi=None, image_size: int | None = None,
                         intensity: str | None = None) -> dict | None:
    """How a run's images were made from their files, as its model files keep it: for volumes, --image_roi then
    --image_size; the --intensity scaling where it is not the paper's min-max (so records made before it stay
    as they were). None for 2D min-max images (nothing to record)."""
    record = {}
    if spatial_dimension == 3:
        record = {"image_roi": [int(d) for d in image_roi] if image_roi else None,
                  "image_size": int(image_size) if image_size else None}
    if intensity and intensity != MINMAX:
        record["intensity"] = intensity
    return record or None


def record_intensity(record: dict | None) -> str:
    """The --intensity a preprocessing record says (min-max where it says none)."""
    return (record or {}).get("intensity") or MINMAX


def describe_preprocessing(record: dict | None) -> str:
    """A preprocessing record in words (for messages)."""
    scaled = f", intensities scaled by --intensity {record_intensity(record)}" \
        if record_intensity(record) != MINMAX else ""
    if not record or not (record.get("image_roi") or record.get("image_size")):
        return ("volumes as stored (no --image_roi, no --image_size)" if record and "image_roi" in record
                else "images as stored") + scaled
    steps = ([f"cropped to --image_roi {record['image_roi']}"] if record.get("image_roi") else []) + \
        ([f"resized to --image_size {record['image_size']}"] if record.get("image_size") else [])
    return "volumes " + ", then ".join(steps) + scaled


def resize_advice(preprocessing: dict | None) -> str:
    """How to bring images of another size to a model's: resize them, or, for a model whose volumes were cropped
    and resized (``preprocessing``, as its file records it), make them the same way."""
    if not preprocessing or not (preprocessing.get("image_roi") or preprocessing.get("image_size")):
        return "resize them"
    return (f"make them as the model's own were ({describe_preprocessing(preprocessing)}; volume files given to "
            "reconstruct.py, --score_ids or OODDetector.score_files are made so for you)")


def check_image_shape(image_set: ImageSet, expected, what: str, split: str | Path,
                      preprocessing: dict | None = None) -> None:
    """The images of a split must have the shape (C, H, W) that ``what`` (a model, the training
    set) has; ``expected`` None means unknown (a model file from an older version): not checked.
    ``preprocessing``: how a model's volumes were made, for the advice."""
    if expected is None:
        return
    shape = tuple(int(d) for d in image_set.images.shape[1:])
    if shape != tuple(int(d) for d in expected):
        advice = resize_advice(preprocessing)
        raise DataError(
            f"Images of {split} (e.g. {image_set.filenames[0]}) have shape {shape}, but {what} expects "
            f"{tuple(int(d) for d in expected)}. {advice[0].upper()}{advice[1:]}, or use a model trained on this size."
        )


FOREGROUND_LEVEL = 0.05  # of the [0, 1] range: what counts as foreground for the input check
PROFILE_STATS = {"foreground": "foreground fraction", "foreground_mean": "mean foreground intensity",
                 "foreground_std": "spread of foreground intensities"}


def image_stats(images: torch.Tensor) -> dict[str, np.ndarray]:
    """What the input check compares, per image of a batch (N, C, ...) scaled to [0, 1]: the fraction of
    voxels above FOREGROUND_LEVEL, and the mean and standard deviation of those voxels' values."""
    flat = images.detach().to("cpu", torch.float64).flatten(1)
    inside = flat > FOREGROUND_LEVEL
    count = inside.sum(dim=1).clamp(min=1)
    mean = (flat * inside).sum(dim=1) / count
    std = (((flat - mean[:, None]) ** 2) * inside).sum(dim=1).div(count).sqrt()
    return {"foreground": inside.double().mean(dim=1).numpy(), "foreground_mean": mean.numpy(),
            "foreground_std": std.numpy()}


def profile_training_set(image_set: ImageSet, split: str | Path) -> dict:
    """One pass over a training set, before any training: it must show something (images that are one value
    everywhere once made: a constant scan, a 1-voxel --image_size, an empty mask listed as a scan, all become
    0 and teach nothing; all of them is refused, a few are named in a warning), and its profile is returned:
    the range of each :func:`image_stats` statistic over its images, which the input check at scoring time
    compares new images against (:func:`input_check`)."""
    images, constant, stats = image_set.images, [], []
    for first in range(0, len(images), 16):  # in pieces: volumes are read from disk as they go
        batch = images[first:first + 16]
        spread = batch.flatten(1).amax(dim=1) - batch.flatten(1).amin(dim=1)
        constant += [first + int(i) for i in torch.nonzero(spread == 0).flatten()]
        stats.append(image_stats(batch))
    if constant:
        example = image_set.filenames[constant[0]]
        if len(constant) == len(images):
            made = f", {describe_preprocessing(preprocessing_record(3, *image_set.preprocessing))}" \
                if any(image_set.preprocessing) else ""
            raise DataError(f"Every image of {split} is one value everywhere once read (e.g. {example}{made}): "
                            "per-image scaling makes each all 0, and a model trained on them learns nothing. List the "
                            "real images (not masks or blank files), or a larger --image_size.")
        logger.warning("%d of the %d images of %s are one value everywhere once read (e.g. %s): each becomes all 0; "
                       "remove them if they are not real images (blank files, masks listed as images).",
                       len(constant), len(images), split, example)
    values = {key: np.concatenate([s[key] for s in stats]) for key in PROFILE_STATS}
    return {key: [float(v.min()), float(np.median(v)), float(v.max())] for key, v in values.items()}


def input_check(images: torch.Tensor, profile: dict | None) -> list[str]:
    """Per image of a batch (scaled as the model's were): '' where it looks like the training images, else
    what is far outside their range (each statistic of :func:`image_stats` beyond the training minimum or
    maximum by more than half the training range, and at least 0.05), in words. ``profile`` None (a model
    trained before the check, or another library's): nothing is checked."""
    if not profile:
        return [""] * len(images)
    stats = image_stats(images)
    said = [[] for _ in range(len(images))]
    for key, label in PROFILE_STATS.items():
        if key not in profile:
            continue
        low, _, high = profile[key]
        margin = max(0.5 * (high - low), 0.05)
        for i, value in enumerate(stats[key]):
            if not low - margin <= value <= high + margin:
                said[i].append(f"{label} {value:.3g} (training images: {low:.3g} to {high:.3g})")
    return ["; ".join(s) for s in said]


def one_image(image, dims: int = 2) -> np.ndarray:
    """One image of a list, as the split loader reads a file: a PIL image (converted to gray or
    RGB), or an array or tensor of shape (H, W), (C, H, W) or (H, W, C) -> (C, H, W); for a model
    of volumes (``dims`` 3), (D, H, W) or (C, D, H, W) -> (C, D, H, W)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image) if image.mode in ("I", "I;16", "F") else \
            np.asarray(image.convert("L" if image.mode in ("1", "L", "LA") else "RGB"))
    else:
        array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if dims == 3:
        return array[None] if array.ndim == 3 else array  # a grayscale volume, or one with its channels
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        return array.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return array


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """A batch of grayscale images saved as RGB (R = G = B) for a one-channel model: their gray channel."""
    if channels == 1 and images.dim() == 4 and images.shape[1] == 3 and \
            (images[:, :1] == images[:, 1:2]).all() and (images[:, 1:2] == images[:, 2:]).all():
        return images[:, :1].contiguous()
    return images


def prepare_images(images, filenames=None, dims: int = 2, intensity: str = MINMAX) -> torch.Tensor:
    """Images given from Python as the split loader makes them from files: an (N, C, H, W) float32
    tensor, each image min-max scaled to [0, 1] on its own (so uint8 0..255, [0, 0.8] or float64
    images score as their files would). Takes a tensor (detached; on any device), a numpy array
    or a list of same-shaped images (for a model of volumes, ``dims`` 3: (N, C, D, H, W), or a list
    of (D, H, W) or (C, D, H, W) volumes); refuses an empty batch, another rank, NaN, infinite or
    beyond-float32 values and a ``filenames`` list of another length, saying which."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("The batch is empty: pass at least one image.")
        try:
            images = np.stack([one_image(i, dims) for i in images])
        except ValueError as err:
            raise DataError(f"The images of the list differ in shape ({err}); pass images of one size.") from None
    if isinstance(images, np.ndarray):
        if images.dtype == object:
            raise DataError("The images are not numbers (a numpy array of objects); pass a numeric array or tensor.")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise DataError(f"Images must be a torch tensor, a numpy array or a list of them, not {type(images).__name__}.")
    if dims == 3 and images.dim() == 4:
        raise DataError(f"A model of volumes takes a batch of shape (N, C, D, H, W), got shape {tuple(images.shape)}: "
                        "for grayscale volumes (N, D, H, W) add their channel (images[:, None]).")
    if images.dim() not in (4, 5):
        raise DataError(f"Images must be a batch of shape (N, C, H, W), or (N, C, D, H, W) of volumes, got shape "
                        f"{tuple(images.shape)} (for one image use images[None]).")
    if len(images) == 0:
        raise DataError("The batch is empty: pass at least one image.")
    if filenames is not None and len(filenames) != len(images):
        raise DataError(f"{len(filenames)} filenames for {len(images)} images: pass one name per image.")
    names = filenames or [f"{i} of the batch" for i in range(len(images))]
    fix = "replace them (e.g. torch.nan_to_num) or leave the image out."
    pixels = [as_float32(image, name, "the images given", fix) for image, name in
              zip(images.detach().cpu().numpy(), names)]
    return torch.from_numpy(np.stack([scale_intensity(image, intensity, name, fix) for image, name in
                                      zip(pixels, names)]))


# --- volumes (--spatial_dimension 3) ----------------------------------------------------------------

def mid_slices(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) as is; volumes (N, C, D, H, W): their middle slice along the first axis (for figures)."""
    return images[:, :, images.shape[2] // 2] if images.dim() == 5 else images


VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def volume_shape(path: Path, where: str) -> tuple[int, ...]:
    """A volume file's (C, D, H, W) from its header alone (nothing is read but the header). A 2D
    image, a NIfTI with a time axis or another rank is refused, naming the file and what to do."""
    fix = "list 3D volumes ((D, H, W) or (C, D, H, W) .npy arrays, or 3D NIfTI files) in a 3D run"
    if not path.is_file():
        read_regular(path, MAX_IMAGE_BYTES, where, "a volume")  # raises, saying what the path is
    if is_nifti(path):
        try:
            import nibabel

            image = nibabel.load(str(path))
            shape = tuple(int(d) for d in image.shape)
        except Exception as err:  # nibabel raises several types for damaged files
            raise DataError(f"{where}: {path} is not a NIfTI file nibabel reads ({type(err).__name__}); re-create "
                            "it.") from None
        check_nifti_body(path, image, shape, where)
        if len(shape) == 4 and shape[3] > 1:
            raise DataError(f"{where}: {path} has a time (4th) axis of {shape[3]} volumes, shape {shape}; save one "
                            "volume per file (e.g. nibabel's img.slicer[..., 0]) and list those.")
        shape = shape[:3] if len(shape) == 4 else shape
    elif path.suffix.lower() == ".npy":
        try:
            shape = tuple(int(d) for d in np.load(path, mmap_mode="r", allow_pickle=False).shape)
        except (ValueError, OSError, EOFError):
            raise DataError(f"{where}: {path} is not a .npy array this code reads (damaged, or Python objects); "
                            "re-create it with np.save.") from None
    else:
        raise DataError(f"{where}: {path} is not a volume file ({', '.join(VOLUME_SUFFIXES)}); {fix}.")
    if len(shape) == 3:
        return (1, *shape)
    if len(shape) == 4 and shape[0] in (1, 3):
        return shape
    if len(shape) == 2:
        raise DataError(f"{where}: {path} is a 2D image of shape {shape}, not a volume; {fix}, or run in 2D "
                        "(--spatial_dimension 2).")
    raise DataError(f"{where}: {path} has shape {shape}; {fix}.")


def check_nifti_body(path: Path, image, shape, where: str) -> None:
    """A NIfTI file's body, not only its header: as many bytes as the header promises and, for
    .nii.gz, a whole gzip stream (its CRC and length checked by reading it through). A truncated or
    corrupt file is refused here, before any work, not mid-run."""
    import gzip
    import zlib

    expected = int(image.dataobj.offset) + int(np.prod(shape)) * image.header.get_data_dtype().itemsize
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                size = 0
                while chunk := stream.read(1 << 22):
                    size += len(chunk)
        else:
            size = path.stat().st_size
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{where}: {path} is a damaged NIfTI file ({type(err).__name__}: {err}); re-create or "
                        "re-download it.") from None
    if size < expected:
        raise DataError(f"{where}: {path} is truncated: its header promises {expected} bytes of volume "
                        f"{shape}, it holds {size}; re-create or re-download it.")


def nifti_geometry(path: Path) -> tuple[str, tuple[float, ...]] | None:
    """A NIfTI file's orientation (axis codes, e.g. 'RAS') and voxel spacing (mm, rounded to 0.01),
    from its header; None for other files."""
    if not is_nifti(path):
        return None
    import nibabel

    image = nibabel.load(str(path))
    codes = "".join(str(c) for c in nibabel.aff2axcodes(image.affine))
    return codes, tuple(round(float(z), 2) for z in image.header.get_zooms()[:3])


def warn_mixed_geometry(entries, where: str) -> None:
    """Volumes are read as stored, voxel array by voxel array: a NIfTI file's affine (orientation) and
    spacing are not applied. A split whose files differ in either is said, once, with an example of each,
    as the network would compare left with right or 1 mm with 2 mm voxels without a word."""
    seen: dict[str, dict] = {"orientation": {}, "voxel spacing (mm)": {}}
    for entry in entries:
        geometry = nifti_geometry(entry.path)
        if geometry is not None:
            seen["orientation"].setdefault(geometry[0], entry.path)
            seen["voxel spacing (mm)"].setdefault(geometry[1], entry.path)
    for what, examples in seen.items():
        if len(examples) > 1:
            listed = "; ".join(f"{value} (e.g. {path})" for value, path in list(examples.items())[:3])
            logger.warning("The NIfTI files of %s differ in %s: %s. Volumes are read as stored (the affine is not "
                           "applied: no reorientation, no resampling), so they would be compared voxel for voxel; "
                           "bring them to one orientation and spacing first (e.g. nibabel.as_closest_canonical, "
                           "fslreorient2std, or MONAI's Orientation and Spacing transforms).", where, what, listed)


def read_volume(path: Path, where: str) -> np.ndarray:
    """One volume as float32 (C, D, H, W), unscaled."""
    if is_nifti(path):
        import nibabel

        array = as_float32(np.asanyarray(nibabel.load(str(path)).dataobj), path, where)
        array = array[..., 0] if array.ndim == 4 else array
    else:
        array = as_float32(np.load(path, allow_pickle=False), path, where)
    return array[None] if array.ndim == 3 else array


def center_crop(volume: np.ndarray, roi) -> np.ndarray:
    """The central ``roi`` (D, H, W) of a (C, D, H, W) volume (load_volumes refuses a ROI larger than a volume)."""
    return volume[(slice(None), *crop_box(volume.shape[1:], roi))]


def crop_box(spatial, roi) -> tuple[slice, ...]:
    """Where :func:`center_crop` takes its region from a volume of ``spatial`` (D, H, W) shape."""
    box = []
    for side, want in zip(spatial, roi or spatial):
        start = max(0, (side - want) // 2)
        box.append(slice(start, start + min(side, want)))
    return tuple(box)


def to_scan_grid(values: np.ndarray, spatial, roi=None, size: int | None = None, flip: str | None = None,
                 fill: float = 0.0) -> np.ndarray:
    """A map on the model's grid (D, H, W) brought back to its scan's grid ``spatial``: the resize undone
    (trilinear, as the volume was made), the flip undone, the crop placed where it was taken (``fill``
    outside it). The inverse of how :class:`LazyVolumes` makes a volume, so it overlays the scan voxel for
    voxel."""
    box = crop_box(spatial, roi)
    cropped = tuple(b.stop - b.start for b in box)
    grid = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if size and tuple(grid.shape) != cropped:
        grid = torch.nn.functional.interpolate(grid[None, None], size=cropped, mode="trilinear",
                                               align_corners=False)[0, 0]
    grid = apply_flip(grid.numpy()[None], flip)[0]
    if grid.shape != cropped:
        raise DataError(f"A map of shape {grid.shape} cannot be placed in a scan of shape {tuple(spatial)} cropped "
                        f"to {cropped}: the map was made from another volume.")
    out = np.full(tuple(int(s) for s in spatial), fill, np.float32)
    out[box] = grid
    return out


def cropped_shape(shape, roi, size) -> tuple[int, ...]:
    channels, spatial = shape[0], list(shape[1:])
    if roi:
        spatial = [min(s, r) for s, r in zip(spatial, roi)]
    if size:
        spatial = [int(size)] * len(spatial)
    return (channels, *spatial)


class LazyVolumes:
    """A split's volumes, read from disk when indexed, never held all at once: indexing with an
    int, a slice, a list or a tensor of rows gives a float32 tensor (min-max scaled to [0, 1] per
    volume, centre-cropped to ``roi``, resized to ``size``^3), as an in-memory set's rows would be."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, entries: list[Entry], shape: tuple[int, ...], roi=None, size=None, flip=None,
                 intensity: str = MINMAX):
        self.entries, self.volume_shape, self.roi, self.size, self.flip = entries, tuple(shape), roi, size, flip
        self.intensity = intensity

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.entries), *self.volume_shape))

    def __len__(self) -> int:
        return len(self.entries)

    def dim(self) -> int:
        return 1 + len(self.volume_shape)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def element_size(self) -> int:
        return 4

    def read(self, i: int) -> torch.Tensor:
        entry = self.entries[i]
        volume = read_volume(entry.path, entry.where)
        if self.roi:
            volume = center_crop(volume, self.roi)
        volume = scale_intensity(volume, self.intensity, entry.path)
        tensor = torch.from_numpy(np.ascontiguousarray(apply_flip(volume, self.flip)))
        if self.size and tuple(tensor.shape[1:]) != (self.size,) * 3:
            tensor = torch.nn.functional.interpolate(tensor[None], size=(self.size,) * 3, mode="trilinear",
                                                     align_corners=False)[0]
        if tuple(tensor.shape) != self.volume_shape:
            raise DataError(f"{entry.where}: {entry.path} changed on disk: it now has shape {tuple(tensor.shape)}, not "
                            f"{self.volume_shape}.")
        return tensor

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.read(int(index))
        if isinstance(index, slice):
            rows = range(*index.indices(len(self)))
        else:
            rows = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        if not len(rows):
            return torch.empty(0, *self.volume_shape)
        return torch.stack([self.read(i) for i in rows])

    def to(self, device, *args, **kwargs):
        return self if torch.device(device).type == "cpu" else self[:].to(device, *args, **kwargs)


def load_volumes(path: str | Path, is_grayscale: bool, first_n: int | None = None, image_roi=None,
                 image_size: int | None = None, intensity: str = MINMAX) -> ImageSet:
    """A split of volumes, checked from the headers of every file (shape, rank, time axis, channels)
    before any is read: an :class:`ImageSet` whose ``images`` are :class:`LazyVolumes`."""
    spec = resolve_split(path)
    entries = read_split_entries(spec.csv_path) if not spec.csv_path.is_dir() else \
        [Entry(f, f"folder {spec.csv_path}") for f in sorted(p for p in spec.csv_path.iterdir()
                                                             if p.name.lower().endswith(VOLUME_SUFFIXES))]
    if first_n is not None:
        entries = entries[:first_n]
    if not entries:
        raise DataError(f"{spec.csv_path} lists no volumes.")
    channels = 1 if is_grayscale else 3
    first = None
    for entry in entries:
        shape = volume_shape(entry.path, entry.where)
        if shape[0] != channels:
            raise DataError(f"{entry.where}: volume {entry.path} has {shape[0]} channel(s), but "
                            f"{'grayscale (1 channel)' if is_grayscale else 'colour (3 channels)'} volumes are needed "
                            "here; convert it, or fix --is_grayscale.")
        if image_roi and any(want > side for side, want in zip(shape[1:], image_roi)):
            raise DataError(f"{entry.where}: volume {entry.path} is {tuple(shape[1:])}, smaller than --image_roi "
                            f"{list(image_roi)} along some axis: a crop cannot be larger than the volume (it was "
                            "silently not applied). Choose a ROI within every volume, or leave it out.")
        if first is None:
            first = (entry, shape)
        elif shape != first[1] and not image_size:
            raise DataError(f"{entry.where}: volume {entry.path} has shape {shape}, but {first[0].path} has "
                            f"{first[1]}; all volumes of a split must have one shape (or pass --image_size to resize "
                            "them all).")
    warn_mixed_geometry(entries, str(spec.csv_path))
    shape = cropped_shape(first[1], image_roi, image_size)
    logger.info("Found %d volumes of shape %s in %s (read as needed)", len(entries), shape, spec.csv_path)
    return ImageSet(LazyVolumes(entries, shape, image_roi, image_size, spec.flip, intensity),
                    [str(e.path) for e in entries],
                    spec.name, None if spec.flip or spec.csv_path.is_dir() else spec.csv_path, (image_roi, image_size))


def load_images(path: str | Path, is_grayscale: bool, spatial_dimension: int = 2, first_n: int | None = None,
                progress: bool = True, num_workers: int = 4, image_roi=None, image_size: int | None = None,
                intensity: str | None = None) -> ImageSet:
    """A split of images (in memory) or, with ``spatial_dimension`` 3, of volumes (read as needed); each scaled
    to [0, 1] as ``intensity`` says (None: min-max, the paper's)."""
    intensity = intensity or MINMAX
    if spatial_dimension == 3:
        return load_volumes(path, is_grayscale, first_n, image_roi, image_size, intensity)
    if image_roi or image_size:
        raise DataError("--image_roi and --image_size apply to volumes (--spatial_dimension 3); resize 2D images "
                        "before listing them.")
    return load_split(path, is_grayscale, first_n=first_n, progress=progress, num_workers=num_workers,
                      intensity=intensity)
