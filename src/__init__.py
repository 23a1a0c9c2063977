"""Denoising diffusion models for out-of-distribution detection (Graham et al., 2023).

The four top-level scripts are thin front ends; the work lives here, one module per concept:

- ``errors``: the user-facing error types (one base class; the scripts exit 2 on them).
- ``cli``: flag types and checks, the scripts' error boundary (imports nothing heavy).
- ``files`` / ``runlock``: atomic writes, the contract between scripts; one process per run.
- ``distributed``: torchrun process groups (DDP training, sharded reconstruction).
- ``precision``: autocast precisions, shared by training and inference.
- ``data``: split CSVs, image loading and per-image min-max scaling.
- ``datasets_download``: download / offline conversion of the benchmark datasets.
- ``config``: YAML configs with command-line overrides.
- ``unet``: the eps-prediction UNet.
- ``diffusion``: the DDPM schedule and the PLMS sampler.
- ``reconstruction``: the multi-start reconstruction loop.
- ``metrics``: MSE and LPIPS between inputs and reconstructions.
- ``scoring``: per-t z-scores, the OOD score and AUROC.
- ``checkpoint`` / ``training``: model files and the training loop (``TrainLoop``).
- ``results_store``: chunked, resumable results files that several writers can share.
"""
