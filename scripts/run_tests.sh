#!/usr/bin/env bash
# The test command: unit tests, then nbval executing every notebook, on the fast profile.
set -uo pipefail
PY=${1:-.venv/bin/python}
export DREAMBOOTH_NB_FAST=1 GLOG_v=3 PYTHONUNBUFFERED=1
exec "$PY" -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
  --durations=15 -q -rs "${@:2}"
