#!/usr/bin/env bash
# Every detector in pixel and in latent space, side by side, at equal CPU training time (issue 25):
# FashionMNIST (the embedded subset) in-distribution, MNIST5k and Digits out-of-distribution.
#   pixel:  the demo's DDPM trained for MINUTES;
#   latent: a VQ-VAE for MINUTES/3, then the same UNet config on its 7x7x3 latents for 2*MINUTES/3.
# Both reconstruct N images of each set from every start of a 10-step grid (MSE + LPIPS in image
# space) and measure every other detector; the AUROC tables are printed one after the other.
#   MINUTES=12 N=150 bash benchmarks/latent_vs_pixel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench_output/latent_vs_pixel}
MINUTES=${MINUTES:-12}
N=${N:-150}
data=$OUT/data
splits=$data/data_splits
models=$OUT/models
$PYTHON get_datasets.py --data_root="$data" --datasets FashionMNIST MNIST5k Digits \
  --source_dir FashionMNIST=data/fashion_mnist_subset
rm -rf "$models"
common=(--training_ids="$splits/FashionMNIST_train.csv" --validation_ids="$splits/FashionMNIST_val.csv" --is_grayscale=1)
ddpm=(--config_diffusion_file=src/configs/diffusion/diffusion_demo.yaml --n_epochs=100000 --batch_size=64
      --eval_freq=100000 --ema_decay=0.999 --num_sample_images=0)
third=$(python3 -c "print($MINUTES / 3)")
$PYTHON train.py --output_dir="$models" --model_name=pixel "${common[@]}" "${ddpm[@]}" --max_minutes="$MINUTES"
$PYTHON train_vqvae.py --output_dir="$models" --model_name=vqvae "${common[@]}" --vqvae_num_channels=[32,64] \
  --vqvae_num_res_channels=[32,64] --vqvae_num_res_layers=1 --vqvae_embedding_dim=3 --vqvae_num_embeddings=128 \
  --batch_size=64 --n_epochs=100000 --eval_freq=100000 --max_minutes="$third"
$PYTHON train.py --output_dir="$models" --model_name=latent "${common[@]}" "${ddpm[@]}" \
  --vqvae_checkpoint="$models/vqvae" --max_minutes="$(python3 -c "print(2 * $MINUTES / 3)")"
for model in pixel latent; do
  start=$SECONDS
  $PYTHON reconstruct.py --output_dir="$models" --model_name=$model --validation_ids="$splits/FashionMNIST_val.csv" \
    --in_ids="$splits/FashionMNIST_test.csv" --out_ids="$splits/MNIST5k_test.csv,$splits/Digits_test.csv" \
    --num_inference_steps=10 --inference_skip_factor=1 --first_n_val="$N" --first_n="$N" --detectors=all
  echo "$model: reconstruction and detectors took $((SECONDS - start)) s"
  $PYTHON ood_detection.py --output_dir="$models" --model_name=$model
done
