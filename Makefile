# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned for reproducible installs; pip takes them from a local cache when it has one.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/resnet demo

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
