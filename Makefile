# Quick start: `make demo` (offline main job) and `make test` (test suite). Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dino_detector.demo

# the layers contract of pyproject.toml (ARCHITECTURE.md), then the suite: one pytest-xdist worker per core
# (each test runs torch on one thread, conftest.py), a file's tests in one worker so its fixtures are made once
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest tests -q -n auto --dist loadfile --durations=15

# benchmark suite, ours against the peer detectors: `make bench [OUT=DIR]` (python -m benchmarks.run --help)
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.run --suite cpu --out $(or $(OUT),bench_out)

clean:
	rm -rf outputs .pytest_cache
