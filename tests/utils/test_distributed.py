"""Several processes: real `torchrun --nproc_per_node=2` (gloo, one thread each) and independent
--shard jobs, against one process. Reconstruction must give the same bytes; training the same
parameters to float32 rounding (the gradient all-reduce adds the ranks' partial gradients in
another order than one process's single backward pass), and bitwise the same on a resume at
the same world size."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import torch

import reconstruct
from conftest import ROOT, TINY_CONFIG, make_images, write_split
from ddpm_ood.utils.errors import DataError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import kill_process_tree  # noqa: E402

pytestmark = pytest.mark.slow  # subprocesses, torchrun, benchmarks or kills


def descendants_alive(pid: int) -> bool:
    """Is any process left that torchrun ``pid`` started (a rank orphaned by the kill)?"""
    import pathlib
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if "train.py" in text and "killed2" in text and ") Z" not in status:
            return True
    return False  # two torch processes on two cores: one thread each


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    return tmp, {
        "train": write_split(tmp / "s" / "Blobs_train.csv", make_images(tmp / "tr", "b", 30, 0)),
        "val": write_split(tmp / "s" / "Blobs_val.csv", make_images(tmp / "va", "b", 10, 1)),
        "test": write_split(tmp / "s" / "Blobs_test.csv", make_images(tmp / "te", "b", 7, 2)),
    }


def command(script, nproc, *args):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*(launcher if nproc else [sys.executable]), str(ROOT / script), *args]


def run(script, nproc, *args):
    result = subprocess.run(command(script, nproc, *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_args(out, splits, epochs=2, *extra):
    # Batch 7 on 2 ranks: slices of 4 and 3, and the epoch's last batch of 2 (30 = 4 x 7 + 2).
    return [f"--output_dir={out}", "--model_name=m", f"--training_ids={splits['train']}",
            f"--validation_ids={splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", f"--n_epochs={epochs}",
            "--batch_size=7", "--num_sample_images=0", "--num_workers=0", "--ema_decay=0.9", "--eval_freq=1", *extra]


def state(out):
    return torch.load(out / "m" / "checkpoint.pth", weights_only=True)


def assert_close_states(a, b, atol):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for group in ("model", "ema_model"):
        for key in a[group]:
            torch.testing.assert_close(a[group][key], b[group][key], atol=atol, rtol=0, msg=f"{group}.{key}")


def test_two_process_training_equals_one_process(data):
    tmp, splits = data
    run("train.py", 0, *train_args(tmp / "one", splits))
    run("train.py", 2, *train_args(tmp / "two", splits))
    one, two = state(tmp / "one"), state(tmp / "two")
    assert two["settings"]["world_size"] == 2 and one["step"] == 10  # 5 batches an epoch, 2 epochs
    assert_close_states(one, two, atol=1e-5)
    assert abs(one["best_val_loss"] - two["best_val_loss"]) < 1e-5
    assert (tmp / "two" / "m" / "final_model.pth").is_file() and (tmp / "two" / "m" / "best_model.pth").is_file()


def test_resume_at_another_world_size_goes_on_from_the_global_position(data):
    """Decision: supported. The position (epoch, batch, step) and the step noise are global."""
    tmp, splits = data
    if not (tmp / "one").exists():
        run("train.py", 0, *train_args(tmp / "one", splits))
    run("train.py", 0, *train_args(tmp / "mixed", splits, 1))
    result = run("train.py", 2, *train_args(tmp / "mixed", splits, 2))
    assert "trained on 1 process(es) on 2" in result.stderr
    assert_close_states(state(tmp / "one"), state(tmp / "mixed"), atol=1e-5)


def test_sigkilled_two_process_run_resumes_bitwise(data):
    tmp, splits = data
    run("train.py", 2, *train_args(tmp / "clean2", splits, 3, "--checkpoint_every_steps=1"))
    args = command("train.py", 2, *train_args(tmp / "killed2", splits, 3, "--checkpoint_every_steps=1"))
    checkpoint = tmp / "killed2" / "m" / "checkpoint.pth"
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and \
                (not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            kill_process_tree(process.pid)  # torchrun and both ranks (each rank is in a session of its own)
            kills += 1
        process.wait()
        gone_by = time.monotonic() + 10
        while descendants_alive(process.pid) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert not descendants_alive(process.pid)  # no rank left running from the killed group
    assert kills >= 1
    subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, check=True, timeout=300)
    assert_close_states(state(tmp / "clean2"), state(tmp / "killed2"), atol=0)


def reconstruct_args(out, splits, *extra):
    return [f"--output_dir={out}", "--model_name=m", f"--validation_ids={splits['val']}",
            f"--in_ids={splits['test']}", "--num_inference_steps=10", "--inference_skip_factor=4", "--metrics=mse",
            "--batch_size=2", "--chunk_size=3", "--num_workers=0", f"--eval_checkpoint={out.parent / 'model.pth'}",
            *extra]


@pytest.fixture(scope="module")
def model_file(data):
    tmp, splits = data
    if not (tmp / "one").exists():
        run("train.py", 0, *train_args(tmp / "one", splits))
    return tmp / "one" / "m" / "final_model.pth"


def results(out):
    return {name: (out / "m" / "ood" / f"results_{name}.csv").read_bytes() for name in ("val", "in")}


def test_two_process_and_sharded_reconstruction_give_the_same_bytes(data, model_file, tmp_path):
    _, splits = data
    for name in ("one", "two", "shards"):
        (tmp_path / name).mkdir()
    (tmp_path / "model.pth").write_bytes(model_file.read_bytes())
    run("reconstruct.py", 0, *reconstruct_args(tmp_path / "one", splits))
    run("reconstruct.py", 2, *reconstruct_args(tmp_path / "two", splits))
    assert results(tmp_path / "two") == results(tmp_path / "one")

    shards = tmp_path / "shards"
    run("reconstruct.py", 0, *reconstruct_args(shards, splits, "--shard=1/2"))
    # Shard 0 has not run: nothing a later step could mistake for finished.
    assert not list((shards / "m" / "ood").glob("results_*.csv"))
    assert sorted(p.name for p in (shards / "m" / "ood" / ".partial" / "val").glob("chunk_*")) == ["chunk_00001.csv", "chunk_00003.csv"]
    run("reconstruct.py", 0, *reconstruct_args(shards, splits, "--shard=0/2"))  # the last shard joins
    assert results(shards) == results(tmp_path / "one")
    assert not (shards / "m" / "ood" / ".partial" / "val").exists()


def test_a_dead_worker_leaves_only_chunks_and_a_rerun_at_any_size_finishes(data, model_file, tmp_path):
    _, splits = data
    (tmp_path / "model.pth").write_bytes(model_file.read_bytes())
    (tmp_path / "one").mkdir()
    run("reconstruct.py", 0, *reconstruct_args(tmp_path / "one", splits))
    out = tmp_path / "died"
    out.mkdir()
    run("reconstruct.py", 0, *reconstruct_args(out, splits, "--shard=2/3"))  # shards 0 and 1 "died"
    assert not list((out / "m" / "ood").glob("results_*.csv"))
    run("reconstruct.py", 2, *reconstruct_args(out, splits))  # a re-run at another size finishes the rest
    assert results(out) == results(tmp_path / "one")


@pytest.mark.parametrize("value", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shards_are_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as err:
        reconstruct.parse_args(["--output_dir=o", "--model_name=m", f"--shard={value}"])
    assert err.value.code == 2 and "--shard" in capsys.readouterr().err


def test_shard_with_restart_is_refused(tmp_path):
    with pytest.raises(DataError, match="--restart"):
        reconstruct.main(reconstruct.parse_args(["--output_dir", str(tmp_path), "--model_name=m", "--shard=0/2",
                                                 "--restart", "--run_val=0", "--run_in=0"]))


@pytest.mark.parametrize("n_rows,world,sizes", [(180, 7, [26, 26, 26, 26, 26, 25, 25]), (7, 2, [4, 3]), (2, 3, [1, 1, 0]),
                                               (8, 1, [8])])
def test_each_rank_takes_a_contiguous_disjoint_slice_of_the_global_batch(n_rows, world, sizes):
    from ddpm_ood.utils.distributed import Dist

    shares = [Dist(rank, world).share(n_rows) for rank in range(world)]
    assert [s.stop - s.start for s in shares] == sizes
    assert [i for s in shares for i in range(s.start, s.stop)] == list(range(n_rows))


def test_under_torchrun_ood_detection_runs_once(scored_copy):
    out, _ = scored_copy
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m", "--bootstrap=0", "--no-figures"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("AUC for m vs Stripes: ") == 1
    assert len(list((out / "m" / "tensorboard" / "ood_detection").glob("events.out.tfevents.*"))) == 1
