"""The benchmark scripts run and print the figures they promise (the figures themselves are
measured by hand, not asserted: this machine is shared and noisy)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import reconstruct_bench  # noqa: E402
import train_bench  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses, torchrun, benchmarks or kills

FLOAT = r"([0-9.]+)"


def test_reconstruct_bench_prints_every_figure(capsys):
    reconstruct_bench.main(reconstruct_bench.parse_args(
        ["--device", "cpu", "--batch_size", "2,3", "--steps", "4", "--skip", "2", "--repeats", "1", "--lpips",
         "--flops", "--peak_tflops", "1", "--profile"]))
    out = capsys.readouterr().out
    assert "2 starts, 6 evals/image" in out and "MSE + LPIPS" in out
    for batch in (2, 3):
        assert f"-- batch {batch}," in out
    assert len(re.findall(rf"fused speed-up over sequential: {FLOAT}x", out)) == 2
    ratios = [float(r) for r in re.findall(rf"efficiency ratio \(bare / full fused path\): {FLOAT}", out)]
    assert len(ratios) == 2 and all(0 < r < 2 for r in ratios)
    # The demo UNet: 0.38 GFLOP per forward pass of one 28x28 image.
    assert re.search(r"UNet forward: 0\.3\d GFLOP/image; fused path achieved [0-9.]+ TFLOP/s = [0-9.]+% of", out)
    assert "profile of one fused batch" in out and "convolution" in out


def test_train_bench_prints_throughput_and_data_wait(capsys):
    train_bench.main(train_bench.parse_args(["--device", "cpu", "--steps", "2", "--n_images", "256", "--flops"]))
    out = capsys.readouterr().out
    share = re.search(rf"training: {FLOAT} images/s \({FLOAT} ms/step\); data wait {FLOAT}% of step time", out)
    assert share and 0 <= float(share.group(3)) < 100
    # Forward + backward is about three forward passes: 3 x 0.38 GFLOP.
    assert re.search(r"UNet forward\+backward: 1\.1\d GFLOP/image", out)


def test_train_bench_compares_the_layouts_on_volumes(capsys):
    train_bench.main(train_bench.parse_args(["--setting", "cpu_3d", "--device", "cpu", "--batch_size", "1",
                                             "--steps", "1", "--n_images", "2", "--compare_channels_last", "--flops"]))
    out = capsys.readouterr().out
    assert "32x32x32x1, batch 1, cpu, fp32" in out
    for layout in ("contiguous", "channels_last"):
        assert re.search(rf"training \({layout}\): {FLOAT} images/s", out)
    assert re.search(rf"channels_last speed-up: {FLOAT}x", out)
    # The 3D demo UNet on one 32^3 volume: 24.9 GFLOP forward + backward (torch.utils.flop_counter).
    assert re.search(r"UNet forward\+backward: 24\.9\d GFLOP/image", out)


def test_gpu_check_script_runs_in_smoke_mode(tmp_path):
    """benchmarks/gpu_check.sh gets one short run on a lent GPU: its plumbing (wheel install,
    every flag of both benchmarks, bf16 + torch.compile, the log under $OUT) is checked here on
    the CPU first. The suite's slowest test: 337 s in a fresh clone, 184 s with torch.compile's cache warm."""
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert log.count("training: ") == 2 and "bf16 + compile" in log and "s] done ==" in log
    assert log.count("efficiency ratio") == 3  # fp32 at one batch size, bf16 + compile at two
    assert "fused speed-up over sequential" in log and "profile of one fused batch" in log
    assert re.search(r"recon +26 +\d", log) and re.search(r"msma +10 +\d", log)  # the pretrained section
    assert "latent is " in log and "64^3 latent: peak RSS +" in log  # the latent and 3D section


def test_scaling_bench_prints_both_efficiencies(capsys):
    import scaling_bench

    figures = scaling_bench.main(scaling_bench.parse_args(
        ["--train_batch", "8", "--train_steps", "2", "--recon_images", "32"]))
    out = capsys.readouterr().out
    for kind in ("train", "reconstruct"):
        assert re.search(rf"{kind}: 1 process {FLOAT} images/s, 2 processes {FLOAT} images/s; scaling efficiency "
                         rf"{FLOAT}", out)
        one, two, efficiency = figures[kind]
        assert one > 0 and two > 0 and abs(efficiency - two / (2 * one)) < 1e-9


def test_latent_bench_prints_the_speed_ratio_and_the_volume_memory():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    speed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latent_bench.py"), "speed", "--images", "1",
                            "--steps", "2", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert speed.returncode == 0, speed.stderr
    assert re.search(rf"latent \(3, 16, 16\): {FLOAT} s per image", speed.stdout)
    assert re.search(rf"latent is {FLOAT}x cheaper", speed.stdout)
    memory = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latent_bench.py"), "memory_one", "--size", "16",
                             "--space", "latent", "--steps", "2", "--device", "cpu"], capture_output=True, text=True,
                            env=env, timeout=600)
    assert memory.returncode == 0, memory.stderr
    assert '"size": 16, "space": "latent", "peak_rss_mib"' in memory.stdout
