# SkyEdge: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both create the virtual environment (.venv) with every extra on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: demo test test-all clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m train.data synth --out $(DEMO)/data --n 600 --size 64 --seed 0
	$(PY) -m train.data stats $(DEMO)/data

test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

test-all: $(VENV)/.installed
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO)
