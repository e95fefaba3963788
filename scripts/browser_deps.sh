#!/usr/bin/env bash
# Install what tests/test_browser.py needs: Debian's Chromium and the Playwright Python package.
# Usage: scripts/browser_deps.sh [path/to/venv/bin/python]   (default: .venv/bin/python)
# Playwright's own browser download is never used: the test drives /usr/bin/chromium.
set -u
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"
PLAYWRIGHT_VERSION=$(sed -n 's/.*"playwright==\([^"]*\)".*/\1/p' pyproject.toml)

if [ -x /usr/bin/chromium ]; then
    echo "chromium: found /usr/bin/chromium"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi  # never wait for a password
    if $SUDO apt-get install -y -q chromium >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }; then
        echo "chromium: installed"
    else
        echo "chromium: could not be installed (apt-get failed); tests/test_browser.py will be skipped" >&2
    fi
fi

if "$PYTHON" -c "import playwright, importlib.metadata as m; assert m.version('playwright') == '$PLAYWRIGHT_VERSION'" 2>/dev/null; then
    echo "playwright: $PLAYWRIGHT_VERSION already installed"
elif "$PYTHON" -m pip install "playwright==$PLAYWRIGHT_VERSION"; then
    echo "playwright: $PLAYWRIGHT_VERSION installed (no browser download: the test uses /usr/bin/chromium)"
else
    echo "playwright: pip install failed; tests/test_browser.py will be skipped" >&2
fi
exit 0
