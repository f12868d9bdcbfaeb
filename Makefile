# The single source of truth for set-up, lint, test, demo and bench.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# `make setup CUDA=1` adds the NVIDIA runtime wheels (the cuda extra) for onnxruntime-gpu.
CUDA   ?=
COMMA  := ,
EXTRAS := $(if $(CUDA),dev$(COMMA)cuda,dev)
STAMP  := $(VENV)/.installed$(if $(CUDA),-cuda)

.PHONY: setup lint test unit integration faults demo bench broker-jars clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# Fetch (once, cached under ~/.cache/scanstream) the Apache Kafka broker jars from Maven Central.
broker-jars: setup
	$(PY) -m worker.cli broker fetch

lint: setup
	$(VENV)/bin/ruff check worker tests
	$(VENV)/bin/ruff format --check worker tests
	$(VENV)/bin/mypy

test: lint broker-jars
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

demo: setup broker-jars
	$(VENV)/bin/scanstream demo

bench: setup broker-jars
	$(VENV)/bin/scanstream bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
