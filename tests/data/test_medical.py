"""get_datasets.py's medical converters (issue 25, part 5), on files made here in each dataset's
published layout (downloads fail offline), and the MNI152 volumes made from nilearn's templates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import get_datasets
from ddpm_ood.data.loading import load_images
from ddpm_ood.utils.errors import DownloadError
from helpers.data import decathlon_task

nibabel = pytest.importorskip("nibabel")
pytest.importorskip("monai")


def run(data_root, name, source):
    return get_datasets.main(get_datasets.parse_args([f"--data_root={data_root}", "--datasets", name,
                                                      "--source_dir", f"{name}={source}"]))[name]


def test_mednist_one_split_per_class_from_its_extracted_folder(tmp_path):
    source = tmp_path / "src" / "MedNIST"
    rng = np.random.default_rng(0)
    for cls in ("AbdomenCT", "Hand", "HeadCT"):
        (source / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(source / cls / f"{i:06d}.jpeg")
    written = run(tmp_path / "data", "MedNIST", tmp_path / "src")
    assert {p.name for p in written} == {f"{c}_{s}.csv" for c in ("AbdomenCT", "Hand", "HeadCT")
                                         for s in ("train", "val", "test")}
    splits = tmp_path / "data" / "data_splits"
    for cls in ("AbdomenCT", "Hand", "HeadCT"):
        files = [set(pd.read_csv(splits / f"{cls}_{s}.csv")["filename"]) for s in ("train", "val", "test")]
        assert sum(map(len, files)) == 20 and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
        assert all(f"/{cls}/" in f for f in files[0])
    n = {s: sum(len(pd.read_csv(splits / f"{c}_{s}.csv")) for c in ("AbdomenCT", "Hand", "HeadCT"))
         for s in ("train", "val", "test")}
    assert n == {"train": 48, "val": 6, "test": 6}  # MedNISTDataset's 10% / 10% of 60
    assert load_images(splits / "Hand_test.csv", True).images.shape[1:] == (1, 64, 64)
    run(tmp_path / "data2", "MedNIST", tmp_path / "src")  # deterministic: the same split again
    assert pd.read_csv(splits / "Hand_val.csv")["filename"].tolist() == \
        pd.read_csv(tmp_path / "data2" / "data_splits" / "Hand_val.csv")["filename"].tolist()


def test_mednist_splits_left_empty_are_said_not_written(tmp_path, caplog):
    """Issue 33, wording: a class too small for the 10% / 10% split got empty split CSVs, silently."""
    source = tmp_path / "src" / "MedNIST"
    for cls, n in (("Hand", 20), ("HeadCT", 1), ("Empty", 0)):
        (source / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((64, 64), 9 * i, np.uint8)).save(source / cls / f"{i:06d}.jpeg")
    with caplog.at_level("WARNING", logger="ddpm_ood.data.medical"):
        written = run(tmp_path / "data", "MedNIST", tmp_path / "src")
    assert all(len(pd.read_csv(p)) for p in written)  # no empty split file
    assert {p.name for p in written} >= {"Hand_train.csv", "Hand_val.csv", "Hand_test.csv"}
    assert not (tmp_path / "data" / "data_splits" / "Empty_train.csv").exists()
    assert "Empty_train" in caplog.text and "got no images and were not written" in caplog.text
    assert "HeadCT 1" in caplog.text and "Empty 0" in caplog.text


def test_medmnist3d_from_its_npz_files(tmp_path):
    from ddpm_ood.data.medical import MEDMNIST3D_FLAGS

    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(1)
    for flag in MEDMNIST3D_FLAGS:
        np.savez(source / f"{flag}.npz", **{f"{s}_images": rng.integers(0, 255, (n, 28, 28, 28), dtype=np.uint8)
                                             for s, n in (("train", 3), ("val", 2), ("test", 2))},
                 **{f"{s}_labels": np.zeros((2, 1)) for s in ("train", "val", "test")})
    written = run(tmp_path / "data", "MedMNIST3D", source)
    assert len(written) == 18
    organ = load_images(tmp_path / "data" / "data_splits" / "medmnist3d_organmnist3d_train.csv", True,
                        spatial_dimension=3)
    assert organ.images.shape == (3, 1, 28, 28, 28)
    with np.load(source / "organmnist3d.npz") as arrays:
        raw = arrays["train_images"][1].astype(np.float32)
    np.testing.assert_allclose(organ.images[1][0].numpy(), (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    with pytest.raises(DownloadError, match="no organmnist3d.npz"):
        run(tmp_path / "data3", "MedMNIST3D", tmp_path)


def test_decathlon_tasks_from_their_folders_first_modality_of_multimodal_ones(tmp_path):
    source = tmp_path / "src"
    decathlon_task(source, "Task04_Hippocampus", 10, 3)
    decathlon_task(source, "Task01_BrainTumour", 5, 2, modalities=4)
    written = run(tmp_path / "data", "Decathlon", source)
    assert {p.name for p in written} == {f"{t}_{s}.csv" for t in ("Task01_BrainTumour", "Task04_Hippocampus")
                                         for s in ("train", "val", "test")}
    splits = tmp_path / "data" / "data_splits"
    hippo = {s: pd.read_csv(splits / f"Task04_Hippocampus_{s}.csv")["filename"].tolist() for s in ("train", "val", "test")}
    assert (len(hippo["train"]), len(hippo["val"]), len(hippo["test"])) == (8, 2, 3)  # DecathlonDataset: 20% validation
    assert not set(hippo["train"]) & set(hippo["val"])
    brats = load_images(splits / "Task01_BrainTumour_train.csv", True, spatial_dimension=3)
    assert brats.images.shape[1:] == (1, 10, 12, 8)  # the FLAIR (first) modality of each 4D volume
    name = Path(brats.filenames[0]).name
    original = np.asarray(nibabel.load(str(source / "Task01_BrainTumour" / "imagesTr" / name)).dataobj)
    first = original[..., 0]
    np.testing.assert_allclose(brats.images[0][0].numpy(), (first - first.min()) / (first.max() - first.min()),
                               atol=1e-6)
    # labelsTr are the training and validation splits' masks (any label is abnormal); imagesTs has none
    label = source / "Task01_BrainTumour" / "labelsTr" / name
    tumour = np.zeros((10, 12, 8), np.uint8)
    tumour[2:4, 3:6, 1:3] = 2  # BraTS's labels are 1, 2, 3
    nibabel.save(nibabel.Nifti1Image(tumour, np.eye(4)), str(label))
    assert pd.read_csv(splits / "Task01_BrainTumour_train.csv")["mask"].map(lambda f: Path(f).name).tolist() == \
        [Path(f).name for f in brats.filenames]
    assert "mask" not in pd.read_csv(splits / "Task01_BrainTumour_test.csv").columns
    masks = load_images(splits / "Task01_BrainTumour_train.csv", True, spatial_dimension=3).masks(len(brats))["masks"]
    np.testing.assert_array_equal(masks[0], tumour > 0)


@pytest.mark.slow
def test_mni152_volumes_from_nilearns_templates(tmp_path):
    from ddpm_ood.data.download import MNI152_FILES, mni152_files

    try:
        mni152_files()
    except DownloadError:
        pytest.skip("nilearn's wheel is not installed (make demo3d installs it)")
    written = get_datasets.main(get_datasets.parse_args([f"--data_root={tmp_path}", "--datasets", "MNI152"]))["MNI152"]
    assert len(written) == 6 and len(MNI152_FILES) == 3
    volumes = {p.stem: load_images(p, True, spatial_dimension=3).images for p in written}
    assert volumes["MNI152_train"].shape == (160, 1, 32, 32, 32) and volumes["MNI152Lesion_test"].shape[0] == 32
    assert not np.allclose(volumes["MNI152GM_test"][0].numpy(), volumes["MNI152_test"][0].numpy())
    # The lesion set carries its balls' masks (a mask column): bright where the mask is, of 2 to 4 voxels' radius
    lesion = load_images(tmp_path / "data_splits" / "MNI152Lesion_test.csv", True, spatial_dimension=3)
    masks = lesion.masks(32)["masks"]
    sizes = masks.sum(axis=(1, 2, 3))
    assert masks.shape == (32, 32, 32, 32) and (sizes > 0).all() and (sizes <= 257).all()  # radius 2 to 4, some clipped
    assert all(lesion.images[i][0].numpy()[masks[i]].mean() > 0.8 for i in range(4))
    assert "mask" not in pd.read_csv(tmp_path / "data_splits" / "MNI152_test.csv").columns
    # Every T1 set carries its brain masks (the template's brain, cropped as each volume): the noise makes the
    # background non-zero, so 'voxels above 0' would evaluate it; the lesions lie inside the brain
    brains = lesion.masks(32)["brain_masks"]
    assert brains.shape == (32, 32, 32, 32) and 0.2 < brains.mean() < 0.8
    assert (masks & ~brains).sum() <= 0.05 * masks.sum()  # a ball at the brain's edge may stick out a little
    healthy = load_images(tmp_path / "data_splits" / "MNI152_test.csv", True, spatial_dimension=3)
    outside = ~healthy.masks(4)["brain_masks"][0]
    assert (healthy.images[0][0].numpy()[outside] > 0).mean() > 0.2  # background noise: foreground would take it
    assert healthy.images[0][0].numpy()[~outside].mean() > 3 * healthy.images[0][0].numpy()[outside].mean()
    assert "brain_mask" not in pd.read_csv(tmp_path / "data_splits" / "MNI152GM_test.csv").columns


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_medmnist3d_volumes_keep_their_values_whatever_their_type(tmp_path, dtype):
    """Float volumes in [0, 1] became all zeros and int16 ones wrapped around (a cast to uint8)."""
    from ddpm_ood.data.medical import MEDMNIST3D_FLAGS

    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(2)
    make = (lambda n: rng.random((n, 8, 8, 8)).astype(np.float32)) if dtype == "float32" else \
        (lambda n: rng.integers(-1000, 3000, (n, 8, 8, 8)).astype(np.int16))
    for flag in MEDMNIST3D_FLAGS:
        np.savez(source / f"{flag}.npz", **{f"{s}_images": make(2) for s in ("train", "val", "test")})
    run(tmp_path / "data", "MedMNIST3D", source)
    split = pd.read_csv(tmp_path / "data" / "data_splits" / "medmnist3d_organmnist3d_val.csv")["filename"]
    stored = np.load(split[0])
    with np.load(source / "organmnist3d.npz") as arrays:
        np.testing.assert_array_equal(stored, arrays["val_images"][0])
    assert stored.dtype == np.dtype(dtype) and stored.std() > 0


def test_a_medmnist_file_without_a_split_is_refused_naming_it(tmp_path):
    from ddpm_ood.data.medical import MEDMNIST3D_FLAGS

    source = tmp_path / "src"
    source.mkdir()
    for flag in MEDMNIST3D_FLAGS:
        np.savez(source / f"{flag}.npz", train_images=np.zeros((2, 8, 8, 8), np.uint8),
                 test_images=np.zeros((2, 8, 8, 8), np.uint8))
    with pytest.raises(DownloadError, match=r"organmnist3d.npz lacks val_images \(it holds test_images, train_images\)"):
        run(tmp_path / "data", "MedMNIST3D", source)


@pytest.mark.parametrize("damage", ["truncated", "all zero", "NaN", "too small"])
def test_a_damaged_mni152_template_is_refused_naming_it_and_leaves_nothing_half_written(tmp_path, damage):
    """Issue 33, case 13: a damaged template crashed the converter with a traceback and left .partial folders."""
    from ddpm_ood.data.download import MNI152_FILES

    source = tmp_path / "templates"
    source.mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(40) - 20] * 3, indexing="ij"))
    brain = ((grid ** 2).sum(0) < 15 ** 2).astype(np.float32)
    for name in MNI152_FILES.values():
        nibabel.save(nibabel.Nifti1Image(brain * 100, np.eye(4)), source / name)
    t1 = source / MNI152_FILES["T1"]
    if damage == "truncated":
        t1.write_bytes(t1.read_bytes()[:200])
    else:
        volume = {"all zero": np.zeros((40, 40, 40), np.float32), "NaN": np.where(brain > 0, np.nan, 0).astype(np.float32),
                  "too small": np.pad(np.ones((4, 4, 4), np.float32), 18)}[damage]
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), t1)
    with pytest.raises(DownloadError, match=f"The MNI152 template {t1} "):
        run(tmp_path / "data", "MNI152", source)
    assert not list((tmp_path / "data").rglob("*.partial"))
    assert not (tmp_path / "data" / "data_splits").exists() or not list((tmp_path / "data" / "data_splits").iterdir())


def test_mni152_slices_carry_lesions_where_their_masks_say_inside_their_brain_masks():
    """The 2D lesion demo's data (issue 32, part 6): dark discs in white matter, bright ones in grey matter, each
    with its mask (the same draws) and every T1 slice with its brain mask."""
    from ddpm_ood.data.download import mni152_files, mni152_slices

    try:
        files = mni152_files()
    except DownloadError:
        pytest.skip("nilearn's wheel is not installed (make demo3d installs it)")
    for lesion, low, high in (("dark", 0.05, 0.35), ("bright", 0.9, 1.0)):
        images = np.stack(list(mni152_slices(files, "T1", 6, 3, lesion))) / 255.0
        masks = np.stack(list(mni152_slices(files, "T1", 6, 3, lesion, what="mask"))).astype(bool)
        brains = np.stack(list(mni152_slices(files, "T1", 6, 3, lesion, what="brain"))).astype(bool)
        assert images.shape == masks.shape == brains.shape == (6, 64, 64)
        sizes = masks.sum(axis=(1, 2))
        assert ((sizes >= 25) & (sizes <= 120)).all()  # discs of radius 3 to 6
        assert low < images[masks].mean() < high, lesion
        assert (masks & ~brains).sum() <= 0.05 * masks.sum() and 0.5 < brains.mean() < 0.95
    healthy = np.stack(list(mni152_slices(files, "T1", 6, 3, None))) / 255.0
    assert 0.5 < healthy[brains].mean() < 0.9  # the same draws: the brain where the brain masks are
    contrast = np.stack(list(mni152_slices(files, "GM", 2, 3, None)))
    assert contrast.shape == (2, 64, 64) and not np.allclose(contrast / 255.0, healthy[:2], atol=0.2)
