#!/usr/bin/env bash
# One short GPU check of part segmentation (device tool): the CUDA tests of tests/test_parts.py, then
# bench_parts.py on the GPU. The device image has torch but not open_clip; carry its wheels, made here once:
#   pip download --no-deps -d .wheels open_clip_torch==3.3.0 ftfy wcwidth
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-index .wheels/*.whl
python3 -m pip install -q --no-deps --no-build-isolation .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
repo=$(pwd)
cd /tmp  # the installed package, not the checkout's pointfalip/ (its configs/ live beside it)
python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_parts.py" -k "cuda or segmenter or registered"
PYTHONUNBUFFERED=1 python3 "$repo/bench/bench_parts.py" --device cuda --repeats 5
