"""Atomic writes (ddpm_ood.utils.files): permissions, and clean-up of only our own temporaries."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from ddpm_ood.utils.files import TEMP_PREFIX, remove_stale_temporaries, save_csv_atomic


def test_stale_temporary_clean_up_deletes_only_our_own(tmp_path):
    for name in ("other.tmp", ".other.x.tmp", f"{TEMP_PREFIX}results_val.csv.abc.tmp"):
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x.tmp", "other.tmp"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umasks_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_csv_atomic(tmp_path / "a.csv", pd.DataFrame({"a": [1]}))
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == mode
