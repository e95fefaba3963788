"""The playground notebook in a real browser: JupyterLab on loopback, Debian's Chromium driven by Playwright.

Needs /usr/bin/chromium and the `playwright` package (scripts/browser_deps.sh installs both); skipped
with the reason when either is missing. Screenshots go to outputs/browser/.

It runs every cell of chapter 07 and checks, in the notebook the lab saves, that each ran without an error (what
nbval checks), so `make test` leaves chapter 07 out of nbval when this test can run (scripts/run_tests.sh).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/07_playground.ipynb"
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "outputs" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a token and DREAMBOOTH_NB_FAST=1; sessions deleted at the end."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/browser_deps.sh (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: run scripts/browser_deps.sh")
    port, token = free_port(), secrets.token_hex(16)
    served = tmp_path / "lab"  # a copy: the lab autosaves outputs, the committed notebook must stay stripped
    (served / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / NOTEBOOK, served / NOTEBOOK)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the page
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(os.environ, DREAMBOOTH_NB_FAST="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    env.setdefault("DREAMBOOTH_NB_CACHE", str(Path.home() / ".cache" / "dreambooth_nb"))
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
           f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(cmd, cwd=served, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(base, token, server, tmp_path / "lab.log")
        yield base, token, served / NOTEBOOK
    finally:
        with_sessions_deleted(base, token)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_for_server(base: str, token: str, server, log_path: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            api(base, token, "/api/status")
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"JupyterLab did not answer on {base} within {timeout} s:\n{log_path.read_text()[-3000:]}")


def with_sessions_deleted(base: str, token: str) -> None:
    try:
        for session in api(base, token, "/api/sessions") or []:
            api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
    except OSError:
        pass


def wait_visible(page, selector: str, timeout_s: float, tries: int = 2):
    """Wait for a selector to be visible, retrying once (the lab sometimes re-renders outputs)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        try:
            page.locator(selector).first.wait_for(state="visible", timeout=timeout_s * 1000 / tries)
            return page.locator(selector).first
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
    return None


def restart_and_run_all(page) -> None:
    """The toolbar's 'Restart the kernel and run all cells' (notebook:restart-run-all), then accept the dialog."""
    button = page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:restart-run-all"]').first
    button.wait_for(state="visible", timeout=60_000)
    button.click()
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    accept.wait_for(state="visible", timeout=30_000)
    accept.click()
    accept.wait_for(state="detached", timeout=30_000)


def wait_for_idle_kernel(base: str, token: str, timeout_s: float = 120) -> None:
    """Until the lab's session for the notebook has a kernel that is idle (a restart clicked while it still starts
    was lost: no cell ran, and the test waited for output in vain)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(s.get("kernel", {}).get("execution_state") == "idle" for s in api(base, token, "/api/sessions") or []):
            return
        time.sleep(0.5)
    pytest.fail(f"the notebook's kernel was not idle within {timeout_s} s")


def saved_code_cells(page, path: Path, timeout_s: float = 60) -> list[dict]:
    """The toolbar's Save, then the notebook's code cells as written to disk (outputs and execution counts)."""
    before = path.stat().st_mtime_ns
    page.locator('.jp-NotebookPanel-toolbar [data-command="docmanager:save"]').first.click()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if path.stat().st_mtime_ns != before:
            try:  # the file may still be half written: read again until it parses
                return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
            except json.JSONDecodeError:
                pass
        time.sleep(0.5)
    pytest.fail(f"the lab did not save {path} within {timeout_s} s")


def run_all_until_started(page, tries: int = 3) -> None:
    """Restart and run all, again if after 30 s no cell is queued ([*]) or has output (a click lost while the lab
    was busy)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = ".jp-Notebook .jp-CodeCell .jp-InputPrompt:has-text('*'), .jp-Notebook .jp-CodeCell .jp-OutputArea-output"
    for attempt in range(tries):
        restart_and_run_all(page)
        try:
            page.locator(started).first.wait_for(state="visible", timeout=30_000)
            return
        except PlaywrightTimeout:
            page.screenshot(path=str(SHOTS / f"run_all_attempt_{attempt + 1}.png"))
            if attempt == tries - 1:
                raise


def test_playground_in_chromium(lab):
    from playwright.sync_api import sync_playwright

    base, token, saved = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            run_playground(page, f"{base}/lab/tree/{NOTEBOOK}?reset&token={token}",
                           kernel_idle=lambda: wait_for_idle_kernel(base, token), saved=saved)
        except Exception:
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def run_playground(page, url: str, kernel_idle, saved: Path) -> None:
    page.goto(url)
    wait_visible(page, ".jp-Notebook .jp-Cell", 60)
    wait_visible(page, ".jp-Notebook-ExecutionIndicator, .jp-KernelStatus, .jp-Toolbar", 60)
    kernel_idle()
    run_all_until_started(page)
    wait_visible(page, ".jp-OutputArea-output .widget-slider", 180)
    wait_visible(page, ".db-train-panel .jupyter-button", 60)
    assert page.locator(".db-train-panel .jupyter-button").count() == 3  # Train, Stop, Samples over steps
    wait_visible(page, ".db-generate-panel .jupyter-button", 180)
    assert page.locator(".db-generate-panel .jupyter-button").count() == 2  # Generate, Compare
    wait_visible(page, ".jp-Notebook .jp-Cell:last-child .jp-OutputArea-output img", 240)
    cells = saved_code_cells(page, saved)
    failed = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) for o in c["outputs"]
              if o["output_type"] == "error"]
    assert not failed, f"chapter 07's cells raised: {failed}"
    assert all(isinstance(c["execution_count"], int) for c in cells), [c["execution_count"] for c in cells]
    panel = page.locator(".db-train-panel")
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "01_run_all.png"))

    resolution = panel.locator(".widget-text", has_text="resolution").locator("input")
    resolution.fill("60")
    resolution.press("Enter")
    wait_visible(page, ".db-train-panel .widget-html:has-text('--resolution=60 must be a multiple of 8')", 30)
    resolution.fill("32")
    resolution.press("Enter")
    page.locator(".db-train-panel .widget-html:has-text('--resolution=60')").first.wait_for(state="detached", timeout=30_000)
    steps = panel.locator(".widget-slider", has_text="steps").locator(".widget-readout").first
    steps.click()
    steps.fill("4")
    steps.press("Enter")
    panel.locator(".jupyter-button", has_text="Train").click()
    wait_visible(page, "img.db-train-plot", 180)
    wait_visible(page, ".db-log tr:nth-child(3)", 120)  # header, the notebook's run, this run
    assert "4" in panel.locator(".db-log tr:nth-child(3)").inner_text()
    panel.screenshot(path=str(SHOTS / "02_trained.png"))

    gallery = page.locator(".db-generate-panel")
    gallery.scroll_into_view_if_needed()
    gallery.locator(".jupyter-button", has_text="Generate").click()
    wait_visible(page, ".db-generate-panel .widget-html:has-text('4 images')", 180)
    wait_visible(page, "img.db-gallery", 30)
    gallery.screenshot(path=str(SHOTS / "03_gallery.png"))

