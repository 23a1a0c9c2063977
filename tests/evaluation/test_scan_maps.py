"""Anomaly maps in the scan's space (issue 32, part 5): a map of a NIfTI scan that was cropped, flipped and
resized on its way in is written on the scan's own grid, with its affine and header, and overlays it voxel for
voxel."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import write_split
from ddpm_ood.data.loading import center_crop, load_images, to_scan_grid
from ddpm_ood.evaluation.scan_maps import scan_name, write_scan_maps

nibabel = pytest.importorskip("nibabel")

SHAPE = (20, 18, 16)
AFFINE = np.array([[0.0, -1.2, 0.0, 40.0],  # axes swapped and flipped, anisotropic voxels, shifted
                   [0.9, 0.0, 0.0, -12.0],
                   [0.0, 0.0, 2.5, 7.0],
                   [0.0, 0.0, 0.0, 1.0]])


def scan_with_a_lesion(path, centre, seed=0):
    """A smooth 'brain' with a bright ball at ``centre`` (voxel indices), saved as int16 NIfTI."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = 400 * np.exp(-(((zz - 10) / 8) ** 2 + ((yy - 9) / 7) ** 2 + ((xx - 8) / 6) ** 2))
    lesion = 900 * (((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= 4)
    volume = (brain + lesion + np.random.default_rng(seed).normal(0, 3, SHAPE)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(volume, AFFINE), path)
    return volume


def test_to_scan_grid_undoes_the_crop_and_flip_exactly_and_the_resize_closely():
    rng = np.random.default_rng(0)
    volume = rng.random((1, *SHAPE)).astype(np.float32)
    roi = [14, 12, 10]
    cropped = center_crop(volume, roi)[0]
    back = to_scan_grid(cropped, SHAPE, roi, fill=-1)
    box = (slice(3, 17), slice(3, 15), slice(3, 13))
    np.testing.assert_array_equal(back[box], volume[0][box])  # where it was taken from
    assert (np.delete(back.ravel(), np.flatnonzero(np.pad(np.ones((14, 12, 10)), ((3, 3), (3, 3), (3, 3))))) == -1).all()
    flipped = np.flip(cropped, axis=-2)  # a _vflip set's volume: every slice upside down
    np.testing.assert_array_equal(to_scan_grid(flipped, SHAPE, roi, flip="vflip")[box], volume[0][box])
    with pytest.raises(Exception, match="made from another volume"):
        to_scan_grid(np.zeros((5, 5, 5)), SHAPE, roi)


def test_a_map_of_a_cropped_and_resized_nifti_scan_overlays_it_voxel_for_voxel(tmp_path):
    """The oracle: the 'map' is the volume the model saw (cropped to 14x12x10, resized to 8^3); brought back, it
    must be the scan itself inside the crop (min-max scaled, up to the resize's blur), on the scan's affine."""
    files = [tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-02_T1w.nii.gz"]
    scans = [scan_with_a_lesion(files[0], (8, 7, 9)), scan_with_a_lesion(files[1], (12, 10, 6), seed=1)]
    image_set = load_images(write_split(tmp_path / "Lesion_test.csv", files), True, spatial_dimension=3,
                            image_roi=[14, 12, 10], image_size=8)
    examples = {"inputs": image_set.images[:].numpy(), "filenames": np.asarray(image_set.filenames),
                **image_set.example_extras(2)}
    (tmp_path / "maps" / "9_stale_anomaly_z.nii.gz").parent.mkdir()
    (tmp_path / "maps" / "9_stale_anomaly_z.nii.gz").write_bytes(b"left from before")
    written = write_scan_maps(tmp_path / "maps", examples, {"anomaly_z": examples["inputs"][:, 0]})
    assert [p.name for p in written] == ["000_sub-01_T1w_anomaly_z.nii.gz", "001_sub-02_T1w_anomaly_z.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [p.name for p in written]  # stale one gone
    box = (slice(3, 17), slice(3, 15), slice(3, 13))
    for path, scan, centre in zip(written, scans, [(8, 7, 9), (12, 10, 6)]):
        mapped = nibabel.load(str(path))
        np.testing.assert_allclose(mapped.affine, AFFINE)
        assert mapped.shape == SHAPE and mapped.get_fdata().dtype == np.float64
        values = mapped.get_fdata()
        inside = scan[box].astype(np.float64)
        inside = (inside - inside.min()) / (inside.max() - inside.min())
        assert np.corrcoef(values[box].ravel(), inside.ravel())[0, 1] > 0.9
        peak = np.unravel_index(np.argmax(values), SHAPE)
        assert max(abs(p - c) for p, c in zip(peak, centre)) <= 1  # the lesion where the scan has it
        assert (values[:3] == 0).all()  # outside the crop: no evidence
    # scans that are not NIfTI get no NIfTI map
    assert write_scan_maps(tmp_path / "none", {**examples, "filenames": np.asarray(["a.npy", "b.npy"])},
                           {"anomaly_z": examples["inputs"][:, 0]}) == []


def test_scan_names_lose_their_suffix_and_odd_characters():
    assert scan_name("/data/sub-01 T1w.nii.gz") == "sub-01_T1w"
    assert scan_name("x/Brain.NII") == "Brain"


def test_a_flagged_mask_goes_back_to_the_scan_as_uint8_zeros_and_ones_over_the_lesion(tmp_path):
    """A thresholded mask on the model's grid (the volume the model saw, above 0.7: the bright ball) is written
    as a uint8 NIfTI on the scan's grid, 0/1 only, 1 at the lesion's centre and 0 outside the crop."""
    files = [tmp_path / "sub-01_T1w.nii.gz"]
    scan_with_a_lesion(files[0], (8, 7, 9))
    image_set = load_images(write_split(tmp_path / "Lesion_test.csv", files), True, spatial_dimension=3,
                            image_roi=[14, 12, 10], image_size=8)
    examples = {"inputs": image_set.images[:].numpy(), "filenames": np.asarray(image_set.filenames),
                **image_set.example_extras(1)}
    mask = (examples["inputs"][:, 0] > 0.7).astype(np.uint8)
    assert 0 < mask.sum() < mask.size // 4
    written = write_scan_maps(tmp_path / "maps", examples, {"flagged": mask})
    stored = nibabel.load(str(written[0]))
    assert stored.get_data_dtype() == np.uint8 and stored.shape == SHAPE
    np.testing.assert_allclose(stored.affine, AFFINE)
    values = np.asarray(stored.dataobj)
    assert set(np.unique(values)) == {0, 1} and values[8, 7, 9] == 1 and (values[:3] == 0).all()
