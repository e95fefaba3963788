#!/usr/bin/env bash
# Create the virtual environment (if missing) and install dreambooth-nb with its pinned stack.
# Usage: scripts/bootstrap.sh PYTHON VENV. Prints one clear line and exits non-zero on any failure.
set -uo pipefail
PYTHON=${1:-python3.11}
VENV=${2:-.venv}
NEED_MB=4500
LOG="$VENV.install.log"

fail() { echo "error: $1" >&2; [ -n "${2:-}" ] && echo "       $2" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON was not found." \
    "Install Python 3.11 (e.g. 'pyenv install 3.11' or your OS package), or run: make PYTHON=/path/to/python3.11 ..."
  version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || fail "$PYTHON does not run."
  case "$version" in
    3.10|3.11) ;;
    *) fail "$PYTHON is Python $version; MindSpore 2.7.1 has wheels for Python 3.10 and 3.11 (3.11 is tested)." \
         "Run: make PYTHON=/path/to/python3.11 ...";;
  esac
  parent=$(dirname "$(realpath -m "$VENV")")
  free_mb=$(df -Pm "$parent" 2>/dev/null | awk 'NR==2 {print $4}')
  if [ -n "$free_mb" ] && [ "$free_mb" -lt "$NEED_MB" ]; then
    fail "only ${free_mb} MB free in $parent; the environment needs about ${NEED_MB} MB." \
      "Free some disk space, or put the environment elsewhere: make VENV=/bigger/disk/venv ..."
  fi
  echo "creating $VENV with $PYTHON (Python $version) ..."
  "$PYTHON" -m venv "$VENV" || fail "could not create the virtual environment $VENV." \
    "On Debian/Ubuntu install the venv module: apt-get install python3.11-venv"
fi

echo "installing dreambooth-nb and its pinned dependencies into $VENV (about 2 minutes; log: $LOG) ..."
{
  "$VENV/bin/python" -m pip install --upgrade pip &&
  "$VENV/bin/python" -m pip install -e ".[test]"
} >"$LOG" 2>&1 || {
  tail -n 5 "$LOG" >&2
  if grep -qi "no space left" "$LOG"; then
    fail "the disk filled up while installing." "Free some space and run the command again."
  fi
  fail "installing the dependencies failed (see the lines above and $LOG)." \
    "Check that PyPI is reachable (pip install needs it once), then run the command again."
}
"$VENV/bin/python" -m pip check >>"$LOG" 2>&1 || fail "the installed packages conflict (pip check failed; see $LOG)."
touch "$VENV/.dreambooth-nb-installed"
echo "environment ready: $VENV"
