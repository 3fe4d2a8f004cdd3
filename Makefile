# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned for reproducible installs; pip takes them from a local cache when it has one.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install data demo test test-slow bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Fashion-MNIST: already here, else Debian's dataset-fashion-mnist (root), else a checksummed download.
data: install
	$(BIN)/resnet data fashion-mnist

demo: data
	$(BIN)/resnet demo

# The tests write their own small files; with the real Fashion-MNIST present a few more run on it.
test: install
	$(BIN)/resnet data fashion-mnist || echo "make test: continuing without the real Fashion-MNIST files"
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
