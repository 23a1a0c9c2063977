"""Both scripts under torchrun on this machine's devices, on tiny synthetic data (a smoke test).

    python benchmarks/torchrun_smoke.py              # 1 process (a GPU if there is one)
    python benchmarks/torchrun_smoke.py --nproc 2

Trains the tiny UNet for two epochs and reconstructs a few images with
``torchrun --nproc_per_node=N``, then checks that the run's files are there and the results
CSVs equal a one-process reconstruction's byte for byte.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kill_resume import ROOT, TINY, make_split  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {name: make_split(tmp / "data", name, n, seed) for name, n, seed in
                (("train", 32, 0), ("val", 8, 1), ("test", 8, 2))}
        common = [f"--output_dir={tmp / 'runs'}", "--model_name=m"]
        start = time.monotonic()
        subprocess.run([*torchrun, str(ROOT / "train.py"), *common, f"--training_ids={data['train']}",
                        f"--validation_ids={data['val']}", f"--config_diffusion_file={TINY}", "--n_epochs=2",
                        "--batch_size=8", "--num_sample_images=4", "--sample_steps=3", "--num_workers=0"],
                       cwd=ROOT, env=env, check=True)
        trained = all((tmp / "runs" / "m" / f).is_file() for f in ("checkpoint.pth", "best_model.pth", "final_model.pth"))
        print(f"torchrun train.py on {args.nproc} process(es): {time.monotonic() - start:.1f} s, files written: {trained}")
        recon = [f"--validation_ids={data['val']}", f"--in_ids={data['test']}", "--run_out=0", "--num_inference_steps=10",
                 "--inference_skip_factor=4", "--metrics=mse", "--batch_size=2", "--chunk_size=3", "--num_workers=0"]
        start = time.monotonic()
        subprocess.run([*torchrun, str(ROOT / "reconstruct.py"), *common, *recon], cwd=ROOT, env=env, check=True)
        seconds = time.monotonic() - start
        subprocess.run([sys.executable, str(ROOT / "reconstruct.py"), f"--output_dir={tmp / 'one'}", "--model_name=m",
                        f"--eval_checkpoint={tmp / 'runs' / 'm' / 'best_model.pth'}", *recon],
                       cwd=ROOT, env=env, check=True)
        same = all((tmp / "runs" / "m" / "ood" / f).read_bytes() == (tmp / "one" / "m" / "ood" / f).read_bytes()
                   for f in ("results_val.csv", "results_in.csv"))
        print(f"torchrun reconstruct.py on {args.nproc} process(es): {seconds:.1f} s, results equal to one "
              f"process: {same}")
        return 0 if trained and same else 1


if __name__ == "__main__":
    sys.exit(main())
