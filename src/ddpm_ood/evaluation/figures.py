"""Figures of a scored run, as PNG files (matplotlib's non-interactive Agg backend).

- ``roc.png``: the ROC curve of every OOD set on one plot (OOD is the positive class);
- ``histograms.png``: the score distribution of the in-distribution test set against each
  OOD set, one panel each;
- ``auroc_per_t.png``: the AUROC of each OOD set when only one start point t is used (the
  paper's central question: which noise levels carry the signal).

Every file is written atomically, like every other artefact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpm_ood.utils.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def roc_figure(in_scores: np.ndarray, ood_scores: dict[str, np.ndarray], path: Path, title: str) -> None:
    from sklearn.metrics import roc_curve

    from ddpm_ood.metrics.scoring import auroc

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.6))
    for name, scores in ood_scores.items():
        labels = np.r_[np.zeros(len(in_scores)), np.ones(len(scores))]
        values = np.r_[in_scores, scores]
        fpr, tpr, _ = roc_curve(labels, values)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auroc(in_scores, scores):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate (in-distribution flagged as OOD)",
           ylabel="true positive rate (OOD flagged as OOD)", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def histogram_figure(in_scores: np.ndarray, ood_scores: dict[str, np.ndarray], path: Path, title: str) -> None:
    plt = _pyplot()
    n = len(ood_scores)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (name, scores) in zip(axes[0], ood_scores.items()):
        bins = np.histogram_bin_edges(np.r_[in_scores, scores], bins=30)
        ax.hist(in_scores, bins=bins, alpha=0.6, density=True, label="in-distribution test")
        ax.hist(scores, bins=bins, alpha=0.6, density=True, label=name)
        ax.set(xlabel="OOD score (higher = more OOD)", ylabel="density", title=name)
        ax.legend(fontsize=8)
    fig.suptitle(title, y=1.04)
    _save(fig, path)


def auroc_per_t_figure(per_t: dict[str, dict[int, float]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, values in per_t.items():
        ts = sorted(values)
        ax.plot(ts, [100 * values[t] for t in ts], marker="o", label=name)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="start point t of the reconstruction", ylabel="AUROC (%) from this t alone", title=title)
    ax.legend(fontsize=8)
    _save(fig, path)


def examples_figure(examples: dict[str, np.ndarray], path: Path, title: str) -> None:
    """A grid: one row per image, its input, then its reconstruction from each start point t."""
    plt = _pyplot()
    inputs, recons, ts = examples["inputs"], examples["reconstructions"], examples["t"]
    n, k = recons.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.1 * (k + 1), 1.1 * n + 0.5), squeeze=False)
    for row in range(n):
        for col in range(k + 1):
            image = inputs[row] if col == 0 else recons[row, col - 1]  # (C, H, W) in [0, 1], or a volume
            if image.ndim == 4:  # (C, D, H, W): its middle slice
                image = image[:, image.shape[1] // 2]
            ax = axes[row, col]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title("input" if col == 0 else f"t = {int(ts[col - 1])}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


MAPS_PER_ROW = 8
MAPS_SHOWN = 48


def shown_slice(heat: np.ndarray, mask: np.ndarray | None) -> int:
    """The slice (along the first axis) a volume's figure shows: the one with the most lesion voxels, or, without
    a lesion, the one holding the map's highest value."""
    if mask is not None and np.asarray(mask).any():
        return int(np.asarray(mask).reshape(len(mask), -1).sum(axis=1).argmax())
    return int(np.asarray(heat).reshape(len(heat), -1).max(axis=1).argmax())


def maps_figure(inputs: np.ndarray, maps: np.ndarray, path: Path, title: str, vmax: float = 5.0,
                masks: np.ndarray | None = None) -> None:
    """Per image, the input (gray) and, under it, its anomaly map (z, clipped to [0, vmax]) drawn over it,
    MAPS_PER_ROW images a row (the first MAPS_SHOWN). A volume is shown through the slice with the most lesion,
    else the map's highest value (its index above); the ground truth (``masks``), where given, is outlined."""
    plt = _pyplot()
    n = min(len(inputs), MAPS_SHOWN)
    columns = min(n, MAPS_PER_ROW)
    groups = -(-n // columns)
    fig, axes = plt.subplots(2 * groups, columns, figsize=(1.6 * columns, 1.9 * 2 * groups + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_frame_on(False)
    for i in range(n):
        image, heat = inputs[i], maps[i]
        mask = None if masks is None else np.asarray(masks[i], bool)
        top, bottom = axes[2 * (i // columns), i % columns], axes[2 * (i // columns) + 1, i % columns]
        if image.ndim == 4:  # (C, D, H, W): one slice along D
            k = shown_slice(heat, mask)
            image, heat, mask = image[:, k], heat[k], None if mask is None else mask[k]
            top.set_title(f"slice {k}", fontsize=6)
        gray = image.mean(axis=0)
        top.imshow(gray, cmap="gray", vmin=0, vmax=1)
        bottom.imshow(gray, cmap="gray", vmin=0, vmax=1)
        shown = bottom.imshow(np.clip(heat, 0, vmax), cmap="inferno", vmin=0, vmax=vmax, alpha=0.6)
        if mask is not None and mask.any():
            for ax in (top, bottom):
                ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    fig.subplots_adjust(right=0.9, top=1 - 0.5 / fig.get_figheight(), hspace=0.25)
    fig.colorbar(shown, cax=fig.add_axes([0.92, 0.3, 0.015, 0.4]), label="z")  # its own axes: the grid stays even
    more = f" (the first {n} of {len(inputs)})" if len(inputs) > n else ""
    outlined = "; ground truth outlined" if masks is not None else ""
    fig.suptitle(f"{title}{more}{outlined}", fontsize=9)
    _save(fig, path)
