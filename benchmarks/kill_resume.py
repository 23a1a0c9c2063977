"""Kill training and reconstruction at random points, resume each time, and check the results.

    python benchmarks/kill_resume.py            # 20 kills each; about 5 minutes on 2 CPU cores
    python benchmarks/kill_resume.py --kills 5
    python benchmarks/kill_resume.py --nproc 2  # under torchrun: SIGKILL the whole process group

Runs train.py and reconstruct.py (tiny model, synthetic images, CPU) once uninterrupted, then
again with SIGKILL at --kills random moments, re-running the same command after each kill.
After every kill each artefact on disk is opened (checkpoints with torch.load(weights_only=True),
CSVs with pandas); prints how many were ever found corrupt (must be 0) and whether the final
outputs equal the uninterrupted run's (weights and optimizer state bitwise; CSVs byte for byte).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import kill_process_tree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "src" / "ddpm_ood" / "configs" / "diffusion" / "diffusion_tiny.yaml"


def make_split(folder: Path, name: str, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    files = []
    for i in range(n):
        r = rng.uniform(4, 9)
        image = 255 * np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / (2 * r * r)) + rng.normal(0, 8, (28, 28))
        files.append(folder / f"{name}_{i}.npy")
        np.save(files[-1], np.clip(image, 0, 255).astype(np.uint8))
    csv = folder / f"{name}.csv"
    pd.DataFrame({"filename": [str(f) for f in files]}).to_csv(csv, index=False)
    return csv


LAUNCH: list[str] = [sys.executable]  # or torchrun's, with --nproc (set in main)
ENV = dict(os.environ)


def train_command(out: Path, data: dict) -> list[str]:
    return [*LAUNCH, str(ROOT / "train.py"), f"--output_dir={out}", "--model_name=m",
            f"--training_ids={data['train']}", f"--validation_ids={data['val']}", f"--config_diffusion_file={TINY}",
            "--n_epochs=4", "--batch_size=8", "--eval_freq=2", "--checkpoint_every_steps=3", "--ema_decay=0.9",
            "--num_sample_images=4", "--sample_steps=5", "--num_workers=0"]


def reconstruct_command(out: Path, data: dict) -> list[str]:
    return [*LAUNCH, str(ROOT / "reconstruct.py"), f"--output_dir={out}", "--model_name=m",
            f"--validation_ids={data['val']}", f"--in_ids={data['test']}", "--run_out=0", "--num_inference_steps=20",
            "--inference_skip_factor=2", "--metrics=mse", "--chunk_size=4", "--batch_size=4", "--num_workers=0"]


def run(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def corrupt_artefacts(run_dir: Path) -> list[str]:
    """Open every finished artefact the scripts wrote; temporary files (.*.tmp) are not artefacts."""
    bad = []
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".pth":
                torch.load(path, weights_only=True)
            elif path.suffix == ".csv":
                pd.read_csv(path)
        except Exception as err:  # any failure to read is a corrupt artefact
            bad.append(f"{path}: {type(err).__name__}")
    return bad


def kill_loop(command: list[str], duration: float, kills: int, run_dir: Path, rng: random.Random) -> tuple[int, list]:
    """SIGKILL the command ``kills`` times at random moments while it works, then let it finish.

    Each attempt waits out the start-up (imports) and then a random share of the work, so the
    kills land across the whole run: the resumed run carries on where the last one stopped.
    """
    startup = run([sys.executable, command[len(LAUNCH)], "--help"])
    if len(LAUNCH) > 1:
        startup += 3.0  # torchrun's rendezvous and the process group
    work = max(duration - startup, 0.5)
    landed, attempts, corrupt = 0, 0, []
    while landed < kills and attempts < 3 * kills:
        attempts += 1
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5 * startup, startup + 2 * work / kills))
        if process.poll() is None:
            kill_process_tree(process.pid)  # torchrun and every rank (each in a session of its own)
            landed += 1
        process.wait()
        corrupt += corrupt_artefacts(run_dir)
    run(command)  # the same command, to completion
    return landed, corrupt


def same_state(a: Path, b: Path) -> bool:
    x, y = (torch.load(p, weights_only=True) for p in (a, b))

    def equal(u, v):
        if isinstance(u, torch.Tensor):
            return isinstance(v, torch.Tensor) and torch.equal(u, v)
        if isinstance(u, dict):
            return isinstance(v, dict) and u.keys() == v.keys() and all(equal(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(equal(p, q) for p, q in zip(u, v))
        return u == v

    keys = [k for k in ("model", "optimizer", "ema_model", "epoch", "step") if k in x]
    return all(equal(x[k], y[k]) for k in keys)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=0,
                        help="Run both scripts under torchrun with this many processes (one thread each); 0: plain python.")
    args = parser.parse_args(argv)
    if args.nproc:
        LAUNCH[:] = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        ENV["OMP_NUM_THREADS"] = "1"
        print(f"under torchrun with {args.nproc} processes")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {"train": make_split(tmp / "data", "train", 96, 0), "val": make_split(tmp / "data", "val", 16, 1),
                "test": make_split(tmp / "data", "test", 16, 2)}
        clean, killed = tmp / "clean", tmp / "killed"

        train_seconds = run(train_command(clean, data))
        recon_seconds = run(reconstruct_command(clean, data))
        print(f"uninterrupted: training {train_seconds:.1f} s, reconstruction {recon_seconds:.1f} s "
              "(process start-up included)")

        landed, corrupt = kill_loop(train_command(killed, data), train_seconds, args.kills, killed / "m", rng)
        train_equal = all(same_state(clean / "m" / f, killed / "m" / f)
                          for f in ("checkpoint.pth", "best_model.pth", "final_model.pth"))
        print(f"training: {landed} SIGKILLs landed while it ran; "
              f"final weights/optimizer equal to the uninterrupted run: {train_equal}")

        landed_r, corrupt_r = kill_loop(reconstruct_command(killed, data), recon_seconds, args.kills, killed / "m", rng)
        csv_equal = all((clean / "m" / "ood" / f).read_bytes() == (killed / "m" / "ood" / f).read_bytes()
                        for f in ("results_val.csv", "results_in.csv"))
        print(f"reconstruction: {landed_r} SIGKILLs landed while it ran; "
              f"results CSVs identical to the uninterrupted run: {csv_equal}")
        found = corrupt + corrupt_r
        print(f"corrupt artefacts found after any kill: {len(found)}")
        for line in found[:10]:
            print("  ", line)
        print(f"all final outputs equal: {train_equal and csv_equal}")
        return 0 if not found and train_equal and csv_equal else 1


if __name__ == "__main__":
    sys.exit(main())
