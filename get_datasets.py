r"""Download (or import from disk) the datasets and write the split CSVs.

    python get_datasets.py --data_root=${data_root}
    python get_datasets.py --data_root=${data_root} --download_celeba=False
    python get_datasets.py --data_root=${data_root} --datasets FashionMNIST \
        --source_dir FashionMNIST=/usr/share/datasets/fashion-mnist
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from ddpm_ood.cli import run_main, str2bool
from ddpm_ood.data.catalogue import DATASETS, DEFAULT_DATASETS, describe
from ddpm_ood.utils.errors import DataError

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, type=Path,
                        help="Folder for the datasets; gets <Dataset>/numpy/<split>/*.npy and data_splits/*.csv.")
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS), choices=DATASETS, metavar="NAME",
                        help=f"Datasets to prepare (default: {', '.join(DEFAULT_DATASETS)}). {describe()}.")
    parser.add_argument("--download_celeba", type=str2bool, default=True,
                        help="0/False: use CelebA files placed by hand in DATA_ROOT/CelebA/raw/celeba/ "
                             "(when Google Drive's quota blocks the download). Default: True.")
    parser.add_argument("--source_dir", nargs="+", default=[], metavar="[NAME=]DIR",
                        help="Convert raw files already on disk instead of downloading. DIR applies to every "
                             "dataset (searched as DIR/<NAME>/raw, DIR/<NAME>); NAME=DIR to one dataset, whose "
                             "files may lie directly in DIR, e.g. FashionMNIST=/usr/share/datasets/fashion-mnist. "
                             "MNIST/FashionMNIST take the IDX files (.gz or not); the others torchvision's raw files.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    return parser.parse_args(argv)


def parse_sources(entries: Sequence[str]) -> tuple[Path | None, dict[str, Path]]:
    shared, per_dataset = None, {}
    for entry in entries:
        name, sep, directory = entry.partition("=")
        if sep and name in DATASETS:
            per_dataset[name] = Path(directory)
        elif sep:
            raise DataError(f"--source_dir {entry}: {name!r} is not a dataset; choose from {DATASETS}.")
        else:
            shared = Path(entry)
    for path in [shared, *per_dataset.values()]:
        if path is not None and not path.is_dir():
            raise DataError(f"--source_dir {path} is not a folder.")
    return shared, per_dataset


def main(args: argparse.Namespace) -> dict[str, list[Path]]:
    from ddpm_ood.data.catalogue import prepare

    shared, per_dataset = parse_sources(args.source_dir)
    n_idx = sum(name in ("MNIST", "FashionMNIST") for name in args.datasets)
    written = {}
    for name in dict.fromkeys(args.datasets):
        source = per_dataset.get(name, shared)
        logger.info("preparing %s%s", name, f" from {source}" if source else "")
        # A bare DIR cannot hold both MNIST's and FashionMNIST's same-named IDX files.
        top_level_ok = name in per_dataset or n_idx == 1
        written[name] = prepare(args.data_root, name, source, args.download_celeba, top_level_ok)
        logger.info("%s: wrote %s", name, ", ".join(str(p) for p in written[name]))
    return written


if __name__ == "__main__":
    run_main(main, parse_args)
