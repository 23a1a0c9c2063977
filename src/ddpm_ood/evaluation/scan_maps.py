"""Anomaly maps in the scan's space: NIfTI files a radiologist's viewer (ITK-SNAP, 3D Slicer,
FSLeyes) opens on top of the scan.

The maps of ``ood/maps_<set>.npz`` live on the model's grid: each volume was cropped
(``--image_roi``), flipped (a ``_vflip`` / ``_hflip`` set) and resized (``--image_size``) on
its way in. For every kept example whose file is NIfTI, :func:`write_scan_maps` undoes those
steps (``ddpm_ood.data.loading.to_scan_grid``: the resize by trilinear interpolation, the crop
placed where it was taken, 0 outside it) and writes the map with the scan's own affine and
header, so it overlays the scan voxel for voxel:

    ood/maps_nifti/<set>/<index>_<scan name>_<map>.nii.gz

``<map>`` is ``anomaly_z`` (the z-scored squared error, mean over the start points: the maps of
``maps_<set>.npz``) and, where the in-distribution test set kept maps, ``flagged`` (uint8: 1 where the
post-processed map reaches the threshold that flags 5 % of the in-distribution test images' voxels,
components of 7 voxels or fewer removed, as the localisation table's Dice at 5 % counts them); the
partial-diffusion detector's are ``partial_z`` and ``partial_flagged``. A mask is brought back by the
same trilinear resize, then taken where it is at least 0.5.
"""
from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def scan_name(filename: str) -> str:
    """A scan file's name without its NIfTI suffix, as a plain file-name part."""
    name = re.sub(r"\.nii(\.gz)?$", "", Path(filename).name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def nifti_like(values: np.ndarray, scan) -> bytes:
    """``values`` on ``scan``'s grid as a gzip-compressed NIfTI-1 file: the scan's affine and header (its
    data type and scaling replaced by the values' own, float32 or uint8 for a mask, unscaled)."""
    import nibabel

    dtype = np.uint8 if values.dtype in (np.uint8, np.bool_) else np.float32
    header = scan.header.copy()
    header.set_data_dtype(dtype)
    image = nibabel.Nifti1Image(values.astype(dtype), scan.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_scan_maps(folder: Path, examples: dict, maps: dict[str, np.ndarray]) -> list[Path]:
    """Each kept NIfTI scan's ``maps`` (by name, each (N, D, H, W) on the model's grid; uint8 or bool ones are
    masks, written as uint8 0/1) on the scan's grid, in ``folder``; files there from an earlier run that were not written now are removed. Scans that are not
    NIfTI files, or that no longer exist, get none. Returns the files written."""
    import nibabel

    from ddpm_ood.data.loading import is_nifti, to_scan_grid
    from ddpm_ood.utils.files import write_bytes_atomic

    filenames = [str(f) for f in examples["filenames"]]
    roi = [int(v) for v in np.asarray(examples.get("image_roi", []))] or None
    size = int(examples.get("image_size", 0)) or None
    flip = str(examples.get("flip", "")) or None
    written, missing = [], []
    for i, filename in enumerate(filenames):
        path = Path(filename)
        if not is_nifti(path):
            continue
        if not path.is_file():
            missing.append(filename)
            continue
        scan = nibabel.load(str(path))
        spatial = tuple(int(d) for d in scan.shape[:3])
        for kind, values in maps.items():
            values = np.asarray(values[i])
            grid = to_scan_grid(values, spatial, roi, size, flip)
            if values.dtype in (np.uint8, np.bool_):
                grid = (grid >= 0.5).astype(np.uint8)
            target = folder / f"{i:03d}_{scan_name(filename)}_{kind}.nii.gz"
            write_bytes_atomic(target, nifti_like(grid, scan))
            written.append(target)
    if missing:
        logger.warning("No NIfTI maps for %d scan(s) that are no longer where they were read (e.g. %s).",
                       len(missing), missing[0])
    if folder.is_dir():
        for stale in set(folder.glob("*.nii.gz")) - set(written):
            stale.unlink()
    return written
