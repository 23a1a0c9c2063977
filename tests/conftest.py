"""Shared fixtures: small synthetic data sets, the tiny model config, a random AlexNet file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_CONFIG = ROOT / "src" / "ddpm_ood" / "configs" / "diffusion" / "diffusion_tiny.yaml"


def write_split(path: Path, files: list[Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"filename": [str(f) for f in files]}).to_csv(path, index=False)
    return path


def make_images(folder: Path, prefix: str, n: int, seed: int, kind: str = "blobs", shape=(28, 28)) -> list[Path]:
    """Write n uint8 .npy images: 'blobs' (bright centre) or 'stripes' (vertical bars)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    files = []
    for i in range(n):
        if kind == "blobs":
            r = rng.uniform(4, 9)
            image = 255 * np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / (2 * r * r))
        else:
            image = 255.0 * ((xx // rng.integers(2, 5)) % 2)
        image = np.clip(image + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)
        files.append(folder / f"{prefix}_{i}.npy")
        np.save(files[-1], image)
    return files


def blob_splits(folder: Path) -> dict[str, Path]:
    """The detector tests' splits: Blobs train (16), val (12), fit (12) and test (6), Stripes (6)."""
    splits = folder / "data_splits"
    return {"train": write_split(splits / "Blobs_train.csv", make_images(folder / "bt", "b", 16, 0)),
            "val": write_split(splits / "Blobs_val.csv", make_images(folder / "bv", "b", 12, 1)),
            "fit": write_split(splits / "Blobs_fit.csv", make_images(folder / "bf", "b", 12, 4)),
            "test": write_split(splits / "Blobs_test.csv", make_images(folder / "bte", "b", 6, 2)),
            "ood": write_split(splits / "Stripes_test.csv", make_images(folder / "st", "s", 6, 3, "stripes"))}


@pytest.fixture
def synthetic_splits(tmp_path: Path) -> dict[str, Path]:
    """train / val / test CSVs of 'blob' images (in-distribution) and a 'stripes' OOD test CSV."""
    splits = tmp_path / "data_splits"
    return {
        "train": write_split(splits / "Blobs_train.csv", make_images(tmp_path / "blobs_train", "b", 24, 0)),
        "val": write_split(splits / "Blobs_val.csv", make_images(tmp_path / "blobs_val", "b", 8, 1)),
        "test": write_split(splits / "Blobs_test.csv", make_images(tmp_path / "blobs_test", "b", 6, 2)),
        "ood": write_split(splits / "Stripes_test.csv", make_images(tmp_path / "stripes", "s", 6, 3, "stripes")),
    }


@pytest.fixture
def random_alexnet_home(tmp_path: Path, monkeypatch) -> Path:
    """A TORCH_HOME whose hub cache holds a *randomly initialised* AlexNet under torchvision's
    file name: the LPIPS loading path is real, the distances are not meaningful."""
    import torchvision

    home = tmp_path / "torch_home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def no_alexnet(tmp_path: Path, monkeypatch) -> None:
    """An empty torch hub cache and a download that fails, as on an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError("network is unreachable (test)"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)


# The settings manifest reconstruct.py writes beside each results file (shared keys only).
RESULTS_SETTINGS = {
    "model_file": "/runs/m/best_model.pth", "model_file_bytes": 1000, "model_file_mtime_ns": 1,
    "model_id": "9" * 64, "num_inference_steps": 10,
    "start_t": [1, 11], "metrics": ["mse"], "lpips_pad": 2, "clamp_for_lpips": False, "seed": 0, "precision": "fp32",
    "is_grayscale": 1, "noise": "pixels-sha256",
}


def write_results(ood_dir: Path, name: str, frame: pd.DataFrame, **settings) -> Path:
    """A results file as reconstruct.py leaves it: the CSV and its settings manifest."""
    ood_dir.mkdir(parents=True, exist_ok=True)
    frame = frame.assign(filename=[f"{name}/{f}" for f in frame["filename"]])  # each set's images in a folder of its own
    frame.to_csv(ood_dir / f"results_{name}.csv", index=False)
    manifest = {**RESULTS_SETTINGS, **settings, "split": f"{name}.csv", "n_images": int(frame["image_index"].nunique())}
    (ood_dir / f"results_{name}.settings.json").write_text(json.dumps(manifest))
    return ood_dir / f"results_{name}.csv"


def reseal(manifest_path: Path, **changes) -> None:
    """Change a results manifest as another run of reconstruct.py would have written it (sealed anew)."""
    from ddpm_ood.runs.layout import write_manifest

    write_manifest(manifest_path, {**json.loads(manifest_path.read_text()), **changes}, sealed=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny trained run shared by the tests that only need a model (never changed by them):
    train.py for 1 epoch on the blob splits. Returns (output_dir, run folder, splits)."""
    import train
    from helpers.pipeline import tiny_train_args

    folder = tmp_path_factory.mktemp("tiny_run")
    paths = blob_splits(folder)
    out = folder / "models"
    train.main(tiny_train_args(out, paths, name="tiny"))
    return out, out / "tiny", paths


@pytest.fixture(scope="session")
def scored_tiny(tmp_path_factory):
    """The blob splits and a tiny run ``m`` trained, measured by the paper's detector and msma, and
    scored. Never changed by a test: use ``scored_copy`` to damage one."""
    import reconstruct
    import train
    from helpers.pipeline import tiny_reconstruct_args, tiny_score, tiny_train_args

    tmp = tmp_path_factory.mktemp("scored_tiny")
    paths = blob_splits(tmp)
    out = tmp / "runs"
    train.main(tiny_train_args(out, paths))
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon,msma"))
    tiny_score(out)
    return out, paths


@pytest.fixture
def scored_copy(scored_tiny, tmp_path):
    """A copy of ``scored_tiny`` to damage: (output_dir, splits)."""
    import shutil

    out, paths = scored_tiny
    shutil.copytree(out, tmp_path / "runs")
    return tmp_path / "runs", paths
