# Every target installs what it needs into .venv first (once; again when setup.cfg or requirements change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKED ?= packed
PYTEST_ARGS ?=

.PHONY: install pack test bench bench-scale data-full clean

$(STAMP): setup.cfg pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## pack data_samples/ into $(PACKED)/ and print the statistics
pack: $(STAMP)
	$(VENV)/bin/packer pack data_samples/reference_like --output $(PACKED) --overwrite
	$(VENV)/bin/packer stats $(PACKED)

## the test suite (kernels compiled), then the kernel tests again with the JIT off
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q tests/test_kernels.py

## the issue benchmarks that fit a few minutes; bench_convert and bench_verify make the full set once (1 GB)
bench: $(STAMP)
	$(PY) benchmarks/bench_kernel.py
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_open.py
	$(PY) benchmarks/bench_verify.py
	$(PY) benchmarks/bench_manifest.py

## 100M-length kernel and 1M-sequence conversions (about 20 GB of disk and several minutes)
bench-scale: $(STAMP)
	$(PY) benchmarks/bench_scale.py

## the full 99,388-row reference-like set (about 1 GB, not committed)
data-full: $(STAMP)
	$(PY) data_samples/make_samples.py --full

clean:
	rm -rf $(VENV) $(PACKED) .pytest_cache build *.egg-info
