"""The tiny pipeline the scripts' tests run: a 1-epoch run of the tiny config, measured and scored,
and toy results files; each helper is the scripts' own main on its own command line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

import ood_detection
import reconstruct
import train
from conftest import ROOT, TINY_CONFIG


def run_script(script, *args, **kwargs):
    """A script in a subprocess, as a user runs it (exit status, stdout and stderr)."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, **kwargs)


def toy_results(t_values=(1, 11), n=4, offset=0.0):
    """A results frame as reconstruct.py writes it (MSE only), n images at each start t."""
    return pd.DataFrame([{"filename": f"f{i}", "image_index": i, "type": "x", "t": t, "mse": 0.1 * i + t + offset,
                          "perceptual_difference": np.nan} for i in range(n) for t in t_values])


def score_run(output_dir, *extra):
    """ood_detection.py on the run ``m`` of ``output_dir``."""
    return ood_detection.main(ood_detection.parse_args([f"--output_dir={output_dir}", "--model_name=m", *extra]))


def tiny_score(output_dir, *extra):
    """ood_detection.py on the run ``m``, with no bootstrap and no figures (fast)."""
    return score_run(output_dir, "--bootstrap=0", "--no-figures", *extra)


def train_tiny(out, splits, *extra, name="m"):
    return train.main(tiny_train_args(out, splits, *extra, name=name))


def tiny_train_args(out, paths, *extra, epochs=1, name="m"):
    return train.parse_args([f"--output_dir={out}", f"--model_name={name}", f"--training_ids={paths['train']}",
                             f"--validation_ids={paths['val']}", f"--config_diffusion_file={TINY_CONFIG}",
                             f"--n_epochs={epochs}", "--batch_size=8", "--num_sample_images=0", "--num_workers=0",
                             *extra])


def reconstruct_tiny(out, splits, *extra):
    """reconstruct.py with the paper's detector (MSE) on the validation and in-distribution sets."""
    return reconstruct.main(reconstruct.parse_args([
        f"--output_dir={out}", "--model_name=m", f"--validation_ids={splits['val']}", f"--in_ids={splits['test']}",
        "--num_inference_steps=10", "--inference_skip_factor=5", "--metrics=mse", "--batch_size=4",
        "--num_workers=0", *extra]))


def tiny_reconstruct_args(out, paths, *extra):
    """reconstruct.py on every set of the blob splits, with small detector settings."""
    return reconstruct.parse_args([f"--output_dir={out}", "--model_name=m", f"--validation_ids={paths['val']}",
                                   f"--in_ids={paths['test']}", f"--out_ids={paths['ood']}", "--num_inference_steps=10",
                                   "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4", "--num_workers=0",
                                   "--msma_levels=3", "--denoise_levels=2", "--path_steps=3", *extra])
