# Two commands: `make demo` (the main job) and `make test` (the suite). Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch from this machine's local wheel; users elsewhere may install any torch>=2.1.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test lint demo bench fuzz clean data browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[eval,data,video,app,browser,dev]" "$(TORCH_PIN)"
	-$(MAKE) --no-print-directory data browser
	touch $(STAMP)

# Debian's Chromium for the browser test of `codanet serve` (Playwright drives the system browser;
# its own browser download is not used); the test is skipped, saying how to install it, without.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
		|| echo "note: could not install chromium; the browser test will be skipped"; fi

# Fashion-MNIST from Debian (only where apt is available and we are root); the tests that need it skip without it.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "note: could not install dataset-fashion-mnist; pass --data-dir to use your own copy"; fi

test: setup lint
	$(PY) -m pytest tests

# ruff (lint + import order) and mypy (every function typed in nn/ and models/), configured in pyproject.toml
lint: setup
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy

demo: setup
	$(PY) -m codanet demo --out runs/demo

# property-based tests with many generated cases; the counts per property are printed at the end
fuzz: setup
	CODANET_FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics

bench: setup
	$(PY) -m codanet bench layers --json runs/bench/layers.json

clean:
	rm -rf $(VENV) runs .pytest_cache
