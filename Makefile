# Two entry points: `make demo` and `make test`. Both create .venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every Python folder (the packages by layer, then tests and benchmarks).
SOURCES := streams corpus model experiments pipeline evaluation streamrec tests benchmarks

.PHONY: demo test test-fast lint clean prometheus chromium recbole-env

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: 2.13.0 is the CPU build on local disk; an unpinned torch pulls a
	# multi-GB CUDA build. On a GPU host install the CUDA build of the same version.
	$(PY) -m pip install -q torch==2.13.0
	# Every role's extras (stream side + model + eval + embedded broker) and the test
	# tools, at the versions the figures were made with (constraints.txt).
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamrec demo

# Both tiers: tests/unit (pure: no broker, no child process) and tests/integration
# (the real embedded broker, the dataflow and worker as processes, Prometheus, Chromium).
test: $(STAMP) prometheus chromium
	$(PY) -m pytest

# The unit tier alone, in under a minute: the loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit

# The dashboards' integration test queries a real Prometheus (Debian's package; it
# skips where the binary is missing and CI is unset, and fails where CI is set, so a
# non-root install failure is only a warning here). No recommends: they pull
# prometheus-node-exporter, whose service would take port 9100, the dataflow's
# metrics port. Where an init system starts the packaged service, stop and
# disable it so it does not hold port 9090; the test runs its own instance.
prometheus:
	command -v prometheus >/dev/null || ( \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus) \
	  || echo "warning: could not install prometheus (the dashboards' integration test skips, or fails under CI)"; \
	  if command -v prometheus >/dev/null; then \
	    invoke-rc.d prometheus stop >/dev/null 2>&1 || true; \
	    update-rc.d prometheus disable >/dev/null 2>&1 || true; \
	  fi )

# The live page's browser test (tests/integration/test_ui.py) drives Debian's Chromium through
# Debian's chromedriver (selenium is pointed at /usr/bin/chromedriver, so nothing is
# downloaded). Like prometheus: it skips where they are missing and CI is unset, and
# fails where CI is set, so a non-root install failure is only a warning here.
chromium:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || ( \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver) \
	  || echo "warning: could not install chromium (the page's browser test skips, or fails under CI)" )

# Optional: RecBole's GRU4Rec and SASRec as peers (benchmarks/recbole_peers.py) in an
# environment of their own, so recbole's pins never touch .venv. Torch is pinned for
# the same reason as above. streamrec goes in last and without its dependencies: the
# script needs only its loaders, protocols and metrics (numpy, pydantic, tqdm). The
# '*' .gitignore keeps the environment out of git.
RECBOLE_VENV  := .venv-recbole
RECBOLE_STAMP := $(RECBOLE_VENV)/.installed

$(RECBOLE_STAMP): pyproject.toml
	test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	echo '*' > $(RECBOLE_VENV)/.gitignore
	$(RECBOLE_VENV)/bin/python -m pip install -q --upgrade pip
	$(RECBOLE_VENV)/bin/python -m pip install -q torch==2.13.0
	$(RECBOLE_VENV)/bin/python -m pip install -q torch==2.13.0 recbole==1.2.1 pydantic tqdm
	$(RECBOLE_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(RECBOLE_STAMP)

recbole-env: $(RECBOLE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

clean:
	rm -rf $(VENV) .cache
