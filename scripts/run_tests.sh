#!/usr/bin/env bash
# The test command: the browser test's system package, then the unit tests and nbval executing every notebook,
# on the fast profile. The two halves run side by side (most of their time is single-threaded graph compiling,
# so two processes share the two cores well); the unit tests keep their own cache folder, so that nothing the
# notebooks build is written by two processes at once. tests/test_sdxl.py runs after the notebooks, in their process,
# and tests/test_sdxl_lora.py with the unit tests, so that the two halves take about as long. When the browser test
# can run (Chromium and Playwright installed), it executes chapter 07 in JupyterLab and checks that no cell raised
# (the unit tests' half), so nbval leaves chapter 07 out; otherwise nbval executes it.
# Each half prints its 20 slowest items. Extra arguments (pytest options
# only: a path would run in both halves at once) go to both halves. The unit tests' cache folder,
# $DREAMBOOTH_NB_CACHE-unit-tests, is kept between runs like the main one.
set -uo pipefail
PY=${1:-.venv/bin/python}
export DREAMBOOTH_NB_FAST=1 GLOG_v=3 PYTHONUNBUFFERED=1
bash "$(dirname "$0")/browser_deps.sh" "$PY"
CACHE=${DREAMBOOTH_NB_CACHE:-$HOME/.cache/dreambooth_nb}
mkdir -p outputs
UNIT_LOG=outputs/unit-tests.log
AFTER_NOTEBOOKS=tests/test_sdxl.py
NBVAL_SKIPS=()
if [ -x /usr/bin/chromium ] && "$PY" -c "import playwright.sync_api" 2>/dev/null; then
  NBVAL_SKIPS=(--ignore=notebooks/07_playground.ipynb)
  echo "chapter 07 runs in tests/test_browser.py (JupyterLab + Chromium, every cell checked), not twice under nbval"
fi
start=$SECONDS
# its own process group (setsid), so that stopping the suite also stops what the unit tests started (training
# processes, the lab server, the browser)
DREAMBOOTH_NB_CACHE="$CACHE-unit-tests" setsid "$PY" -m pytest tests --ignore="$AFTER_NOTEBOOKS" --durations=20 -q -rs \
  "${@:2}" > "$UNIT_LOG" 2>&1 &
unit=$!
trap 'kill -TERM -- -$unit 2>/dev/null' EXIT
echo "unit tests running beside the notebooks (log: $UNIT_LOG); the notebooks' nbval and $AFTER_NOTEBOOKS follow live"
"$PY" -m pytest notebooks "${NBVAL_SKIPS[@]}" "$AFTER_NOTEBOOKS" --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --durations=20 -q -rs "${@:2}"
notebooks_rc=$?
echo "notebooks and $AFTER_NOTEBOOKS done after $((SECONDS - start)) s; waiting for the unit tests ..."
wait $unit
unit_rc=$?
trap - EXIT
echo "================================ unit tests ================================"
cat "$UNIT_LOG"
echo "suite: $((SECONDS - start)) s (notebooks and $AFTER_NOTEBOOKS exit $notebooks_rc, other unit tests exit $unit_rc)"
[ "$notebooks_rc" -eq 0 ] && [ "$unit_rc" -eq 0 ]
