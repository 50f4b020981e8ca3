# Quickstart: `make run` (whole pipeline on the bundled sample) and `make test`.
# Both create .venv on first use; later calls reinstall only when the lock file changes.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint bench science ui compile clean images images-gpu

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (torch first, then the pinned lock)..."
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

run: setup
	$(BIN)/ecgssl pipeline repro
	$(BIN)/ecgssl summary outputs

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/text.py
	$(BIN)/python bench/measure.py
	$(BIN)/python bench/train.py

science: setup
	$(BIN)/python bench/science.py $(if $(DATA),--data $(DATA),--steps 20)

# The MLflow UI on the local store: `make ui`, or `make ui PORT=5001` when 5000 is taken.
PORT ?= 5000
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

# The checked-in pipeline YAMLs (a test fails when they are stale): one node and two nodes.
compile: setup
	$(BIN)/ecgssl pipeline compile
	$(BIN)/ecgssl pipeline compile --set pipeline.pretrain_nodes=2 \
		-o pipelines/compiled/ecgssl_pipeline_2nodes.yaml

# The images (docker/build.sh): docker when its daemon runs, else buildah (docker/install-engine.sh
# installs it, docker/local-base.sh makes the base image where no registry is reachable).
# TORCH_WHEELS=DIR builds torch from a wheel on disk instead of the PyTorch CPU index.
TORCH_WHEELS ?=
images:
	bash docker/build.sh $(if $(TORCH_WHEELS),--torch-wheels $(TORCH_WHEELS))

images-gpu:
	bash docker/build.sh --gpu

clean:
	rm -rf outputs .pytest_cache
