"""MSE values and LPIPS's real loading path (with a random AlexNet: values not meaningful)."""
from __future__ import annotations

import pytest
import torch

from ddpm_ood.metrics.distances import LPIPSMetric, LPIPSUnavailable, alexnet_cache_path, mse_per_image


def test_mse_per_image():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    torch.testing.assert_close(mse_per_image(a, b), torch.tensor([0.5, 0.25]))


@pytest.mark.slow
def test_lpips_loads_backbone_from_the_torch_hub_cache(random_alexnet_home):
    metric = LPIPSMetric()
    saved = torch.load(alexnet_cache_path(), weights_only=True)
    torch.testing.assert_close(getattr(metric.net.net.slice1, "0").weight, saved["features.0.weight"])
    torch.testing.assert_close(getattr(metric.net.net.slice5, "10").weight, saved["features.10.weight"])
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    same = metric(x, x)
    assert same.shape == (3,) and torch.all(same.abs() < 1e-6)
    different = metric(x, 1 - x)
    assert torch.all(different > 0)


@pytest.mark.slow
def test_lpips_pads_small_images_and_broadcasts_grey(random_alexnet_home):
    metric = LPIPSMetric()
    assert metric._prepare(torch.zeros(1, 1, 28, 28)).shape == (1, 3, 32, 32)
    assert metric._prepare(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    grey = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(metric(grey, grey.flip(-1)), metric(grey.expand(-1, 3, -1, -1), grey.flip(-1).expand(-1, 3, -1, -1)))


@pytest.mark.slow
def test_lpips_from_an_explicit_file(tmp_path, random_alexnet_home):
    moved = tmp_path / "weights.pth"
    alexnet_cache_path().rename(moved)
    LPIPSMetric(weights_path=moved)
    with pytest.raises(LPIPSUnavailable, match="nothere.pth"):
        LPIPSMetric(weights_path=tmp_path / "nothere.pth")


def test_offline_without_weights_says_where_to_put_them(no_alexnet):
    with pytest.raises(LPIPSUnavailable) as err:
        LPIPSMetric()
    assert str(alexnet_cache_path()) in str(err.value) and "--metrics mse" in str(err.value)


@pytest.mark.slow
def test_lpips_takes_2d_images_smaller_than_28_pixels(random_alexnet_home):
    """16x16 images (a crash in AlexNet before): padded by 2 as the paper did, then centred to 32x32, as
    volume slices are; 28x28 and larger images are prepared exactly as before."""
    import torch.nn.functional as F

    metric = LPIPSMetric()
    small = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    prepared = metric._prepare(small)
    assert prepared.shape == (2, 3, 32, 32)
    torch.testing.assert_close(prepared[:, :1], F.pad(small, (8, 8, 8, 8)) * 2 - 1)  # 2 + 6 on each side
    assert metric(small, small.flip(-1)).shape == (2,)
    mnist = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(metric._prepare(mnist)[:, :1], F.pad(mnist, (2, 2, 2, 2)) * 2 - 1)
