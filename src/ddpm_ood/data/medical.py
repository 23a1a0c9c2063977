"""The medical datasets of the authors' later work, for ``get_datasets.py``: MedNIST (one class
against the rest), the 3D MedMNIST sets and the Medical Decathlon tasks. Each is downloaded by its
own library's code (MONAI's ``MedNISTDataset`` and ``DecathlonDataset``, the ``medmnist``
package) or, with ``--source_dir``, read from files already on disk in their published layouts:

- **MedNIST** (2D, 64x64 JPEGs): ``MedNIST/<Class>/<n>.jpeg`` (the folder ``MedNIST.tar.gz``
  extracts to). Each class is split 80/10/10 into ``<Class>_{train,val,test}.csv`` with
  MedNISTDataset's fractions and seed, over the files sorted by name (MONAI's own order is the
  file system's, which differs between machines). The CSVs list the JPEGs themselves.
- **MedMNIST3D** (3D, 28^3): ``<flag>.npz`` (``train_images``, ``val_images``,
  ``test_images``) for organ, nodule, fracture, adrenal, vessel and synapse, written as one
  ``.npy`` volume per image (``MedMNIST3D_<flag>/numpy/<split>/``), listed in ``medmnist3d_<flag>_{train,val,test}.csv`` (ddpm-ood's names).
- **Decathlon** (3D NIfTI): ``TaskXX_Name/`` with ``dataset.json``, ``imagesTr/`` and
  ``imagesTs/``; MONAI's DecathlonDataset splits training 80/20 (seed 0) into
  ``TaskXX_Name_{train,val}.csv``, and ``imagesTs`` is ``TaskXX_Name_test.csv``. A task of several
  modalities (BrainTumour: FLAIR, T1w, T1gd, T2w; Prostate) is written as its first modality, one
  3D NIfTI per volume (``Decathlon/TaskXX_Name/modality0/``), as ddpm-ood takes channel 0.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ddpm_ood.data.download import _sorted_files, convert_split, write_split_csv
from ddpm_ood.utils.errors import DownloadError

logger = logging.getLogger(__name__)

MEDNIST_FRACTIONS = (0.1, 0.1)  # validation, test: MONAI MedNISTDataset's defaults
MEDMNIST3D_FLAGS = ("organmnist3d", "nodulemnist3d", "fracturemnist3d", "adrenalmnist3d", "vesselmnist3d",
                    "synapsemnist3d")
DECATHLON_TASKS = ("Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus", "Task05_Prostate",
                   "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen", "Task10_Colon")
SPLIT_NAMES = {"training": "train", "validation": "val", "test": "test"}


# --- MedNIST -----------------------------------------------------------------------------------------

def mednist_folder(data_root: Path, source_dir: Path | None) -> Path:
    """The extracted MedNIST folder (one sub-folder per class): in ``source_dir``, or downloaded by MONAI."""
    if source_dir is not None:
        for folder in (source_dir / "MedNIST", source_dir):
            if folder.is_dir() and any(p.is_dir() and any(p.glob("*.jpeg")) for p in folder.iterdir()):
                return folder
        raise DownloadError(f"--source_dir {source_dir} holds no MedNIST class folders of JPEGs (MedNIST/<Class>/"
                            "*.jpeg, as MedNIST.tar.gz extracts).")
    from monai.apps import MedNISTDataset

    root = data_root / "MedNIST_raw"
    root.mkdir(parents=True, exist_ok=True)
    try:
        MedNISTDataset(root_dir=root, section="test", download=True, cache_rate=0, progress=False)
    except Exception as err:  # no network, a failed checksum
        raise DownloadError(f"Cannot download MedNIST ({type(err).__name__}: {err}); download MedNIST.tar.gz "
                            f"({MedNISTDataset.resource}), extract it and pass --source_dir MedNIST=DIR.") from None
    return root / "MedNIST"


def prepare_mednist(data_root: Path, source_dir: Path | None) -> list[Path]:
    folder = mednist_folder(data_root, source_dir)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    files = [(c.name, f) for c in classes for f in sorted(c.glob("*.jpeg"))]
    order = np.arange(len(files))
    np.random.RandomState(0).shuffle(order)  # MedNISTDataset(seed=0)'s shuffle
    n_val, n_test = (int(len(files) * frac) for frac in MEDNIST_FRACTIONS)
    sections = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    written, empty = [], []
    for cls in classes:
        for split, rows in sections.items():
            chosen = [files[i][1] for i in sorted(rows) if files[i][0] == cls.name]
            if not chosen:  # an empty split file would only fail later, far from here
                empty.append(f"{cls.name}_{split}")
                (data_root / "data_splits" / f"{cls.name}_{split}.csv").unlink(missing_ok=True)  # an older one
                continue
            written.append(write_split_csv(data_root, f"{cls.name}_{split}", chosen))
    if empty:
        counts = ", ".join(f"{c.name} {sum(1 for name, _ in files if name == c.name)}" for c in classes)
        logger.warning("MedNIST: %s got no images and were not written (images per class: %s; the split takes "
                       "10%% for validation and 10%% for test, as MONAI's MedNISTDataset): give those classes more "
                       "images.", ", ".join(empty), counts)
    if not written:
        raise DownloadError(f"{folder} holds no MedNIST images (*.jpeg in one folder per class).")
    return written


# --- 3D MedMNIST -------------------------------------------------------------------------------------

def medmnist_npz(flag: str, data_root: Path, source_dir: Path | None) -> Path:
    if source_dir is not None:
        path = source_dir / f"{flag}.npz"
        if not path.is_file():
            raise DownloadError(f"--source_dir {source_dir} has no {flag}.npz (the file medmnist downloads).")
        return path
    try:
        import medmnist
    except ImportError:
        raise DownloadError("The 3D MedMNIST sets are downloaded by the medmnist package: pip install medmnist, or "
                            f"pass --source_dir MedMNIST3D=DIR with {', '.join(f + '.npz' for f in MEDMNIST3D_FLAGS)}."
                            ) from None
    root = data_root / "MedMNIST3D" / "raw"
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    try:
        cls(split="test", download=True, root=str(root))
    except Exception as err:
        raise DownloadError(f"Cannot download {flag} ({type(err).__name__}: {err}); fetch {flag}.npz and pass "
                            "--source_dir MedMNIST3D=DIR.") from None
    return root / f"{flag}.npz"


def prepare_medmnist3d(data_root: Path, source_dir: Path | None) -> list[Path]:
    written = []
    for flag in MEDMNIST3D_FLAGS:
        path = medmnist_npz(flag, data_root, source_dir)
        with np.load(path, allow_pickle=False) as arrays:
            missing = [f"{split}_images" for split in ("train", "val", "test") if f"{split}_images" not in arrays]
            if missing:
                raise DownloadError(f"{path} lacks {', '.join(missing)} (it holds {', '.join(sorted(arrays.files))}): "
                                    "not a whole 3D MedMNIST file; download it again or pass the one medmnist wrote.")
            for split in ("train", "val", "test"):
                volumes = arrays[f"{split}_images"]
                if volumes.ndim != 4:
                    raise DownloadError(f"{path}: {split}_images has shape {volumes.shape}, not (N, D, H, W) volumes.")
                folder = convert_split(data_root, f"MedMNIST3D_{flag}", split, lambda v=volumes: iter(v), len(volumes),
                                       str(path.resolve()))
                written.append(write_split_csv(data_root, f"medmnist3d_{flag}_{split}", _sorted_files(folder)))
    return written


# --- Medical Decathlon ------------------------------------------------------------------------------

def decathlon_lists(root: Path, task: str, download: bool) -> dict[str, list[dict]]:
    """The image files (``image``) of a task's training, validation and test sections, as MONAI's
    DecathlonDataset (seed 0, validation 20%) lists them, each with its label file (``label``) where the
    task gives one (``labelsTr``: training and validation)."""
    from monai.apps import DecathlonDataset

    lists = {}
    for section in SPLIT_NAMES:
        try:
            dataset = DecathlonDataset(root_dir=root, task=task, section=section, download=download and
                                       section == "training", cache_rate=0, progress=False, seed=0, transform=None)
        except Exception as err:  # missing folder, no network, a damaged dataset.json
            how = f"pass --source_dir Decathlon=DIR with {task}/ (dataset.json, imagesTr/, imagesTs/) in DIR"
            raise DownloadError(f"{task}: {type(err).__name__}: {err}; {how}.") from None
        lists[SPLIT_NAMES[section]] = [item if isinstance(item, dict) else {"image": item} for item in dataset.data]
    return lists


def first_modality(path: Path, out_dir: Path) -> Path:
    """A 3D NIfTI: the file itself, or for a 4D one (modalities last) its first modality, written once."""
    import nibabel

    image = nibabel.load(str(path))
    if len(image.shape) == 3 or image.shape[3] == 1:
        return path
    out = out_dir / path.name
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".partial.{out.name}")
        nibabel.save(image.slicer[..., 0], str(partial))
        partial.replace(out)
    return out


def prepare_decathlon(data_root: Path, source_dir: Path | None, tasks=DECATHLON_TASKS) -> list[Path]:
    root = source_dir if source_dir is not None else data_root / "Decathlon" / "raw"
    root.mkdir(parents=True, exist_ok=True)
    present = [t for t in tasks if (root / t).is_dir()] if source_dir is not None else list(tasks)
    if not present:
        raise DownloadError(f"--source_dir {root} holds none of the Decathlon task folders ({tasks[0]}, ...).")
    written = []
    for task in present:
        lists = decathlon_lists(root, task, download=source_dir is None)
        for split, items in lists.items():
            volumes = [first_modality(Path(i["image"]), data_root / "Decathlon" / task / "modality0") for i in items]
            labels = [i.get("label") for i in items]  # labelsTr: the split's mask column (any label = abnormal)
            masks = labels if labels and all(labels) and all(Path(f).is_file() for f in labels) else None
            written.append(write_split_csv(data_root, f"{task}_{split}", volumes, masks))
            logger.info("%s %s: %d volumes%s", task, split, len(volumes), ", with their labels" if masks else "")
    return written
