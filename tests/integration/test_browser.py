"""A real browser opens the quickstart in JupyterLab, runs every cell, and sees its results.

JupyterLab is started on a free port of 127.0.0.1 with a token, in the smoke profile, and driven
by Playwright with the system's Chromium (Playwright's own browser download is not needed). The
server serves a scratch folder holding a copy of notebooks/00_quickstart.ipynb beside a link to
the repository's outputs/, so the notebook reads and writes ../outputs as it does in place while
the repository's notebook file is never saved over. The test checks that the poster figure and
the results table appear and that no cell ends in an error, and writes a screenshot of the
executed notebook to outputs/smoke/browser/quickstart.png. Deselect with `-m "not browser"`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from podd_lib.io import atomic_write_json

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.realdata, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "00_quickstart.ipynb"
SCREENSHOT = REPO / "outputs" / "smoke" / "browser" / "quickstart.png"
SERVER_START_S = 120
PAGE_LOAD_S = 120
RUN_ALL_S = 600
# The scratch folder's JupyterLab settings: no autosave, no news or update checks, every cell
# rendered (no windowing), so that the checks and the screenshot see the whole notebook.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
# The status bar reads "<kernel name> | Idle" once the page's kernel connection is up.
KERNEL_IDLE_JS = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
  .some(e => /\\| Idle$/.test(e.textContent.trim()))"""
# The first code cell is running, queued or done.
STARTED_JS = """() => {
  const p = document.querySelector('.jp-CodeCell .jp-InputArea-prompt');
  return p !== null && /^\\[(\\*|\\d+)\\]:$/.test(p.textContent.trim());
}"""
# True once Run All has finished: every code cell numbered, or a traceback on the page.
DONE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim());
  const traceback = [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.textContent.includes('Traceback'));
  return traceback || (prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t)));
}"""


def chromium_path() -> str | None:
    """The system Chromium: $PODD_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("PODD_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    """True when a GET of url answers 200 within 5 s."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def lab_root(tmp: Path) -> Path:
    """The scratch folder JupyterLab serves: notebooks/<copy of the quickstart>, outputs -> the repo's."""
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    (REPO / "outputs").mkdir(exist_ok=True)
    (root / "outputs").symlink_to(REPO / "outputs", target_is_directory=True)
    for name, value in LAB_SETTINGS.items():
        atomic_write_json(tmp / "settings" / name, value)
    return root


def server_env(tmp: Path, data_root: Path) -> dict:
    """The server's (and so its kernels') environment: smoke profile, the data, scratch Jupyter dirs."""
    env = dict(os.environ)
    env.update(
        PODD_PROFILE="smoke", PODD_DATA_ROOT=str(data_root), JUPYTER_PREFER_ENV_PATH="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        IPYTHONDIR=str(tmp / "ipython"),
    )
    return env


def stop(proc: subprocess.Popen, base: str) -> None:
    """Ask the server to shut down (it stops its kernels), then end its process group."""
    try:
        urllib.request.urlopen(urllib.request.Request(base, method="POST", data=b""), timeout=5).close()
        proc.wait(timeout=20)
    except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def jupyter_lab(tmp_path: Path, data_root: Path) -> Iterator[dict]:
    """A JupyterLab server on 127.0.0.1 serving lab_root; always shut down and killed afterwards."""
    root = lab_root(tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=server_env(tmp_path, data_root), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not http_ok(f"{base}/api/status?token={token}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (tmp_path / "lab.log").read_text(errors="replace")[-2000:]
                why = f"exited with status {proc.poll()}" if proc.poll() is not None else f"not up after {SERVER_START_S} s"
                pytest.fail(f"JupyterLab {why}; its log ends:\n{tail}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "log": tmp_path / "lab.log"}
    finally:
        stop(proc, f"{base}/api/shutdown?token={token}")
        log.close()


def click_run_all(page: Page, timeout_s: float) -> None:
    """Run > Run All Cells, once the command is enabled (it is not until the notebook is the current widget)."""
    page.locator(".jp-NotebookPanel .jp-Cell .jp-InputPrompt").first.click()
    deadline = time.monotonic() + timeout_s
    while True:
        page.click(".lm-MenuBar-item:has-text('Run')")
        item = page.locator(".lm-Menu-item[data-command='runmenu:run-all']")
        item.wait_for()
        if "lm-mod-disabled" not in (item.get_attribute("class") or ""):
            item.click()
            return
        page.keyboard.press("Escape")
        if time.monotonic() > deadline:
            pytest.fail(f"Run All Cells stayed disabled for {timeout_s:.0f} s")
        page.wait_for_timeout(1000)


def run_all_cells(page: Page, tries: int = 3, start_s: float = 60) -> None:
    """Run All once the kernel is connected; click again if the first code cell has not started after start_s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_function(KERNEL_IDLE_JS, polling=500)
    for _ in range(tries):
        click_run_all(page, start_s)
        try:
            page.wait_for_function(STARTED_JS, timeout=start_s * 1000, polling=500)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"Run All Cells did not start the first code cell in {tries} tries of {start_s:.0f} s")


def saved_outputs(path: Path, timeout_s: float = 60) -> list[dict]:
    """The code cells of the notebook file once it has been saved with outputs (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
            if cells and all(c.get("execution_count") for c in cells):
                return cells
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the notebook was not saved with every cell executed within {timeout_s:.0f} s")


def chromium() -> str:
    """The browser's path; without Playwright or a Chromium the test fails at once, saying what to install."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (or pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.fail("no Chromium found: install it (Debian/Ubuntu: apt-get install -y chromium) or set PODD_CHROMIUM")
    return path


def test_quickstart_runs_in_jupyterlab_in_a_real_browser(tmp_path: Path, cifar10_root: Path) -> None:
    executable = chromium()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with jupyter_lab(tmp_path, cifar10_root) as lab, sync_playwright() as pw:
        url = f"{lab['base']}/lab/tree/notebooks/{NOTEBOOK}?token={lab['token']}"
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(PAGE_LOAD_S * 1000)
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")
            run_all_cells(page)
            try:
                page.wait_for_function(DONE_JS, timeout=RUN_ALL_S * 1000, polling=1000)
            except PlaywrightTimeout:
                prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
                pytest.fail(f"the notebook did not finish within {RUN_ALL_S} s; cell prompts: {prompts}")

            tracebacks = page.locator(".jp-OutputArea-output", has_text="Traceback")
            assert tracebacks.count() == 0, "a cell failed in the browser:\n" + tracebacks.first.inner_text()[-1500:]
            poster_cell = page.locator(".jp-CodeCell", has_text="poster_figure(")
            assert poster_cell.locator(".jp-OutputArea-output img").first.is_visible(), "no poster figure shown"
            table = page.locator(".jp-RenderedMarkdown table", has_text="PoDD, soft labels")
            assert table.first.is_visible(), "no results table shown"
            assert "PoDD, hard labels (argmax)" in table.first.inner_text()

            page.keyboard.press("Control+s")
            cells = saved_outputs(lab["root"] / "notebooks" / NOTEBOOK)
            errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
            assert not errors, f"error output: {errors[0]['ename']}: {errors[0]['evalue']}"
            poster_out = [c for c in cells if "poster_figure(" in "".join(c["source"])][0]["outputs"]
            assert any("image/png" in o.get("data", {}) for o in poster_out)

            # The whole notebook in one picture: a viewport as tall as its content.
            height = page.evaluate("() => Math.max(...[...document.querySelectorAll('.jp-NotebookPanel-notebook, "
                                   ".jp-WindowedPanel-inner')].map(e => e.scrollHeight))")
            page.set_viewport_size({"width": 1280, "height": min(int(height) + 200, 12000)})
            page.evaluate("() => document.querySelectorAll('.jp-WindowedPanel-outer').forEach(e => { e.scrollTop = 0; })")
            page.wait_for_timeout(1000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.{os.getpid()}.tmp.png")
            page.screenshot(path=str(tmp))
            os.replace(tmp, SCREENSHOT)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
