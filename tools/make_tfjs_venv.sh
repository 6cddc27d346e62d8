#!/usr/bin/env bash
# Create .venv-tfjs/, a separate Python environment holding tensorflowjs_converter.
#
# tensorflowjs 4.22 pins TensorFlow 2.19, numpy 2.1, protobuf 5 and jax, so it cannot share an
# environment with this project's TensorFlow 2.21. build.py --tfjs runs the converter from here;
# TF 2.19 reads the SavedModels that 2.21 writes. "ydf<0.16" keeps ydf's protobuf gencode in step
# with protobuf 5 (without it the converter dies on a gencode/runtime version mismatch).
#
#   bash tools/make_tfjs_venv.sh          # idempotent: an existing, working venv is kept
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tfjs
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/tensorflowjs_converter" ] && "$VENV/bin/python" -c "import tensorflowjs" 2>/dev/null; then
    echo "$VENV: tensorflowjs already installed"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "tensorflowjs==4.22.0" "ydf<0.16"
"$VENV/bin/python" -c "import tensorflowjs; print('$VENV: tensorflowjs', tensorflowjs.__version__)"
