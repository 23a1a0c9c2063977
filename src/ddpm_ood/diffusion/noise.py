"""The noise a diffusion adds: Gaussian (the method's), or multi-scale simplex noise (AnoDDPM, Wyatt et al.
2022; ddpm-ood's later ``--simplex_noise``), whose coarse, smooth blobs make a model repair regions
rather than pixels.

Simplex noise here is Gustavson's 3D simplex noise ("Simplex noise demystified", 2005), vectorised in
torch: every point of every field at once, any device, each field with its own permutation drawn from
the caller's generator (so a seeded draw is reproducible). As AnoDDPM builds it, a field is a sum of
``octaves`` layers: layer k samples the noise at the coordinates divided by ``frequency / 2^k`` with
amplitude ``persistence^k`` (``frequency`` is a wavelength in pixels, halved each octave). A 2D image's
field is the noise at (column, row, t) (AnoDDPM's third coordinate is the timestep); a volume's at
(width, height, depth) indices, with a fresh permutation per draw keeping draws independent.

AnoDDPM takes its base noise from OpenSimplex (``opensimplex``, pure Python without numba: far too slow
to draw a training batch); the two are the same kind of gradient noise. The fields are scaled by
:data:`SIMPLEX_STD_RATIO` so that a layer's spread is OpenSimplex's (measured on 10^5 points of each), and
not normalised otherwise: the model learns that noise as it is, as AnoDDPM's does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

GAUSSIAN = "gaussian"

# The 12 gradients of Gustavson's 3D simplex noise: the midpoints of a cube's edges.
_GRADIENTS = torch.tensor([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1],
                           [1, 0, -1], [-1, 0, -1], [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]],
                          dtype=torch.float64)
_SKEW, _UNSKEW = 1.0 / 3.0, 1.0 / 6.0  # F3 and G3: the skew of 3D space onto the simplex grid, and back
# OpenSimplex's 3D noise (opensimplex 0.4.5, AnoDDPM's base noise) has a standard deviation this many
# times Gustavson's over uniformly spread points (0.3132 / 0.4258, each the mean over 5 permutations of
# 10^5 points in [0, 50)^3; tests/diffusion/test_noise.py measures it again against opensimplex).
SIMPLEX_STD_RATIO = 0.7355


@dataclass(frozen=True)
class SimplexNoise:
    """AnoDDPM's multi-scale simplex noise (its defaults: 6 octaves, persistence 0.8, frequency 64)."""

    octaves: int = 6
    persistence: float = 0.8
    frequency: float = 64.0

    def __post_init__(self):
        if not (isinstance(self.octaves, int) and self.octaves >= 1):
            raise ValueError(f"simplex noise: octaves = {self.octaves!r} must be a positive integer")
        if not 0 < self.persistence <= 1:
            raise ValueError(f"simplex noise: persistence = {self.persistence!r} must be in (0, 1]")
        if not self.frequency > 0:
            raise ValueError(f"simplex noise: frequency = {self.frequency!r} must be above 0")

    def record(self) -> dict:
        return {"kind": "simplex", **asdict(self)}

    def sample(self, shape: Sequence[int], timesteps: torch.Tensor, generator: torch.Generator,
               device=None) -> torch.Tensor:
        """Noise of ``shape`` (N, C, *spatial): one field per image and channel; image n's at ``timesteps[n]``."""
        shape = tuple(int(d) for d in shape)
        n, c, spatial = shape[0], shape[1], shape[2:]
        fields = n * c
        perms = torch.stack([torch.randperm(256, generator=generator, device=generator.device)
                             for _ in range(fields)]).to(device).repeat(1, 2)  # (fields, 512)
        t = torch.as_tensor(timesteps, dtype=torch.float64, device=device).reshape(-1)
        t = t.expand(n) if t.numel() == 1 else t
        coords = _coordinates(spatial, t.repeat_interleave(c), device)  # (fields, points, 3)
        total = torch.zeros(coords.shape[:2], dtype=torch.float64, device=device)
        frequency, amplitude = float(self.frequency), 1.0
        for _ in range(self.octaves):
            total += amplitude * simplex3(coords / frequency, perms)
            frequency, amplitude = frequency / 2, amplitude * self.persistence
        return (SIMPLEX_STD_RATIO * total).reshape(shape).float()


def _coordinates(spatial: Sequence[int], timesteps: torch.Tensor, device) -> torch.Tensor:
    """(fields, points, 3): a 2D field's points are (column, row, t); a volume's (width, height, depth)."""
    axes = [torch.arange(d, dtype=torch.float64, device=device) for d in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).reshape(-1, len(spatial))
    fields = len(timesteps)
    if len(spatial) == 2:
        third = timesteps[:, None, None].expand(fields, grid.shape[0], 1)
        return torch.cat([grid.expand(fields, -1, -1), third], dim=-1)
    if len(spatial) == 3:
        return grid.expand(fields, -1, -1)
    raise ValueError(f"simplex noise takes 2D images or 3D volumes, not {len(spatial)}D ones")


def simplex3(points: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Gustavson's 3D simplex noise at ``points`` (fields, P, 3), field f hashed with ``perms[f]`` (a
    permutation of 0..255, twice: (fields, 512)). Values in about [-1, 1]."""
    cell = torch.floor(points + points.sum(-1, keepdim=True) * _SKEW)  # the skewed cell's origin
    offset0 = points - (cell - cell.sum(-1, keepdim=True) * _UNSKEW)
    # The simplex is picked by the order of the offset's components: the corners after the origin step
    # along the largest component, then the two largest (ties broken by axis order).
    order = torch.argsort(-offset0, dim=-1, stable=True)
    first = torch.nn.functional.one_hot(order[..., 0], 3).to(points.dtype)
    second = first + torch.nn.functional.one_hot(order[..., 1], 3).to(points.dtype)
    corners = (torch.zeros_like(first), first, second, torch.ones_like(first))
    base = cell.long() & 255
    gradients = _GRADIENTS.to(points.device)
    total = torch.zeros(points.shape[:-1], dtype=points.dtype, device=points.device)
    for k, corner in enumerate(corners):
        offset = offset0 - corner + k * _UNSKEW
        lattice = base + corner.long()
        hashed = _hash(perms, lattice[..., 2])
        hashed = _hash(perms, lattice[..., 1] + hashed)
        hashed = _hash(perms, lattice[..., 0] + hashed)
        falloff = (0.6 - (offset * offset).sum(-1)).clamp(min=0)
        total += falloff ** 4 * (gradients[hashed % 12] * offset).sum(-1)
    return 32.0 * total


def _hash(perms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``perms[f][index[f]]`` for every field f (index < 512)."""
    return torch.gather(perms, 1, index)


def noise_of(record: dict | None):
    """The noise a model was trained with, from its record (None or ``{"kind": "gaussian"}``: Gaussian)."""
    if not record or record.get("kind", GAUSSIAN) == GAUSSIAN:
        return None
    if record.get("kind") != "simplex":
        raise ValueError(f"unknown noise {record!r}: gaussian or simplex")
    return SimplexNoise(int(record.get("octaves", 6)), float(record.get("persistence", 0.8)),
                        float(record.get("frequency", 64.0)))
