"""The documentation: the README stays a front door, the configuration reference covers every key of
conf/, and the site builds with `mkdocs build --strict` (no broken link or anchor, no page missing from
the nav) and renders in headless Chromium. The pages' commands run in tests/test_readme.py."""

import functools
import http.server
import os
import re
import runpy
import subprocess
import sys
import threading

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import test_ui
from conftest import ROOT, patience
from test_readme import readme_commands

GENERATOR = ROOT / "docs" / "gen_config_reference.py"
REFERENCE = ROOT / "docs" / "configuration.md"
NEWCOMER = ("make run", "python run.py model=cnn3 -m activation=relu,tanh", "make compare", "make ui")


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "the README is the front door: the manual lives in docs/"
    shown = {c for s, c in readme_commands() if f"## {s}" in text}
    assert set(NEWCOMER) <= shown, set(NEWCOMER) - shown
    # GitHub shows the README without the site: its links go to the pages' files, which must exist
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), target


def test_the_configuration_reference_is_current():
    render = runpy.run_path(str(GENERATOR))["render"]
    assert REFERENCE.read_text() == render(), "conf/ changed: run python docs/gen_config_reference.py"


def keys(node, prefix=""):
    """Every key of a YAML mapping, dotted (`train.early_stopping.patience`), not into lists."""
    for key, value in node.items():
        yield prefix + str(key)
        if isinstance(value, dict):
            yield from keys(value, f"{prefix}{key}.")


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("conf/**/*.yaml")), ids=lambda p: p.relative_to(ROOT / "conf").as_posix()
)
def test_every_key_of_conf_is_in_the_reference(path):
    """Each file's keys in its own section of the page, as a user sets them (a group file's under its
    package: conf/model/mlp.yaml's `hidden_sizes` is `model.hidden_sizes`)."""
    relative = path.relative_to(ROOT).as_posix()
    page = REFERENCE.read_text()
    heading = next(h for h in re.findall(r"^#+ .*$", page, re.M) if f"({relative})" in h)
    section = page.split(heading, 1)[1].split("\n#", 1)[0]
    text = path.read_text()
    group = path.parent.relative_to(ROOT / "conf").parts
    prefix = "" if "@package _global_" in text or not group else ".".join(group) + "."
    missing = [k for k in keys(yaml.safe_load(text) or {}, prefix) if f"| `{k}` |" not in section]
    assert not missing, f"{relative}: not in docs/configuration.md: {missing}"


def test_make_help_lists_the_docs_target():
    done = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert re.search(r"make docs .*127\.0\.0\.1:8000 \(DOCS_PORT=", done.stdout), done.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `mkdocs build --strict` writes it, into a folder of the test's own."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2 off
        timeout=patience(120),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_strictly(site):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    for entry in nav:
        (page,) = entry.values()
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.exists(), page
    api = (site / "api" / "index.html").read_text()
    assert "archbench.api.sweep" in api, "mkdocstrings wrote no reference of the API"


browser = test_ui.browser  # the UI tests' headless Chromium: Debian's, never a downloaded one


@pytest.fixture
def served(site):
    """The built site on a loopback port, as a static server would serve it."""
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.browser
@test_ui.needs_chromium
def test_the_site_renders_in_chromium(served, browser):
    browser.get(f"{served}/")
    assert "archbench" in browser.title
    wait = WebDriverWait(browser, patience(30))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link"))
    links = browser.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link")
    titles = {a.get_attribute("textContent").strip() for a in links}
    assert {"Getting started", "Comparisons", "Results", "Configuration reference"} <= titles, titles
    # the nav leads to a page with charts, and every chart on it is drawn (loaded, with a size)
    next(a for a in links if a.get_attribute("textContent").strip() == "Results").click()
    wait.until(lambda b: b.current_url.rstrip("/").endswith("/results"))
    loaded = "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
    charts = ("activations.png", "architectures.png", "architectures-curves.png", "architectures-pareto.png")
    wait.until(lambda b: len(b.execute_script(loaded)) >= len(charts))
    drawn = [src.rsplit("/", 1)[1] for src in browser.execute_script(loaded)]
    assert set(charts) <= set(drawn), drawn
