# Quick start: `make demo`, then `make test`. Everything installs from this repo's own files.
PYTHON ?= python3
VENV := .venv
VENV_LS := .venv-ls
PY := $(VENV)/bin/python
LS_VERSION := 1.23.2

.PHONY: demo test test-fast bench venv venv-ls clean

# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Label Studio pins Django, its own SDK, rq and redis: it lives in a venv of its own.
$(VENV_LS)/.installed:
	$(PYTHON) -m venv $(VENV_LS)
	$(VENV_LS)/bin/python -m pip install -q --upgrade pip
	$(VENV_LS)/bin/python -m pip install -q label-studio==$(LS_VERSION)
	touch $@

# The project itself as a package (`wtd`, `wtd-backend`), built from this checkout, not editable: it is
# reinstalled when a source file changes. Its dependencies come from the lock above (--no-deps).
SOURCES := pyproject.toml $(shell find model backend -name '*.py' 2>/dev/null)
$(VENV)/.project: $(VENV)/.installed $(SOURCES)
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	rm -rf build
	touch $@

venv: $(VENV)/.installed $(VENV)/.project
venv-ls: $(VENV_LS)/.installed

demo: venv venv-ls
	$(PY) scripts/demo.py $(ARGS)

test: venv venv-ls
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not e2e"

bench: venv
	$(PY) bench/bench_selection.py
	$(PY) bench/bench_scoring.py

clean:
	rm -rf $(VENV) $(VENV_LS) var
