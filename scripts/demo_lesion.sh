#!/usr/bin/env bash
# Where, measured, offline on a CPU (make demo-lesion): 64x64 axial slices of the MNI152 T1 template that
# nilearn's wheel ships are in-distribution; the same slices with dark discs in white matter
# (MNI152SlicesDark) and bright discs in grey matter (MNI152SlicesBright), each with its mask, and the grey
# and white matter maps (MNI152SlicesGM, MNI152SlicesWM: other contrasts) are out-of-distribution.
# Intensities are percentile-scaled (--intensity percentile), as MRI recipes do. The paper's detector and the
# partial-diffusion one (pDDPM / cDDPM) are measured; ood_detection.py prints the AUROC table and the
# localisation table (pixel AUPRC, best Dice, Dice at 5% of healthy voxels, beside the no-model baseline).
# No setting here was chosen on the lesion sets, but the training time: 25 minutes, one try after a 5-minute run
# scored poorly (README).
# About 45 minutes on 2 CPU cores. Every setting can be overridden from the environment; it ends with the time
# each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-demo_lesion_output}
data_root=$OUT/data
output_root=$OUT/models
TRAIN_MINUTES=${LESION_TRAIN_MINUTES:-25}  # 5 minutes gave 3 epochs here and found no bright lesion (README)
STEPS=${LESION_STEPS:-10}
N_EVAL=${LESION_N_EVAL:-48}
MODEL=mni152_slices
declare -a STAGES=()
stage_done() { STAGES+=("$1: $((SECONDS - STAGE_START)) s"); STAGE_START=$SECONDS; }
STAGE_START=$SECONDS
splits=$data_root/data_splits

echo "== datasets: MNI152 axial slices (64x64), two lesion sets with masks, two other contrasts =="
$PYTHON get_datasets.py --data_root="$data_root" --datasets MNI152Slices
stage_done "datasets"

echo "== a small DDPM for ${TRAIN_MINUTES} minutes =="
rm -rf "$output_root/$MODEL"  # each demo run trains afresh
$PYTHON train.py --output_dir="$output_root" --model_name="$MODEL" \
  --training_ids="$splits/MNI152Slices_train.csv" --validation_ids="$splits/MNI152Slices_val.csv" --is_grayscale=1 \
  --intensity=percentile --config_diffusion_file=src/configs/diffusion/diffusion_demo.yaml \
  --n_epochs=10000 --max_minutes="$TRAIN_MINUTES" --batch_size=${LESION_BATCH:-32} --eval_freq=10000 \
  --ema_decay=0.999 --num_sample_images=4
stage_done "DDPM training"

echo "== the paper's reconstructions (every start of a ${STEPS}-step grid) and partial diffusion, with maps =="
$PYTHON reconstruct.py --output_dir="$output_root" --model_name="$MODEL" \
  --validation_ids="$splits/MNI152Slices_val.csv" --in_ids="$splits/MNI152Slices_test.csv" \
  --out_ids="$splits/MNI152SlicesDark_test.csv,$splits/MNI152SlicesBright_test.csv,$splits/MNI152SlicesGM_test.csv,$splits/MNI152SlicesWM_test.csv" \
  --num_inference_steps="$STEPS" --inference_skip_factor=1 --first_n_val="$N_EVAL" --first_n="$N_EVAL" \
  --batch_size=16 --metrics=mse --save_maps="$N_EVAL" --detectors=${LESION_DETECTORS:-recon,partial}
stage_done "reconstruction"

echo "== scoring, and where: the localisation table =="
$PYTHON ood_detection.py --output_dir="$output_root" --model_name="$MODEL"
stage_done "scoring"
echo "== time per stage =="
printf '%s\n' "${STAGES[@]}"
echo "tables: $output_root/$MODEL/ood/summary_auroc.csv, localisation.csv; figures: $output_root/$MODEL/ood/figures/"
