"""Data files made in published layouts."""
from __future__ import annotations

import numpy as np

from ddpm_ood.data.download import write_idx


def make_idx_source(folder, n_train=40, n_test=10, seed=0):
    """A folder of MNIST-style IDX files (train gzipped, test plain); returns the (train, test) arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 255, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 255, (n_test, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", train)  # as torchvision and Debian ship them
    write_idx(folder / "t10k-images-idx3-ubyte", test)  # uncompressed works too
    return train, test


def decathlon_task(root, task, n_train, n_test, modalities=1, shape=(10, 12, 8), seed=2, bright=None):
    """A Medical Decathlon task folder (dataset.json, imagesTr/, labelsTr/, imagesTs/) of random volumes;
    ``bright``: a value added to a ball in the middle of every volume (a task that looks otherwise)."""
    import json

    import nibabel

    folder = root / task
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    spatial = tuple(shape)
    shape = spatial + ((modalities,) if modalities > 1 else ())
    grid = np.stack(np.meshgrid(*[np.arange(d) - d / 2 for d in spatial], indexing="ij"))
    ball = ((grid ** 2).sum(0) < (min(spatial) / 3) ** 2).astype(np.float32)
    ball = ball[..., None] if modalities > 1 else ball

    def volume():
        return (rng.random(shape) + (bright * ball if bright is not None else 0)).astype(np.float32)

    training, test = [], []
    for i in range(n_train):
        nibabel.save(nibabel.Nifti1Image(volume(), np.eye(4)), folder / "imagesTr" / f"case_{i:03d}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(np.zeros(shape[:3], np.uint8), np.eye(4)),
                     folder / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    for i in range(n_test):
        nibabel.save(nibabel.Nifti1Image(volume(), np.eye(4)), folder / "imagesTs" / f"case_{100 + i:03d}.nii.gz")
        test.append(f"./imagesTs/case_{100 + i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "name": task, "description": "test", "reference": "", "licence": "CC-BY-SA 4.0", "release": "1.0",
        "tensorImageSize": "4D" if modalities > 1 else "3D", "modality": {str(m): f"m{m}" for m in range(modalities)},
        "labels": {"0": "background"}, "numTraining": n_train, "numTest": n_test, "training": training, "test": test}))
