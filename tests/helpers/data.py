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
