# The two commands of the README: `make demo` (the main job, offline) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick install lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in default: JNF on polymnist-lite, offline. The quick protocol
# (labelled in the record) keeps the CPU evaluation to minutes; joint coherence draws z from a
# Gaussian mixture fitted to the training embeddings (see README, Latent samplers).
# THREADS=auto: training keeps the faster of 1 thread and every core, re-measured every 30 s
# (both cores while the machine is quiet, 1 as soon as another job runs; README, Threads).
# THREADS=N fixes the count.
THREADS ?= auto
demo: $(STAMP)
	$(BIN)/mmvae-bench run jnf --dataset polymnist-lite --quick --sampler gmm --out runs/demo \
		--threads $(THREADS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check mmvae_bench plugins tests benchmarks
	$(BIN)/ruff format --check mmvae_bench plugins tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
