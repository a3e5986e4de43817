#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (PyTorch present, no network):
# the CUDA tests of the model core and the adaptation benchmark on CUDA, results in $OUT.
# Each step has its own time limit, so one that hangs leaves the others' results.
#   bash bench/gpu_check.sh        (OUT defaults to ./gpu-results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
# The package as pyproject.toml maps it (limaml.adapters is ./adapters), without installing it
site=$(mktemp -d)
cp -r limaml "$site/limaml"
ln -s "$PWD/adapters" "$site/limaml/adapters"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/gpu.txt"
# -c /dev/null: the project's pytest settings name plugins (pytest-asyncio) not installed there;
# -P: the checkout's ./limaml (without its adapters) must not shadow the mapped package
timeout 180 python3 -P -m pytest -q -p no:cacheprovider -c /dev/null --rootdir . tests/test_model.py tests/test_adaptation.py \
  2>&1 | tee "$OUT/tests.txt"
timeout 180 python3 bench/adapt_throughput.py --json "$OUT/adapt_throughput.json" 2>&1 | tee "$OUT/adapt_throughput.txt"
timeout 240 python3 bench/adapt_throughput.py --members 65536 --naive-members 200 \
  --json "$OUT/adapt_throughput_65k.json" 2>&1 | tee "$OUT/adapt_throughput_65k.txt"
