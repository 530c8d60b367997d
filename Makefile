# make demo   - set up .venv (torch CPU, build), then a short real comparison: MiniLM on BBC News,
#               AdamW vs SAM vs SL-SAM vs uniform tensor dropout, accuracy against wall-clock time
# make test   - set up, then run the Python tests and the C++ tests (ctest)
# make bench  - set up, then the short CPU benchmark set
# make lint   - ruff
# SLSAM_BUILD_CUDA / TORCH_CUDA_ARCH_LIST / CUDA_HOME are passed to the build (see setup.py).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.slsam-built
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.inc') setup.py pyproject.toml slsam/_version.py

.PHONY: demo test test-py test-cpp bench lint build clean

demo: $(BUILT)
	$(PY) examples/compare.py --demo

test: test-py test-cpp

test-py: $(BUILT)
	$(PY) -m pytest -q tests

test-cpp: $(BUILT)
	mkdir -p build
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake-configure.log
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

bench: $(BUILT)
	$(PY) -m pip install -q -r benchmarks/requirements.txt "$(TORCH)"
	$(PY) -m benchmarks --quick --threads 1

lint: $(DEPS)
	$(PY) -m ruff check .

build: $(BUILT)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): $(PY) requirements-dev.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements-dev.txt "$(TORCH)"
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=2 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build slsam/_C*.so slsam/_build_info.py *.egg-info $(BUILT)
