#!/usr/bin/env bash
# Set up (idempotent), then materialize every asset of the DAG on the embedded default config.
# Extra arguments go to `distill-dag materialize` (e.g. --config my.yaml --home /data/run1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/distill-dag materialize "$@"
