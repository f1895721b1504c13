#!/usr/bin/env bash
# One short GPU run (device tool): ModelNet40-sized synthetic input, one config and --compare, fp16/bf16.
# The device image has torch but not open_clip; carry its wheels, made here once:
#   pip download --no-deps -d .wheels open_clip_torch==3.3.0 ftfy wcwidth && echo /.wheels/ >> .git/info/exclude
# then run this script with carry [".wheels"]. Target: a full --compare pass in under 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-index .wheels/*.whl
python3 -m pip install -q --no-deps --no-build-isolation .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
repo=$(pwd)
cd /tmp  # the installed package (its presets are package resources), not the checkout
PYTHONUNBUFFERED=1 python3 "$repo/bench/bench_gpu.py" --device cuda --objects 2468 --batch 64 --precision fp16 bf16
