"""Split CSVs and image files as people really make them (issue 20): what spreadsheets write is read;
special files, files that are not what their name says and pickles are refused in one line naming
the file and its CSV line, in our words, without ever blocking on a file."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reconstruct
import train
from conftest import ROOT, TINY_CONFIG, make_images
from ddpm_ood.data.loading import load_split, read_split_csv
from ddpm_ood.utils.errors import DataError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return folder, make_images(folder / "ok", "b", 8, 0)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, images):
    folder, files = images
    out = tmp_path_factory.mktemp("runs")
    split = write_text_csv(folder / "Train.csv", "filename\n" + "".join(f"{f}\n" for f in files))
    train.main(train.parse_args([f"--output_dir={out}", "--model_name=m", f"--training_ids={split}",
                                 f"--validation_ids={split}", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=1",
                                 "--batch_size=8", "--num_sample_images=0", "--num_workers=0"]))
    return out


def write_text_csv(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# --- what spreadsheet programs write is read ---------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "cp1252"])
def test_encodings_and_byte_order_marks(tmp_path, images, encoding):
    _, files = images
    named = tmp_path / "café.npy"  # a name a Windows-1252 file can hold too
    named.write_bytes(files[0].read_bytes())
    csv_path = write_text_csv(tmp_path / "s.csv", "Filename\r\n" + "".join(f"{f}\r\n" for f in [named, *files[1:3]]),
                              encoding)
    assert read_split_csv(csv_path) == [named, *files[1:3]]


def test_semicolons_quotes_commas_and_spaces(tmp_path, images):
    _, files = images
    odd = tmp_path / "a folder, with commas" / "my image 1.npy"
    odd.parent.mkdir()
    odd.write_bytes(files[0].read_bytes())
    semicolons = write_text_csv(tmp_path / "semi.csv", f"filename;label\n{odd};3\n{files[1]};1\n")
    assert read_split_csv(semicolons) == [odd, files[1]]
    quoted = write_text_csv(tmp_path / "quoted.csv", f'path,label\n"{odd}",3\n{files[1]},1\n')
    assert read_split_csv(quoted) == [odd, files[1]]
    one_row = write_text_csv(tmp_path / "one_row.csv", f'"{odd}",{files[1]},{files[2]}\n')  # the original layout
    assert read_split_csv(one_row) == [odd, files[1], files[2]]
    assert load_split(quoted, True, num_workers=0).images.shape == (2, 1, 28, 28)


def test_a_png_named_npy_is_read_by_its_content(tmp_path, images):
    _, files = images
    picture = np.load(files[0])
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    (tmp_path / "really_a_png.npy").write_bytes(buffer.getvalue())
    csv_path = write_text_csv(tmp_path / "s.csv", f"filename\n{tmp_path / 'really_a_png.npy'}\n{files[0]}\n")
    loaded = load_split(csv_path, True, num_workers=0).images
    np.testing.assert_array_equal(loaded[0], loaded[1])


def test_train_and_reconstruct_read_a_spreadsheets_csv(tmp_path, images, model_run):
    _, files = images
    split = write_text_csv(tmp_path / "Excel_test.csv", "Filename\r\n" + "".join(f"{f}\r\n" for f in files), "utf-8-sig")
    train.main(train.parse_args([f"--output_dir={tmp_path}", "--model_name=t", f"--training_ids={split}",
                                 f"--validation_ids={split}", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=1",
                                 "--batch_size=8", "--num_sample_images=0", "--num_workers=0"]))
    written = reconstruct.main(reconstruct.parse_args([
        f"--output_dir={model_run}", "--model_name=m", f"--validation_ids={split}", "--run_in=0", "--run_out=0",
        "--num_inference_steps=4", "--inference_skip_factor=2", "--metrics=mse", "--num_workers=0"]))
    assert written["val"].exists()


# --- what cannot be an image of ours is refused, in one line ------------------------------------------

def bad_entry(folder, case):
    """An entry of a split CSV that cannot be an image of ours, and what the message must say."""
    path = folder / f"{case}.npy"
    if case == "fifo":
        os.mkfifo(path)
        return path, "is a named pipe (FIFO), not a file"
    if case == "device":
        path.symlink_to("/dev/zero")  # endless: reading it would never end
        return path, "is a character device, not a file"
    if case == "folder":
        path.mkdir()
        return path, "is a folder, not a file"
    if case == "dangling":
        path.symlink_to(folder / "nowhere.npy")
        return path, f"does not exist (a link to {folder / 'nowhere.npy'}, which does not exist)"
    if case == "link_loop":  # issue 33, wording: was called a permissions problem
        path.symlink_to(folder / "other.npy")
        (folder / "other.npy").symlink_to(path)
        return path, "is a loop of symbolic links (following them comes back where they started); fix the link."
    if case == "pickle":
        np.save(path, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
        return path, "holds Python objects, not numbers"
    if case == "raw_pickle":
        path.write_bytes(pickle.dumps({"image": [1, 2]}))
        return path, "is a Python pickle, which this code never loads"
    if case == "npz":
        np.savez(path.with_suffix(""), a=np.zeros((4, 4)))
        path.with_suffix(".npz").rename(path)
        return path, "is a zip archive"
    if case == "gzip":
        path.write_bytes(gzip.compress(b"\x93NUMPY" + bytes(100)))
        return path, "is gzip-compressed"
    if case == "text":
        path = folder / "notes.png"
        path.write_text("this is not a picture\n")
        return path, "is a text file, not an image"
    if case == "truncated_png":
        path = folder / "cut.png"
        buffer = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # does not compress away
        Image.fromarray(noise).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        return path, "is a damaged or truncated image file"
    if case == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if case == "huge":
        with open(path, "wb") as f:
            f.truncate(300 * 2**20)  # sparse: no disk used
        return path, "is 300 MiB, more than an image of ours can need"
    if case == "strings":
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
        return path, "holds <U1 values, not real numbers"
    if case == "garbage":
        path.write_bytes(bytes(range(200, 256)) * 50)
        return path, "is not an image file this code reads"
    raise ValueError(case)


CASES = ["fifo", "device", "folder", "dangling", "link_loop", "pickle", "raw_pickle", "npz", "gzip", "text", "truncated_png",
         "empty", "huge", "strings", "garbage"]


@pytest.mark.parametrize("case", CASES)
def test_a_file_that_cannot_be_an_image_is_refused_naming_the_file_and_line(tmp_path, images, model_run, case):
    _, files = images
    path, match = bad_entry(tmp_path, case)
    split = write_text_csv(tmp_path / "Odd_test.csv", f"filename\n{files[0]}\n{path}\n{files[1]}\n")
    for run_script in (
            lambda: train.main(train.parse_args([f"--output_dir={tmp_path / 'runs'}", "--model_name=t",
                                                 f"--training_ids={split}", f"--validation_ids={split}",
                                                 f"--config_diffusion_file={TINY_CONFIG}", "--num_workers=2"])),
            lambda: reconstruct.main(reconstruct.parse_args([
                f"--output_dir={model_run}", "--model_name=m", f"--validation_ids={split}", "--run_in=0",
                "--run_out=0", "--num_inference_steps=4", "--inference_skip_factor=2", "--metrics=mse"]))):
        with pytest.raises(DataError, match=re.escape(f"Odd_test.csv line 3: {path} {match}")) as err:
            run_script()
        message = str(err.value)  # one line, in our words: never numpy's or Pillow's, never "allow pickles"
        assert "\n" not in message and "allow_pickle" not in message
        assert not any(theirs in message for theirs in ("Object arrays cannot", "cannot identify image", "Errno"))


@pytest.mark.slow
def test_nothing_blocks_on_a_pipe_even_as_the_split_itself(tmp_path, images):
    """Run as a script, with a time limit: reading a pipe would wait forever for a writer."""
    _, files = images
    fifo_entry, _ = bad_entry(tmp_path, "fifo")
    split = write_text_csv(tmp_path / "Pipe_test.csv", f"filename\n{fifo_entry}\n")
    fifo_split = tmp_path / "Piped_train.csv"
    os.mkfifo(fifo_split)
    for training_ids, expected in ((split, "Pipe_test.csv line 2"), (fifo_split, "Piped_train.csv is a named pipe")):
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--output_dir={tmp_path}", "--model_name=t",
                                 f"--training_ids={training_ids}", f"--validation_ids={training_ids}",
                                 f"--config_diffusion_file={TINY_CONFIG}"], capture_output=True, text=True, cwd=ROOT,
                                timeout=60)
        errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(errors) == 1 and expected in errors[0], result.stderr


def test_a_split_csv_that_is_not_text_is_refused(tmp_path, images):
    _, files = images
    not_csv = tmp_path / "Image_test.csv"
    not_csv.write_bytes(files[0].read_bytes())  # an image passed as the split
    with pytest.raises(DataError, match="Image_test.csv is not text"):
        load_split(not_csv, True)
