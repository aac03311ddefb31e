"""End to end: a small sweep, `mlflow ui` on loopback, and headless Chromium shows the sweep's runs."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import element_to_be_clickable
from selenium.webdriver.support.ui import WebDriverWait

from archbench.sweeps import lookup
from archbench.tracking import views
from conftest import all_runs, free_port, patience, run_py, stop_group, wait_for_health

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
    """The store after a two-configuration sweep over two seeds, and the two links it printed.

    ARCHBENCH_UI_STORE=sqlite:///… runs the same tests on the latest sweep of a real store instead:
    how the README's screenshots are made (the PNGs land in the tests' temporary folders).
    """
    real = os.environ.get("ARCHBENCH_UI_STORE")
    if real:
        return latest_sweep(real)
    tmp_path = tmp_path_factory.mktemp("sweep")
    result = run_py(tmp_path, "-m", "activation=relu,tanh", "seeds=2")
    assert result.returncode == 0, result.stderr
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("archbench.sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == [
        f"mlp-{a}-sgd-s{s}" for a in ("relu", "tanh") for s in (0, 1)
    ]
    (view,) = re.findall(r"in the MLflow UI \(make ui\): (\S+)", result.stdout)
    (page,) = re.findall(r"the comparison: (\S+)", result.stdout)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    return SimpleNamespace(uri=uri, parent=parent, children=children, view=view, page=page, store=None)


def latest_sweep(uri: str) -> SimpleNamespace:
    """The latest sweep of a store, with the links `make compare` prints for it (saving its view)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    comp, parent_id, experiment = lookup.find(client, None, None)
    parent = client.get_run(parent_id)
    children = [client.get_run(i) for i in comp.runs.run_id[comp.runs.status == "FINISHED"]]
    view, page = views.for_sweep(client, comp, parent_id, experiment), views.run_link(experiment, parent_id)
    return SimpleNamespace(uri=uri, parent=parent, children=children, view=view, page=page, store=comp)


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


def body(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def body_shows(browser, texts, timeout=30):
    WebDriverWait(browser, patience(timeout)).until(lambda _: all(t in body(browser) for t in texts))


def model_training_view(browser) -> None:
    """Not MLflow's GenAI view: its sidebar lists the model registry, and no judges or prompts."""
    text = body(browser)
    assert "Model registry" in text and not {"Judges", "Prompts"} & set(text.splitlines()), text[:600]


def served(link: str, ui: str) -> str:
    """A printed link (make ui's address) on the test's own server."""
    return link.replace(views.UI, ui)


def test_the_printed_link_shows_one_row_per_configuration(browser, sweep, ui, tmp_path):
    configs = {r.data.tags["configuration"]: [] for r in sweep.children}
    for r in sweep.children:
        configs[r.data.tags["configuration"]].append(r.data.metrics["test_accuracy"])
    browser.get(served(sweep.view, ui))
    try:
        body_shows(browser, [*(f"Group: {c}" for c in configs), "test_accuracy"])
        model_training_view(browser)
        assert not [r for r in sweep.children if r.info.run_name in body(browser)], "groups start folded"
        for config, values in configs.items():
            label = browser.find_element(By.XPATH, f"//*[normalize-space()='Group: {config}']")
            width = browser.execute_script(
                "return [arguments[0].scrollWidth, arguments[0].clientWidth]", label
            )
            assert width[0] <= width[1], f"the label is cut: {width}"  # readable as it stands
            index = label.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-index")
            # the grid keeps a row's pinned name cell and its scrolling metric cells in two elements
            row = " ".join(
                e.text for e in browser.find_elements(By.XPATH, f"//*[@role='row' and @row-index='{index}']")
            )
            shown = [float(x) for x in re.findall(r"\b0\.\d{3,}", row)]
            assert any(abs(x - sum(values) / len(values)) < 1e-3 for x in shown), row  # its mean accuracy
    finally:
        browser.save_screenshot(str(tmp_path / "runs-view.png"))


def test_a_run_opens_on_its_learning_curves(browser, sweep, ui, tmp_path):
    """Through the printed link, as the README says: MLflow 3.17 opens a clicked run in its GenAI view
    until told otherwise once per browser, with the "Model training" switch (which lands on the
    experiment's runs); after that click, every run page stays in the model-training view."""
    wait = WebDriverWait(browser, 30)

    def open_run(config: str, seed: str) -> None:
        browser.get(served(sweep.view, ui))
        row = f"//*[normalize-space()='Group: {config}']/ancestor::*[@role='gridcell'][1]"
        wait.until(element_to_be_clickable((By.XPATH, f"{row}//span[@role='button']"))).click()  # unfold
        name = next(
            r.info.run_name
            for r in sweep.children
            if r.data.params["seed"] == seed and r.data.tags["configuration"] == config
        )
        wait.until(element_to_be_clickable((By.LINK_TEXT, name))).click()
        body_shows(browser, ["Overview", name])

    config = sweep.children[0].data.tags["configuration"]
    try:
        open_run(config, "0")
        if "Judges" in body(browser).splitlines():  # the GenAI view, as MLflow 3.17 opens it at first
            browser.save_screenshot(str(tmp_path / "run-genai-first.png"))
            wait.until(element_to_be_clickable((By.XPATH, "//*[normalize-space()='Model training']"))).click()
            open_run(config, "0")  # the switch lands on the experiment's runs: open the run again
        body_shows(browser, ["Model metrics"])
        model_training_view(browser)
        open_run(config, "1")  # remembered: no click this time
        model_training_view(browser)
        wait.until(element_to_be_clickable((By.XPATH, "//*[normalize-space()='Model metrics']"))).click()
        body_shows(browser, ["params_total", "test_accuracy"])
        model_training_view(browser)
        metrics = set(sweep.children[0].data.metrics)
        charts = [line for line in body(browser).splitlines() if line in metrics]  # those drawn so far
        assert {"test_accuracy", "train_loss"} & set(charts[:6]), charts  # the first screen: 6 charts
        assert not [c for c in charts[:9] if c.startswith("zz_class_accuracy.")], charts  # they come last
    finally:
        browser.save_screenshot(str(tmp_path / "run-metrics.png"))


def test_the_parent_page_shows_the_comparison(browser, sweep, ui, tmp_path):
    note = sweep.parent.data.tags["mlflow.note.content"]
    title = note.splitlines()[0].strip("*")  # "sweep-…: synthetic, 1 epoch(s), 2 seeds per configuration"
    labels = re.findall(r"^- \*\*(.+?)\*\*: ", note, flags=re.M)  # the verdicts, a line each
    assert len(labels) == len({r.data.tags["configuration"] for r in sweep.children}) >= 2
    browser.get(served(sweep.page, ui))
    try:
        body_shows(browser, ["Description", title])
        model_training_view(browser)
        for more in browser.find_elements(By.CSS_SELECTOR, "[data-testid=show-comment-toggle]"):
            browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", more)
        body_shows(browser, [*labels, "vs best [simultaneous 95%]", "verdict"])
        rows = [line for line in body(browser).splitlines() if re.match(r"\d+ +\S+=", line)]
        assert len(rows) == len(labels) and all(re.search(r"\b0\.\d{4}\b", r) for r in rows), rows  # aligned
    finally:
        heading = browser.find_elements(By.XPATH, "//*[normalize-space()='Description']")
        if heading:  # the verdicts and the table, from the top
            browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading[0])
        browser.save_screenshot(str(tmp_path / "parent-run.png"))
