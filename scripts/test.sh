#!/usr/bin/env bash
# Set up (idempotent), then lint and run the whole test suite (real models, real DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh run peaked at 9.6 GB: .venv 3, .venv-vllm 4.7, converted models 0.5 to 1.8, and the
# tests' checkpoints up to ~2 at a time in the temp dir. Warn (with some headroom) up front rather
# than fail mid-run on a full disk.
for dir in . "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 12 ]; then
    echo "test: warning: only ${free_gb} GB free on $(cd "$dir" && pwd) (a fresh run used up to 9.6 GB)" >&2
  fi
done
bash scripts/setup.sh
# The HTTP backend's tests run against a real llama.cpp server (once: it builds from source).
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  echo "test: installing llama-cpp-python[server] (builds from source, about 6 min, once)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[llamacpp]"
fi
# The web UI's tests drive Debian's Chromium through Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian's chromium for the web UI tests (once)"
    apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "test: warning: could not install chromium; tests/test_web_ui.py will fail" >&2
  else
    echo "test: warning: chromium is not installed (apt-get install chromium); tests/test_web_ui.py will fail" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
# The vLLM backend's tests need vLLM's own environment (.venv-vllm); a full run includes them.
if [ $# -eq 0 ] && [ "${DISTILL_DAG_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/test_vllm.sh
fi
