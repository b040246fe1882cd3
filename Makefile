# light_rcnn: `make demo` and `make test` install what they need on first use (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
# Where generated data, checkpoints and benchmark outputs go (outside git).
export LIGHT_RCNN_CACHE ?= $(HOME)/.cache/light_rcnn

.PHONY: setup test demo clean-venv

setup:
	@VENV=$(VENV) PYTHON=$(PYTHON) bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
