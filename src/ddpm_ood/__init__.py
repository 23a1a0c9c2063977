"""Denoising diffusion models for out-of-distribution detection (Graham et al., 2023).

The public API, importable from any folder once the package is installed
(``pip install -r requirements.txt`` installs it)::

    from ddpm_ood import OODDetector, ImageDetector, load_model
    detector = OODDetector.load("demo_output/models/fashionmnist_demo")
    scores = detector.score(images)   # (N, C, H, W) in [0, 1] -> (N,), higher = more OOD

The five top-level scripts are thin front ends; the work lives here, one module per concept,
each importing only modules listed before it (``tests/test_layering.py`` checks):

- ``errors``: the user-facing error types (one base class; the scripts exit 2 on them).
- ``anomaly_maps``: per-pixel squared errors z-scored on the validation images (``--save_maps``).
- ``runtime``: how a process runs: device, precision, the Ctrl-C flag.
- ``train_config``: every training setting and its default, once (train.py's flags come from it).
- ``files`` / ``runlock``: atomic writes, the contract between scripts; one process per run.
- ``data``: split CSVs, image and volume loading (volumes read as needed) and per-image min-max scaling.
- ``run_files``: every artefact path of a run, and the settings manifest of every results file.
- ``distributed``: torchrun process groups (DDP training, sharded reconstruction).
- ``diffusion`` / ``unet`` / ``config``: the DDPM schedule and PLMS sampler, the UNet, YAML configs.
- ``boundary``: image space and model space (encode/decode), a model's identity.
- ``checkpoint``: model files.
- ``first_stage`` / ``autoencoder_training``: a latent model's autoencoder (``LatentSpace``, the
  model space of a latent DDPM) and its training (``train_vqvae.py``).
- ``pretrained`` / ``monai_models`` / ``inference``: diffusers models (and LDMPipelines); MONAI
  bundles and ddpm-ood runs; the model sources and the one loader (``load_model``), which gives
  every detector its model.
- ``metrics`` / ``reconstruction``: MSE and LPIPS; the multi-start PLMS reconstruction.
- ``scoring``: the arithmetic: the one z-score, OOD metrics, bootstrap intervals, thresholds.
- ``results`` / ``results_store``: reading results back, checked; writing them in resumable chunks.
- ``datasets_download`` / ``medical_datasets``: download / offline conversion of the benchmark
  datasets, and of MedNIST, 3D MedMNIST and the Medical Decathlon.
- ``training``: the training loop (``TrainLoop``).
- ``detectors``: the registry and every detector (the paper's ``recon`` among them).
- ``fits``: the fit files' format (``ood/fits/<detector>.json``): built, written and read here only.
- ``evaluation`` / ``report``: a run's results to typed scores and metrics; those to tables and files.
- ``api``: ``OODDetector`` (a scored run on new images), ``ImageDetector`` and the pytorch-ood adapter.
- ``cli``: flag types and the error boundary, for the scripts only.
"""

# The public names, imported on first use (PEP 562), so that the scripts' --help never loads torch.
_EXPORTS = {
    "OODDetector": "ddpm_ood.api", "ImageDetector": "ddpm_ood.api", "pytorch_ood_detector": "ddpm_ood.api",
    "load_model": "ddpm_ood.inference", "load_model_fn": "ddpm_ood.inference", "LoadedModel": "ddpm_ood.inference",
    "ModelSource": "ddpm_ood.inference", "RunModel": "ddpm_ood.inference", "DiffusersModel": "ddpm_ood.inference",
    "MonaiBundle": "ddpm_ood.inference", "DdpmOodRun": "ddpm_ood.inference", "LatentSpace": "ddpm_ood.first_stage",
    "DETECTORS": "ddpm_ood.detectors", "detector_class": "ddpm_ood.detectors",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.4.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm_ood' has no attribute {name!r}")
