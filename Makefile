# Two entry points: `make demo` and `make test`. Both create .venv on first use
# and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

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

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check streams model streamrec tests benchmarks

clean:
	rm -rf $(VENV) .cache
