#!/usr/bin/env bash
# Wheels for the packages the workbench imports that the device image (nvidia-h200, 'cuda')
# lacks: datasets (imported by workbench.data) with dill and multiprocess, and plotly
# (decode_speed's figure). Everything else it needs is there (/work/.library/device/KINDS.md).
# Writes .whl/ in the checkout's root (git-ignored); the device command installs them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# (see workbench/benchmarks/device_suite.py). Versions: pyproject.toml's pins, and the
# versions datasets 5.2.0 accepts for dill (<0.4.2) and multiprocess (<0.70.20).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0)
rm -rf .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PACKAGES[@]}"
du -ch .whl/*.whl
