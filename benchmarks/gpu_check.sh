#!/usr/bin/env bash
# One GPU check (about 7 minutes on an H100/H200, estimated): training and reconstruction
# benchmarks at the paper's model size (171M-parameter UNet, 28x28, training batch 180,
# reconstruction batch 64, 100 PLMS steps, skip 16: 7 starts), in fp32 eager and in bf16 +
# torch.compile, with FLOP/s as a share of the card's peak and a profile of the fast
# reconstruction path; every detector's cost on a pretrained diffusers model (the architecture of
# google/ddpm-cifar10-32 with random weights, and the real weights where PRETRAINED names them:
# a folder, or a hub id in the Hugging Face cache); latent against pixel space at 64x64 and the peak
# memory per 32^3 and 64^3 volume (benchmarks/latent_bench.py); then train.py and reconstruct.py under
# torchrun (NPROC processes, default 1) on a tiny model.
#
#   bash benchmarks/prepare_gpu_check.sh              # here: wheels the GPU image lacks -> .whl/
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh      # there, carrying .whl (dense bf16 peak:
#                                                     # H100 SXM and H200: 989)
#   SMOKE=1 bash benchmarks/gpu_check.sh              # the same steps on the CPU with the demo
#                                                     # model: checks this script (3 minutes on 2
#                                                     # cores, 5.6 with torch.compile's cache cold)
#
# PYTHON names the interpreter (default python3).
#
# The figures go to stdout and, where $OUT is set (the device tool), to $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
run_all() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  PEAK=${PEAK_TFLOPS:-989}
  if [[ "${SMOKE:-0}" == 1 ]]; then
    SETTING=(--setting cpu --device cpu); TRAIN_STEPS=(2 2); TRAIN_BATCH=(--batch_size 8); BATCHES=(4 4,8)
    RECON=(--steps 4 --skip 2)
    PRETRAINED_BENCH=(--architecture tiny --device cpu --n 4 --batch_size 4 --steps 10 --skip 3)
    LATENT=(--device cpu --steps 2); LATENT_IMAGES=2
    "$PYTHON" -c "import torch; print('torch', torch.__version__, '(smoke run on the CPU)')"
  else
    SETTING=(--setting paper); TRAIN_STEPS=(20 40); TRAIN_BATCH=(); BATCHES=(64 64,256); RECON=()
    PRETRAINED_BENCH=(--architecture ddpm-cifar10-32 --device cuda --n 256 --batch_size 64)
    LATENT=(--device cuda --steps 10); LATENT_IMAGES=${LATENT_IMAGES:-64}
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
    "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  fi
  LPIPS=()
  if "$PYTHON" -c "import lpips" 2> /dev/null; then
    LPIPS=(--lpips)
  else
    echo "lpips is not installed: reconstruction is scored with MSE only (bash benchmarks/prepare_gpu_check.sh)"
  fi
  COMMON=(--flops --peak_tflops "$PEAK")

  echo "== [${SECONDS}s] training, fp32 eager =="
  "$PYTHON" benchmarks/train_bench.py "${SETTING[@]}" --precision fp32 --steps "${TRAIN_STEPS[0]}" "${TRAIN_BATCH[@]}" "${COMMON[@]}"
  echo "== [${SECONDS}s] training, bf16 + compile =="
  "$PYTHON" benchmarks/train_bench.py "${SETTING[@]}" --precision bf16 --compile --steps "${TRAIN_STEPS[1]}" "${TRAIN_BATCH[@]}" \
    "${COMMON[@]}"
  echo "== [${SECONDS}s] reconstruction, fp32 eager: fused vs sequential =="
  "$PYTHON" benchmarks/reconstruct_bench.py "${SETTING[@]}" "${RECON[@]}" "${LPIPS[@]}" --batch_size "${BATCHES[0]}" \
    --precision fp32 --repeats 1 "${COMMON[@]}"
  echo "== [${SECONDS}s] reconstruction, bf16 + compile: fused, then a profile of the last batch size =="
  "$PYTHON" benchmarks/reconstruct_bench.py "${SETTING[@]}" "${RECON[@]}" "${LPIPS[@]}" --batch_size "${BATCHES[1]}" \
    --precision bf16 --compile --repeats 1 --skip_sequential --profile "${COMMON[@]}"
  if "$PYTHON" -c "import diffusers" 2> /dev/null; then
    echo "== [${SECONDS}s] every detector on a pretrained diffusers model: NFE and seconds per image =="
    "$PYTHON" benchmarks/pretrained_bench.py "${PRETRAINED_BENCH[@]}"
    if [[ -n "${PRETRAINED:-}" ]]; then
      "$PYTHON" benchmarks/pretrained_bench.py "${PRETRAINED_BENCH[@]}" --pretrained "$PRETRAINED"
    fi
  else
    echo "diffusers is not installed: the pretrained section is skipped (bash benchmarks/prepare_gpu_check.sh)"
  fi
  if "$PYTHON" -c "import monai" 2> /dev/null; then
    echo "== [${SECONDS}s] latent against pixel space at 64x64, and peak memory per 32^3 and 64^3 volume =="
    "$PYTHON" benchmarks/latent_bench.py speed "${LATENT[@]}" --images "$LATENT_IMAGES" "${LPIPS[@]}"
    "$PYTHON" benchmarks/latent_bench.py memory "${LATENT[@]}"
  else
    echo "monai is not installed: the latent and 3D section is skipped (bash benchmarks/prepare_gpu_check.sh)"
  fi
  echo "== [${SECONDS}s] torchrun --nproc_per_node=${NPROC:-1}: both scripts on the tiny model =="
  "$PYTHON" benchmarks/torchrun_smoke.py --nproc "${NPROC:-1}"
  echo "== [${SECONDS}s] done =="
}

if [[ -n "${OUT:-}" ]]; then
  run_all 2>&1 | tee "$OUT/gpu_check.log"
else
  run_all
fi
