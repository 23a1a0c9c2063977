r"""ddpm-ood's later name of train.py: one program, two names (``python train_ddpm.py --help`` is train.py's)."""
from __future__ import annotations

from ddpm_ood.cli import run_main
from train import main, parse_args

if __name__ == "__main__":
    run_main(main, parse_args)
