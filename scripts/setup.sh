#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with oaml, its test tools and the onnx/mtcnn extras.
# torch is installed first and pinned, so that pip does not pull a multi-GB CUDA build onto a CPU machine;
# set TORCH_SPEC to choose another build (e.g. TORCH_SPEC="torch==2.5.1" with a CUDA index on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev,onnx]"
# MTCNN weights for `oaml align`; --no-deps because facenet-pytorch pins an old torch and torchvision
.venv/bin/python -m pip install --quiet --no-deps "facenet-pytorch>=2.5"
.venv/bin/python -c "import oaml, torch, lightning; print('oaml', oaml.__version__, '| torch', torch.__version__, '| lightning', lightning.__version__)"
