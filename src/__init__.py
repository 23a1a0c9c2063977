"""Denoising diffusion models for out-of-distribution detection (Graham et al., 2023).

The four top-level scripts are thin front ends; the work lives here, one module per concept:

- ``files``: atomic writes, the contract between scripts.
- ``data``: split CSVs, image loading and per-image min-max scaling.
- ``datasets_download``: download / offline conversion of the benchmark datasets.
- ``config``: YAML configs with command-line overrides.
- ``unet``: the eps-prediction UNet.
- ``diffusion``: the DDPM schedule and the PLMS sampler.
- ``reconstruction``: the multi-start reconstruction loop.
- ``metrics``: MSE and LPIPS between inputs and reconstructions.
- ``scoring``: per-t z-scores, the OOD score and AUROC.
- ``checkpoint`` / ``training``: model files and the training loop.
"""
