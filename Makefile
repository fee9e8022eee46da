# Two entry points: `make demo` and `make test`. Both create .venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean prometheus

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: 2.13.0 is the CPU build on local disk; an unpinned torch pulls a
	# multi-GB CUDA build. On a GPU host install the CUDA build of the same version.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamrec demo

test: $(STAMP) prometheus
	$(PY) -m pytest

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

lint: $(STAMP)
	$(VENV)/bin/ruff check streams model streamrec tests benchmarks

clean:
	rm -rf $(VENV) .cache
