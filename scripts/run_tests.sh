#!/usr/bin/env bash
# The test command: the browser test's system package, then unit tests and nbval executing every
# notebook, on the fast profile.
set -uo pipefail
PY=${1:-.venv/bin/python}
export DREAMBOOTH_NB_FAST=1 GLOG_v=3 PYTHONUNBUFFERED=1
bash "$(dirname "$0")/browser_deps.sh" "$PY"
exec "$PY" -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
  --durations=20 -q -rs "${@:2}"
