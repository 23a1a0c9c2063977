"""The scripts' command lines as the end-to-end tests run them."""
from __future__ import annotations

import reconstruct
from conftest import TINY_CONFIG


def reconstruct_args(out, splits, *extra):
    """reconstruct.py on the synthetic splits: validation, in-distribution test, stripes and flipped blobs."""
    ood = f"{splits['ood']},{splits['test'].with_name('Blobs_vflip_test.csv')}"
    return reconstruct.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--validation_ids={splits['val']}",
        f"--in_ids={splits['test']}", f"--out_ids={ood}", "--is_grayscale=1",
        f"--config_diffusion_file={TINY_CONFIG}", "--num_inference_steps=10", "--inference_skip_factor=3",
        "--run_val=1", "--run_in=1", "--run_out=1", "--batch_size=4", *extra])
