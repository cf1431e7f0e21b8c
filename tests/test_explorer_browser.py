"""The denoising explorer in a real browser: JupyterLab on loopback, headless Debian Chromium via
Playwright, Run All, then the step slider moved with the keyboard must change the rendered figure.

The test waits for Run All to finish (no cell queued or running), not for a fixed time: a cell that
raises fails the test at once with the notebook's traceback.

Screenshots go to runs/browser_test/. Skipped when /usr/bin/chromium is missing
(`apt-get install -y chromium`; .ci/run installs it).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = REPO / "notebooks" / "04_denoising_explorer.ipynb"
SCREENSHOTS = REPO / "runs" / "browser_test"
TOKEN = "workbench-browser-test"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def lab_notebook(folder: Path) -> Path:
    """The explorer notebook with a shorter training run (the browser, not the model, is under test)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "train_steps = 30" in params.source and "num_prompts = 4" in params.source
    params.source = params.source.replace("train_steps = 30", "train_steps = 10").replace("num_prompts = 4",
                                                                                          "num_prompts = 2")
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    # The setup cell looks for environments/colab_bootstrap.py in the notebook's folder and above, as
    # in a clone; the notebook runs from a scratch folder, so the checkout's copy is linked in.
    (folder / "environments").symlink_to(REPO / "environments", target_is_directory=True)
    return path


@pytest.fixture
def jupyterlab(tmp_path):
    pytest.importorskip("jupyterlab")
    root = tmp_path / "lab"
    root.mkdir()
    lab_notebook(root)
    env = dict(os.environ)
    for key, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
        env[key] = str(tmp_path / sub)
        (tmp_path / sub).mkdir()
    for name, values in SETTINGS.items():
        path = tmp_path / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    port = free_port()
    command = ["timeout", "600", sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--ServerApp.open_browser=False"]
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, 90, "JupyterLab's /api/status")
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def plot_state(page) -> dict:
    """The explorer figure as the browser holds it: its title and how many heatmap cells are filled."""
    return page.evaluate("""() => {
        const plot = document.querySelector('.jp-OutputArea-output .js-plotly-plot');
        const z = plot.data[0].z;
        let filled = 0;
        for (const row of z) for (const v of row) if (typeof v === 'number' && Number.isFinite(v)) filled += 1;
        return {title: plot.layout.title.text, filled: filled};
    }""")


def run_all_finished(page, timeout_ms: int = 480_000) -> None:
    """Wait until Run All has started and then no cell is queued or running; fail with the notebook's
    error output when a cell raised (Run All stops at the first error)."""
    prompts = "[...document.querySelectorAll('.jp-Cell .jp-InputPrompt')].map((p) => p.innerText.trim())"
    page.wait_for_function(f"() => {prompts}.some((t) => /\\[(\\*|\\d+)\\]/.test(t))", timeout=60_000)
    page.wait_for_function(f"() => {prompts}.some((t) => /\\[\\d+\\]/.test(t)) && "
                           f"!{prompts}.some((t) => t.includes('[*]'))", timeout=timeout_ms)
    last = page.evaluate(f"() => {prompts}.filter((t) => t.length > 0).at(-1)")
    if not re.search(r"\[\d+\]", last):  # Run All stopped before the last code cell: a cell raised
        stderr = page.evaluate("""() => [...document.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map((o) => o.innerText)""")
        raise AssertionError(f"Run All stopped before the last cell (its prompt reads {last!r}); the notebook's "
                             "error output:\n" + "\n".join(stderr)[-4000:])


def test_explorer_slider_changes_the_figure_in_jupyterlab(jupyterlab):
    playwright = pytest.importorskip("playwright.sync_api")
    base, tmp_path = jupyterlab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium"), executable_path=str(CHROMIUM),
                                                       headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1500, "height": 1700})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={TOKEN}")
            # The execution indicator reads idle before a kernel exists; wait for the status bar's kernel state.
            page.wait_for_function("""() => {
                const items = [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-Item')];
                const texts = items.map((item) => item.innerText.replace(/\\s+/g, ' ').trim());
                return texts.some((t) => t.endsWith('| Idle')) && !texts.some((t) => t.includes('No Kernel'));
            }""", timeout=120_000)
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
            run_all_finished(page)
            page.wait_for_selector(".jp-OutputArea-output .js-plotly-plot .main-svg", timeout=60_000)
            page.wait_for_function("() => document.querySelector('.jp-OutputArea-output .js-plotly-plot').layout"
                                   ".title.text.includes('step ')")
            before = plot_state(page)
            plot = page.locator(".jp-OutputArea-output .js-plotly-plot").first
            plot.scroll_into_view_if_needed()
            plot.screenshot(path=str(SCREENSHOTS / "explorer_before.png"))
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.focus()
            handle.press("ArrowLeft")  # the slider starts at the last step
            page.wait_for_function("(title) => document.querySelector('.jp-OutputArea-output .js-plotly-plot')"
                                   ".layout.title.text !== title", arg=before["title"], timeout=60_000)
            after = plot_state(page)
            plot.screenshot(path=str(SCREENSHOTS / "explorer_after.png"))
            handle.press("ArrowRight")
            page.wait_for_function("(title) => document.querySelector('.jp-OutputArea-output .js-plotly-plot')"
                                   ".layout.title.text === title", arg=before["title"], timeout=60_000)
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / "explorer_failure.png"), full_page=True)
            raise
        finally:
            context.close()
    steps = int(before["title"].split("step ")[1].split("/")[0])
    assert f"step {steps - 1}/{steps}" in after["title"]
    assert after["filled"] < before["filled"]  # one step fewer is shown

