"""End to end: a small sweep, `mlflow ui` on loopback, and headless Chromium shows the sweep's runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import element_to_be_clickable
from selenium.webdriver.support.ui import WebDriverWait

from conftest import all_runs, free_port, run_py, stop_group, wait_for_health

CHROMIUM = Path("/usr/bin/chromium")  # Debian's packages: nothing is ever downloaded
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
NO_CHROMIUM = f"{', '.join(MISSING)} missing (make test-deps, or apt-get install chromium chromium-driver)"
# CI sets ARCHBENCH_STRICT and installs them, so there a missing browser fails instead of skipping
needs_chromium = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("ARCHBENCH_STRICT"), reason=NO_CHROMIUM
)
pytestmark = [pytest.mark.browser, needs_chromium]

CHROME_ARGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-quic --no-first-run"
    " --disable-background-networking --disable-component-update --disable-sync --window-size=1600,1000"
).split()


@pytest.fixture
def sweep(tmp_path):
    """The store after a two-job sweep: (tracking URI, experiment id, parent name, child names)."""
    result = run_py(tmp_path, "-m", "activation=relu,tanh")
    assert result.returncode == 0, result.stderr
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    children = sorted(r.info.run_name for r in runs if r is not parent)
    assert children == ["mlp-relu-sgd", "mlp-tanh-sgd"]
    return f"sqlite:///{tmp_path}/mlruns/mlflow.db", parent.info.experiment_id, parent.info.run_name, children


@pytest.fixture
def ui(sweep, tmp_path):
    """Base URL of `mlflow ui` serving the sweep's store; the server and its workers stop afterwards."""
    uri, port = sweep[0], free_port()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # one worker starts faster
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "mlflow-ui.log", "w") as log:
        # its own process group, so the uvicorn worker stops with it
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_health(url, server, timeout=60, log=tmp_path / "mlflow-ui.log")  # 7-15 s on 2 cores
            yield url
        finally:
            stop_group(server, grace=10)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if MISSING:
        pytest.fail(NO_CHROMIUM, pytrace=False)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_experiment_page_shows_the_sweeps_runs(browser, sweep, ui, tmp_path):  # browser first: fails fast
    _, experiment_id, parent, children = sweep
    # /runs: MLflow 3's bare experiment URL opens the GenAI overview, which lists no runs
    browser.get(f"{ui}/#/experiments/{experiment_id}/runs")
    wait = WebDriverWait(browser, 30)

    def shown(names):
        text = browser.find_element(By.TAG_NAME, "body").text
        return all(name in text for name in names)

    try:
        wait.until(lambda _: shown([parent]))
        if not shown(children):
            # children sit collapsed under the parent: its expander is the button in the same grid cell
            expander = f"//a[normalize-space()='{parent}']/ancestor::div[@role='gridcell'][1]//button"
            wait.until(element_to_be_clickable((By.XPATH, expander))).click()
        wait.until(lambda _: shown([parent, *children]))
    finally:
        browser.save_screenshot(str(tmp_path / "experiment-page.png"))
