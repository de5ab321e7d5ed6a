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
	@echo "installing SkyEdge and its extras into $(VENV) (about a minute from pip's cache; the first time it downloads about 830 MB)"
	@# pip says nothing while it unpacks TensorFlow and the rest (about 40 s): a line every 20 s meanwhile
	@( while sleep 20; do echo "  ... pip is still installing"; done ) & beat=$$!; \
	$(PY) -m pip install --progress-bar off -e ".[all]"; status=$$?; kill $$beat; exit $$status
	touch $@

# every command hides TensorFlow's own chatter unless given --verbose
demo: $(VENV)/.installed
	$(PY) -m train.data sample --out $(DEMO)/data
	$(PY) -m train.sweep --data $(DEMO)/data --backbones mobilenetv2,densenet121 --levels 0,10,30 \
		--epochs 8 --img-size 64 --weights none --out $(DEMO)/sweep
	$(PY) -m export.tflite --runs $(DEMO)/sweep --out $(DEMO)/exports --variants fp32,int8
	$(PY) -m export.onnx --runs $(DEMO)/sweep --out $(DEMO)/exports
	$(VENV)/bin/bench run --models $(DEMO)/exports --threads 1 --runs 100 --min-secs 1 --resume \
		--device-name this-machine --out $(DEMO)/bench/this-machine.jsonl
	$(VENV)/bin/bench floors --data $(DEMO)/data --out $(DEMO)/bench/floors.json
	$(VENV)/bin/bench report --runs $(DEMO)/sweep --exports $(DEMO)/exports \
		--results $(DEMO)/bench/this-machine.jsonl --floors $(DEMO)/bench/floors.json --out $(DEMO)/report

# two workers (up to four where there are more cores), a test file per worker at a time so
# that its module fixtures are built once; the 20 slowest tests listed at the end
test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" -n auto --maxprocesses 4 --dist loadfile --durations=20

test-all: $(VENV)/.installed
	$(PY) -m pytest

clean-demo:
	rm -rf $(DEMO)
