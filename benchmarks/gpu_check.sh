#!/usr/bin/env bash
# One GPU check (~8 minutes on an H100/H200): training and reconstruction benchmarks at the
# paper's model size (171M-parameter UNet, 28x28, batch 180 / 64, 100 PLMS steps, skip 16),
# in fp32 eager and in bf16 + torch.compile, with FLOP/s as a share of the card's peak.
#
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh      # dense bf16 peak: H100 SXM / H200 989
#
# The device image has torch, torchvision, tensorboard and PyYAML but not omegaconf (a pure-Python
# wheel that needs only PyYAML). Before the device call, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0
# then carry ".whl"; the wheel is installed to /tmp/site below.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
PEAK=${PEAK_TFLOPS:-989}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== training, fp32 eager =="
python3 benchmarks/train_bench.py --setting paper --precision fp32 --steps 20 --flops --peak_tflops "$PEAK"
echo "== training, bf16 + compile =="
python3 benchmarks/train_bench.py --setting paper --precision bf16 --compile --steps 40 --flops --peak_tflops "$PEAK"
echo "== reconstruction, fp32 eager: fused vs sequential at batch 64, 7 starts =="
python3 benchmarks/reconstruct_bench.py --setting paper --precision fp32 --repeats 1 --flops --peak_tflops "$PEAK"
echo "== reconstruction, bf16 + compile (fused) =="
python3 benchmarks/reconstruct_bench.py --setting paper --precision bf16 --compile --repeats 2 --skip_sequential \
  --flops --peak_tflops "$PEAK"
