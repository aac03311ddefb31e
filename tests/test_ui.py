"""End to end: a small sweep, `mlflow ui` on loopback, and headless Chromium shows the sweep's runs."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.expected_conditions import element_to_be_clickable
from selenium.webdriver.support.ui import WebDriverWait

from archbench.compare import report
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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The store after a two-configuration sweep over two seeds."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    result = run_py(tmp_path, "-m", "activation=relu,tanh", "seeds=2", "dataset.train_size=500")
    assert result.returncode == 0, result.stderr
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == ["mlp-relu-sgd"] * 2 + ["mlp-tanh-sgd"] * 2
    return SimpleNamespace(
        uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        experiment_id=parent.info.experiment_id,
        parent=parent,
        children=children,
    )


@pytest.fixture(scope="module")
def ui(sweep, tmp_path_factory):
    """Base URL of `mlflow ui` serving the sweep's store; the server and its workers stop afterwards."""
    uri, port, tmp_path = sweep.uri, free_port(), tmp_path_factory.mktemp("ui")
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


def body_shows(browser, texts, timeout=30):
    def shown(_):
        body = browser.find_element(By.TAG_NAME, "body").text
        return all(t in body for t in texts)

    WebDriverWait(browser, timeout).until(shown)


def test_experiment_page_shows_the_sweeps_runs(browser, sweep, ui, tmp_path):  # browser first: fails fast
    parent = sweep.parent.info.run_name
    children = sorted({r.info.run_name for r in sweep.children})
    # /runs: MLflow 3's bare experiment URL opens the GenAI overview, which lists no runs
    browser.get(f"{ui}/#/experiments/{sweep.experiment_id}/runs")
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        body_shows(browser, [parent])
        if not all(name in body() for name in children):
            # children sit collapsed under the parent: its expander is the button in the same grid cell
            expander = f"//a[normalize-space()='{parent}']/ancestor::div[@role='gridcell'][1]//button"
            WebDriverWait(browser, 30).until(element_to_be_clickable((By.XPATH, expander))).click()
        body_shows(browser, [parent, *children])
    finally:
        browser.save_screenshot(str(tmp_path / "experiment-page.png"))


def test_parent_run_describes_the_comparison(browser, sweep, ui, tmp_path):
    # the comparison, verdicts included, is the parent run's description on its Overview; the link is
    # the one archbench prints (MLflow 3.17 opens in GenAI mode unless the URL asks for model training)
    browser.get(f"{ui}/#/experiments/{sweep.experiment_id}/runs/{sweep.parent.info.run_id}{report.UI_MODE}")
    try:
        body_shows(browser, ["Description", "synthetic, 1 epochs, 2 seeds per configuration", "95% CI"])
        more = browser.find_elements(By.XPATH, "//*[normalize-space()='Show more']")
        if more:  # a long description is folded
            browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", more[0])
        rows = [f"| {i} | activation=" for i in (1, 2)]
        body_shows(browser, ["activation=relu", "activation=tanh", "best", "not resolved with 2 seeds"])
        assert all(r in sweep.parent.data.tags["mlflow.note.content"] for r in rows)
        assert "No description" not in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.save_screenshot(str(tmp_path / "parent-run.png"))


def test_runs_group_by_configuration(browser, sweep, ui, tmp_path):
    # every job run carries its configuration (overrides minus seed): the runs table's "Group by" on that
    # tag gives one group per configuration, its seeds inside
    configs = {r.data.tags["configuration"] for r in sweep.children}
    assert len(configs) == 2 and not any("seed=" in c for c in configs)
    browser.get(f"{ui}/#/experiments/{sweep.experiment_id}/runs{report.UI_MODE}")
    wait = WebDriverWait(browser, 30)
    try:
        group_by = "//button[contains(normalize-space(), 'Group by')]"
        wait.until(element_to_be_clickable((By.XPATH, group_by))).click()
        tag = "//*[@role='menuitemcheckbox' and normalize-space()='configuration']"
        wait.until(element_to_be_clickable((By.XPATH, tag))).click()
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        body_shows(browser, ["Group by: configuration", *(f"Group: {c}" for c in configs)])
        text = browser.find_element(By.TAG_NAME, "body").text
        assert all(f"Group: {c}\n2" in text for c in configs), text  # two seeds in each
    finally:
        browser.save_screenshot(str(tmp_path / "group-by.png"))
