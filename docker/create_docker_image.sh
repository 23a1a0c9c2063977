#!/usr/bin/env bash
# Build the image from the repository root: bash docker/create_docker_image.sh (or from docker/).
set -euo pipefail
cd "$(dirname "$0")/.."
docker build -f docker/Dockerfile -t ddpm-ood:latest .
echo "Run with: docker run --gpus all -it -v \${data_root}:/data -v \${output_root}:/output ddpm-ood:latest bash"
