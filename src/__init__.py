"""Denoising diffusion models for out-of-distribution detection (Graham et al., 2023).

The four top-level scripts are thin front ends; the work lives here, one module per concept,
each importing only modules listed before it (``tests/test_layering.py`` checks):

- ``errors``: the user-facing error types (one base class; the scripts exit 2 on them).
- ``runtime``: how a process runs: device, precision, the Ctrl-C flag.
- ``files`` / ``runlock``: atomic writes, the contract between scripts; one process per run.
- ``data``: split CSVs, image loading and per-image min-max scaling.
- ``run_files``: every artefact path of a run, and the settings manifest of every results file.
- ``distributed``: torchrun process groups (DDP training, sharded reconstruction).
- ``diffusion`` / ``unet`` / ``config``: the DDPM schedule and PLMS sampler, the UNet, YAML configs.
- ``checkpoint`` / ``pretrained`` / ``inference``: model files; diffusers models; the one model loader
  (``load_model_fn``) for both.
- ``metrics`` / ``reconstruction``: MSE and LPIPS; the multi-start PLMS reconstruction.
- ``scoring``: the arithmetic: the one z-score, OOD metrics, bootstrap intervals, thresholds.
- ``results`` / ``results_store``: reading results back, checked; writing them in resumable chunks.
- ``datasets_download``: download / offline conversion of the benchmark datasets.
- ``training``: the training loop (``TrainLoop``).
- ``detectors``: the registry and every detector (the paper's ``recon`` among them).
- ``evaluation`` / ``report``: a run's results to typed scores and metrics; those to tables and files.
- ``api``: ``OODDetector``, scoring new images with a scored run.
- ``cli``: flag types and the error boundary, for the scripts only.
"""
