#!/usr/bin/env bash
# The method on volumes, offline, on a CPU (make demo3d): 32^3 volumes made from the MNI152 T1
# template that nilearn's wheel ships are in-distribution; the same volumes with a bright ball
# (MNI152Lesion) and the grey and white matter maps (MNI152GM, MNI152WM) are out-of-distribution.
# DEMO3D_SPACE=latent (default) trains a 3D VQ-VAE first and the DDPM on its 8^3 latents, as the
# authors' MICCAI 2023 paper; DEMO3D_SPACE=pixel trains the DDPM on the volumes themselves (its
# reconstruction costs about 6.7 s per 32^3 volume here against 0.25 s in latent space,
# benchmarks/latent_bench.py: with DEMO3D_N_EVAL=24 about 13 minutes more).
# In pixel space training and reconstruction run --channels_last (channels_last_3d: a step on 32^3 volumes 1.24x
# faster on a 2-core AVX2 CPU, benchmarks/train_bench.py --setting cpu_3d; not measured on the 8^3 latents, and
# slower in 2D there, so the latent and 2D demos do not).
# Every setting can be overridden from the environment; it ends with the time each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-demo3d_output}
data_root=$OUT/data
output_root=$OUT/models
SPACE=${DEMO3D_SPACE:-latent}
VQVAE_MINUTES=${DEMO3D_VQVAE_MINUTES:-2}
TRAIN_MINUTES=${DEMO3D_TRAIN_MINUTES:-3}
STEPS=${DEMO3D_STEPS:-10}
N_EVAL=${DEMO3D_N_EVAL:-24}
MODEL=mni152_${SPACE}
layout=()
if [[ "$SPACE" == pixel ]]; then layout=(--channels_last); fi
declare -a STAGES=()
stage_done() { STAGES+=("$1: $((SECONDS - STAGE_START)) s"); STAGE_START=$SECONDS; }
STAGE_START=$SECONDS
splits=$data_root/data_splits

echo "== datasets: MNI152 volumes (32^3) and three OOD sets, from nilearn's wheel =="
$PYTHON get_datasets.py --data_root="$data_root" --datasets MNI152
stage_done "datasets"

rm -rf "$output_root/$MODEL" "$output_root/${MODEL}_vqvae"  # each demo run trains afresh
latent=()
if [[ "$SPACE" == latent ]]; then
  echo "== a 3D VQ-VAE for ${VQVAE_MINUTES} minutes =="
  $PYTHON train_vqvae.py --output_dir="$output_root" --model_name="${MODEL}_vqvae" \
    --training_ids="$splits/MNI152_train.csv" --validation_ids="$splits/MNI152_val.csv" --is_grayscale=1 \
    --spatial_dimension=3 --vqvae_num_channels=[16,32] --vqvae_num_res_channels=[16,32] --vqvae_num_res_layers=1 \
    --vqvae_num_embeddings=64 --vqvae_embedding_dim=3 --batch_size=8 --n_epochs=1000 --eval_freq=1000 \
    --max_minutes="$VQVAE_MINUTES" ${DEMO3D_VQVAE_FLAGS:-}
  latent=(--vqvae_checkpoint="$output_root/${MODEL}_vqvae")
  stage_done "first stage"
fi

echo "== a small 3D DDPM (${SPACE} space) for ${TRAIN_MINUTES} minutes =="
$PYTHON train.py --output_dir="$output_root" --model_name="$MODEL" \
  --training_ids="$splits/MNI152_train.csv" --validation_ids="$splits/MNI152_val.csv" --is_grayscale=1 \
  --spatial_dimension=3 --config_diffusion_file=src/configs/diffusion/diffusion_3d_demo.yaml "${latent[@]}" \
  --n_epochs=10000 --max_minutes="$TRAIN_MINUTES" --batch_size=${DEMO3D_BATCH:-16} --eval_freq=10000 \
  --ema_decay=0.999 --num_sample_images=4 "${layout[@]}"
stage_done "DDPM training"

echo "== reconstructing from every start of a ${STEPS}-step grid (MSE and slice-wise LPIPS) =="
$PYTHON reconstruct.py --output_dir="$output_root" --model_name="$MODEL" \
  --validation_ids="$splits/MNI152_val.csv" --in_ids="$splits/MNI152_test.csv" \
  --out_ids="$splits/MNI152Lesion_test.csv,$splits/MNI152GM_test.csv,$splits/MNI152WM_test.csv" \
  --num_inference_steps="$STEPS" --inference_skip_factor=1 --first_n_val="$N_EVAL" --first_n="$N_EVAL" \
  --batch_size=8 --save_examples=4 --save_maps=${DEMO3D_MAPS:-8} --detectors=${DEMO3D_DETECTORS:-recon} "${layout[@]}"
stage_done "reconstruction"

echo "== scoring =="
$PYTHON ood_detection.py --output_dir="$output_root" --model_name="$MODEL"
stage_done "scoring"
echo "== time per stage =="
printf '%s\n' "${STAGES[@]}"
echo "figures: $output_root/$MODEL/ood/figures/"
