"""Split CSV formats, image loading, scaling, flips and every bad-input message."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_images, write_split
from ddpm_ood.data.loading import (
    DataError,
    apply_flip,
    load_image,
    load_split,
    minmax_scale,
    read_split_csv,
    resolve_split,
)


def test_reads_our_format_the_original_single_row_format_and_plain_lines(tmp_path):
    files = make_images(tmp_path / "img", "a", 3, 0)
    ours = write_split(tmp_path / "ours.csv", files)
    original = tmp_path / "original.csv"
    original.write_text(",".join(str(f) for f in files) + "\n")  # every path on one row, no header
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(str(f) for f in files) + "\n")
    for csv_path in (ours, original, plain):
        assert read_split_csv(csv_path) == files


def test_relative_paths_resolve_against_the_csv_folder(tmp_path):
    make_images(tmp_path / "img", "a", 2, 0)
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("filename\nimg/a_0.npy\nimg/a_1.npy\n")
    assert read_split_csv(csv_path) == [tmp_path / "img" / "a_0.npy", tmp_path / "img" / "a_1.npy"]


def test_minmax_scaling_per_image_and_constant_images():
    image = np.array([[[2.0, 4.0], [6.0, 10.0]]])
    np.testing.assert_allclose(minmax_scale(image), [[[0.0, 0.25], [0.5, 1.0]]])
    np.testing.assert_array_equal(minmax_scale(np.full((1, 2, 2), 7.0)), np.zeros((1, 2, 2)))
    with pytest.raises(DataError, match="bad.npy.*NaN"):
        minmax_scale(np.array([[[np.nan, 1.0]]]), "bad.npy")


def test_flips_reverse_rows_or_columns():
    image = np.arange(6.0).reshape(1, 2, 3)  # rows [0 1 2], [3 4 5]
    np.testing.assert_array_equal(apply_flip(image, "vflip"), [[[3, 4, 5], [0, 1, 2]]])
    np.testing.assert_array_equal(apply_flip(image, "hflip"), [[[2, 1, 0], [5, 4, 3]]])


def test_a_volume_is_flipped_slice_by_slice_its_depth_kept():
    """Issue 33, wording: _vflip / _hflip on a volume (C, D, H, W) flipped D and H; now every slice is flipped as
    a 2D image is (H for vflip, W for hflip), as docs/latent_and_3d.md says."""
    volume = np.arange(24.0).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(apply_flip(volume, "vflip"), volume[:, :, ::-1, :])
    np.testing.assert_array_equal(apply_flip(volume, "hflip"), volume[:, :, :, ::-1])
    for d in range(2):  # each slice as its own 2D flip
        np.testing.assert_array_equal(apply_flip(volume, "vflip")[:, d], apply_flip(volume[:, d], "vflip"))


def test_flip_variants_are_derived_from_the_base_split(tmp_path):
    files = make_images(tmp_path / "img", "a", 2, 0)
    write_split(tmp_path / "MNIST_test.csv", files)
    spec = resolve_split(tmp_path / "MNIST_vflip_test.csv")
    assert spec.csv_path == tmp_path / "MNIST_test.csv" and spec.flip == "vflip" and spec.name == "MNIST_vflip"
    plain = load_split(tmp_path / "MNIST_test.csv", True, progress=False)
    flipped = load_split(tmp_path / "MNIST_hflip_test.csv", True, progress=False)
    assert plain.name == "MNIST" and flipped.name == "MNIST_hflip"
    np.testing.assert_array_equal(flipped.images.numpy(), plain.images.numpy()[..., ::-1])
    with pytest.raises(DataError, match="CIFAR10_test.csv"):
        resolve_split(tmp_path / "CIFAR10_vflip_test.csv")


def test_load_split_scales_each_image_and_honours_first_n(tmp_path):
    files = make_images(tmp_path / "img", "a", 5, 0)
    image_set = load_split(write_split(tmp_path / "s.csv", files), True, first_n=3, progress=False, num_workers=0)
    assert image_set.images.shape == (3, 1, 28, 28) and len(image_set) == 3
    assert image_set.images.amin(dim=(1, 2, 3)).tolist() == [0, 0, 0]
    assert image_set.images.amax(dim=(1, 2, 3)).tolist() == [1, 1, 1]
    threaded = load_split(tmp_path / "s.csv", True, first_n=3, progress=False, num_workers=3)
    assert threaded.images.equal(image_set.images) and threaded.filenames == image_set.filenames


def test_png_and_colour_npy_layouts(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    np.save(tmp_path / "hwc.npy", rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(load_image(tmp_path / "hwc.npy"), rgb.transpose(2, 0, 1))
    assert load_image(tmp_path / "g.png").shape == (1, 8, 9)


@pytest.mark.parametrize("content,match", [("", "empty"), ("filename\n", "only a header")])
def test_empty_split_files(tmp_path, content, match):
    (tmp_path / "e.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        load_split(tmp_path / "e.csv", True)


def test_bad_inputs_name_the_file(tmp_path):
    good = make_images(tmp_path / "img", "a", 2, 0)
    with pytest.raises(DataError, match="missing.csv does not exist"):
        load_split(tmp_path / "missing.csv", True)
    with pytest.raises(DataError, match="gone.npy does not exist"):
        load_split(write_split(tmp_path / "s1.csv", good + [tmp_path / "gone.npy"]), True, num_workers=0)
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="corrupt.npy"):
        load_split(write_split(tmp_path / "s2.csv", [tmp_path / "corrupt.npy"]), True)
    np.save(tmp_path / "big.npy", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="big.npy has shape"):
        load_split(write_split(tmp_path / "s3.csv", good + [tmp_path / "big.npy"]), True)
    rgb = np.zeros((3, 28, 28), np.uint8)
    rgb[0, 3, 3] = 9  # a colour image: R != G
    np.save(tmp_path / "rgb.npy", rgb)
    with pytest.raises(DataError, match=r"rgb.npy has 3 channel.*grayscale.*convert the image \(train.py and "
                                        r"reconstruct.py take --is_grayscale=0"):
        load_split(write_split(tmp_path / "s4.csv", [tmp_path / "rgb.npy"]), True)
    with pytest.raises(DataError, match="a_0.npy has 1 channel.*colour"):
        load_split(write_split(tmp_path / "s5.csv", good), False)
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(DataError, match="nan.npy contains NaN"):
        load_split(write_split(tmp_path / "s6.csv", [tmp_path / "nan.npy"]), True)
    with pytest.raises(DataError, match="first_n"):
        load_split(tmp_path / "s5.csv", True, first_n=-1)


def test_gray_saved_as_rgb_palette_pngs_and_gifs_are_taken_as_gray(tmp_path):
    """Main before this refused them for a grayscale model, advising --is_grayscale, which
    ood_detection.py (--score_ids) does not have."""
    from PIL import Image

    gray = (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)
    Image.fromarray(gray).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(gray).save(tmp_path / "image.gif")
    np.save(tmp_path / "rgb.npy", np.stack([gray] * 3, axis=-1))  # (H, W, 3), R = G = B
    files = [tmp_path / n for n in ("rgb.png", "palette.png", "image.gif", "rgb.npy")]
    images = load_split(write_split(tmp_path / "gray.csv", files), True, num_workers=0).images
    assert images.shape == (4, 1, 28, 28)
    for image in images:
        np.testing.assert_allclose(image[0].numpy(), gray / 250.0, atol=1e-6)

