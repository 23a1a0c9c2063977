#!/usr/bin/env bash
# Run here, before the device call: fetches the pure-Python wheels that the GPU machine's image
# lacks (omegaconf, lpips, MONAI, einops, nibabel; diffusers and what it imports) into .whl/ (git-ignored), for the device
# call to carry:
#   bash benchmarks/prepare_gpu_check.sh
#   device run: carry [".whl"], command "PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0 lpips==0.1.4 monai==1.6.1 \
  einops==0.8.2 nibabel==5.4.2 \
  $(grep -A30 '^# Pretrained diffusers' requirements.txt | grep '==' | tr '\n' ' ')
ls -l .whl
