"""Simplex noise (AnoDDPM's, ddpm-ood's --simplex_noise): the vectorised field against a plain transcription
of Gustavson's algorithm, its spread against OpenSimplex (AnoDDPM's base noise), and the octave sum."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_ood.diffusion.noise import SIMPLEX_STD_RATIO, SimplexNoise, noise_of, simplex3

F3, G3 = 1.0 / 3.0, 1.0 / 6.0
GRADIENTS = [(1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0), (1, 0, 1), (-1, 0, 1), (1, 0, -1), (-1, 0, -1),
             (0, 1, 1), (0, -1, 1), (0, 1, -1), (0, -1, -1)]


def gustavson(x, y, z, perm):
    """3D simplex noise at one point, as "Simplex noise demystified" (Gustavson 2005) writes it."""
    s = (x + y + z) * F3
    i, j, k = math.floor(x + s), math.floor(y + s), math.floor(z + s)
    t = (i + j + k) * G3
    x0, y0, z0 = x - (i - t), y - (j - t), z - (k - t)
    if x0 >= y0:
        if y0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 1, 0
        elif x0 >= z0:
            i1, j1, k1, i2, j2, k2 = 1, 0, 0, 1, 0, 1
        else:
            i1, j1, k1, i2, j2, k2 = 0, 0, 1, 1, 0, 1
    else:
        if y0 < z0:
            i1, j1, k1, i2, j2, k2 = 0, 0, 1, 0, 1, 1
        elif x0 < z0:
            i1, j1, k1, i2, j2, k2 = 0, 1, 0, 0, 1, 1
        else:
            i1, j1, k1, i2, j2, k2 = 0, 1, 0, 1, 1, 0
    ii, jj, kk = i & 255, j & 255, k & 255
    total = 0.0
    for (a, b, c), n in (((0, 0, 0), 0), ((i1, j1, k1), 1), ((i2, j2, k2), 2), ((1, 1, 1), 3)):
        dx, dy, dz = x0 - a + n * G3, y0 - b + n * G3, z0 - c + n * G3
        gradient = GRADIENTS[perm[ii + a + perm[jj + b + perm[kk + c]]] % 12]
        falloff = 0.6 - dx * dx - dy * dy - dz * dz
        if falloff > 0:
            total += falloff ** 4 * (gradient[0] * dx + gradient[1] * dy + gradient[2] * dz)
    return 32.0 * total


def test_the_vectorised_field_is_gustavsons_noise():
    rng = np.random.default_rng(0)
    points = rng.uniform(-40, 300, (400, 3))
    points[:20] = np.floor(points[:20])  # lattice points and ties between components
    points[20:30, 1] = points[20:30, 0]
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(3)).repeat(2)
    ours = simplex3(torch.from_numpy(points)[None], perm[None])[0].numpy()
    reference = [gustavson(*p, perm.tolist()) for p in points]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_its_spread_is_opensimplexs():
    """The fields are scaled so that one layer spreads as AnoDDPM's OpenSimplex noise does."""
    opensimplex = pytest.importorskip("opensimplex")
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 50, (20000, 3))
    fields = [opensimplex.OpenSimplex(seed) for seed in range(20)]
    theirs = np.std([fields[n // 1000].noise3(*p) for n, p in enumerate(points)])
    ours = []
    for seed in range(4):
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed)).repeat(2)[None]
        ours.append(SIMPLEX_STD_RATIO * simplex3(torch.from_numpy(points)[None], perm)[0].numpy())
    assert np.std(np.concatenate(ours)) == pytest.approx(theirs, rel=0.03)


def test_a_sample_is_the_octave_sum_of_fields_at_the_timestep():
    noise = SimplexNoise(octaves=3, persistence=0.5, frequency=8.0)
    generator = torch.Generator().manual_seed(5)
    sample = noise.sample((2, 1, 6, 5), torch.tensor([10, 700]), generator)
    second = torch.Generator().manual_seed(5)
    perms = [torch.randperm(256, generator=second).repeat(2) for _ in range(2)]
    rows, cols = np.mgrid[0:6, 0:5]
    for n, t in enumerate((10, 700)):
        points = torch.from_numpy(np.stack([cols.ravel(), rows.ravel(), np.full(30, t)], -1).astype(np.float64))
        expected = sum(0.5 ** k * simplex3(points[None] / (8.0 / 2 ** k), perms[n][None])[0] for k in range(3))
        torch.testing.assert_close(sample[n, 0], (SIMPLEX_STD_RATIO * expected).reshape(6, 5).float())


def test_samples_are_seeded_smooth_and_take_volumes():
    noise = SimplexNoise()
    first = noise.sample((3, 2, 32, 32), torch.tensor([5, 5, 5]), torch.Generator().manual_seed(0))
    again = noise.sample((3, 2, 32, 32), torch.tensor([5, 5, 5]), torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    assert not torch.allclose(first[0, 0], first[1, 0]) and not torch.allclose(first[0, 0], first[0, 1])
    neighbours = torch.corrcoef(torch.stack([first[..., :-1].flatten(), first[..., 1:].flatten()]))[0, 1]
    assert neighbours > 0.8  # coarse blobs, not independent pixels (Gaussian noise: about 0)
    volume = noise.sample((1, 1, 8, 10, 12), torch.tensor([0]), torch.Generator().manual_seed(1))
    assert volume.shape == (1, 1, 8, 10, 12) and volume.std() > 0


def test_noise_records_round_trip_and_bad_settings_are_refused():
    assert noise_of(None) is None and noise_of({"kind": "gaussian"}) is None
    assert noise_of(SimplexNoise(4, 0.6, 32.0).record()) == SimplexNoise(4, 0.6, 32.0)
    for bad in ({"octaves": 0}, {"persistence": 1.5}, {"frequency": 0.0}):
        with pytest.raises(ValueError, match="simplex noise"):
            SimplexNoise(**bad)
    with pytest.raises(ValueError, match="unknown noise"):
        noise_of({"kind": "perlin"})
