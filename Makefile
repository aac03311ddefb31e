# archbench — `make help` lists every target. Each one sets up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# pytest-xdist workers: one per core. A test is mostly single-threaded start-up (Python, torch, MLflow)
# or a wait on a server, so two side by side on 2 cores take little longer than one. A test file runs
# on one worker (--dist loadfile), so its module fixtures run once
WORKERS ?= auto
HOST ?= 127.0.0.1
PORT ?= 5000
NB_PORT ?= 8888
DOCS_PORT ?= 8000
TRACKING_URI ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///mlruns/mlflow.db)
FASHION := /usr/share/datasets/fashion-mnist
AS_ROOT := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo yes)

.DEFAULT_GOAL := help
.PHONY: help install data run sweep-activations sweep-architectures search compare ui server notebook \
        docs bench bench-overhead bench-throughput test test-fast test-deps lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

install: $(STAMP) data ## set up .venv (pip, pinned torch) and Fashion-MNIST

# pip, not uv or poetry: pip takes torch and torchvision from this machine's disk
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,cluster,search,server,notebook,docs]'
	@# the notebook's kernel, in the venv itself (.venv/share/jupyter): this venv's python, whatever else
	@# a user's own Jupyter folders hold under the name python3
	$(PY) -m ipykernel install --sys-prefix --name archbench --display-name "archbench (.venv)" >/dev/null
	touch $@

data: ## Fashion-MNIST from Debian's dataset-fashion-mnist (installed when run as root)
	@if [ -d $(FASHION) ] || [ -d data/FashionMNIST/raw ]; then echo "Fashion-MNIST: found"; \
	elif [ -n "$(AS_ROOT)" ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	  echo "Fashion-MNIST: installed in $(FASHION)"; \
	else echo "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist," \
	  "or copy its four IDX .gz files into data/FashionMNIST/raw/"; fi

run: install ## train one network, or sweep with -m: make run ARGS="model=cnn3 -m activation=relu,tanh"
	$(PY) run.py $(ARGS)

sweep-activations: install ## the course's ReLU/Tanh/Sigmoid comparison (mlp, 5 epochs)
	$(PY) run.py +experiment=activations $(ARGS)

sweep-architectures: install ## mlp, mlp_deep, cnn1, cnn2, cnn3 with ReLU
	$(PY) run.py +experiment=architectures $(ARGS)

search: install ## Optuna search of lr and batch size on a validation split: ARGS="model=cnn2"
	$(PY) run.py +search=lr_batch $(ARGS)

compare: install ## the latest sweep's comparison table and chart: ARGS="--parent RUN_ID"
	$(PY) -m archbench.report --tracking-uri '$(TRACKING_URI)' $(ARGS)

ui: install ## the MLflow UI on http://127.0.0.1:5000 (PORT=..., HOST=0.0.0.0 to share it)
	$(PY) -m mlflow ui --backend-store-uri '$(TRACKING_URI)' --host $(HOST) --port $(PORT)

server: install ## a team MLflow server (basic-auth, PostgreSQL); needs ARCHBENCH_ADMIN_PASSWORD: docs/scaling.md
	$(PY) -m archbench.server --host $(HOST) --port $(PORT) $(ARGS)

notebook: install ## JupyterLab on notebooks/ (course.ipynb) at http://127.0.0.1:8888, the venv's kernel (NB_PORT=...)
	$(PY) -m jupyter lab --notebook-dir=notebooks --ServerApp.ip=$(HOST) --ServerApp.port=$(NB_PORT) \
	  --ServerApp.port_retries=0 --ServerApp.open_browser=False $(if $(AS_ROOT),--ServerApp.allow_root=True)

# loopback only; rebuilt on every edit of docs/. NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2
# would fill the terminal at each start. tests/test_docs.py builds the site with --strict
docs: install ## the documentation site (docs/, mkdocs.yml) on http://127.0.0.1:8000 (DOCS_PORT=...)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

bench: install ## epoch speed: textbook loop vs archbench, side by side
	$(PY) benchmarks/epoch_speed.py $(ARGS)

bench-overhead: install ## one run's cost besides training: against a plain script, imports, profile
	$(PY) benchmarks/overhead.py $(ARGS)

bench-throughput: install ## sweeps: side by side against one at a time, alone and beside neighbours
	$(PY) benchmarks/throughput.py $(ARGS)

test-deps: ## Chromium, PostgreSQL and Slurm for the end-to-end tests (installed when run as root)
	@missing=""; command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ] || missing="chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] || missing="$$missing slurm-wlm munge"; \
	if [ -z "$$missing" ]; then echo "test tools: found"; \
	elif [ -n "$(AS_ROOT)" ]; then \
	  apt-get install -y -q $$missing >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null); \
	  echo "test tools: installed $$missing"; \
	else echo "missing $$missing: the browser, PostgreSQL and Slurm tests will skip"; fi

test: install test-deps ## every test, end-to-end ones included (WORKERS=1: one at a time)
	$(PY) -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

test-fast: install ## the quick tests only (no browser, server, Slurm or real-data sweeps)
	$(PY) -m pytest -n $(WORKERS) --dist loadfile -m "not slow and not browser and not postgres and not slurm" $(ARGS)

lint: install ## ruff, and import-linter's layers (pyproject.toml)
	$(PY) -m ruff check src tests benchmarks run.py
	$(VENV)/bin/lint-imports --no-cache

clean: ## remove outputs/ (the MLflow store in mlruns/ is kept)
	rm -rf outputs .pytest_cache
