# deploybench: `make demo` (the main job) and `make test` (the whole suite) work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   := data
WS     := workspace
DEMO_MODELS ?= custom

.PHONY: setup data browser postgres demo lint test test-all bench bench-baseline clean

setup: $(STAMP)

# Reinstall whenever pyproject.toml changes; pip resolves the pinned CUDA torch + torchvision pair.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Real Fashion-MNIST ships as a Debian package; torchvision's loader needs it unzipped under data/.
data: setup
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
	      echo "apt-get could not install dataset-fashion-mnist; torchvision will try to download it"; \
	  else \
	    echo "Fashion-MNIST: run 'sudo apt-get install -y dataset-fashion-mnist' (Debian/Ubuntu), or let torchvision download it"; \
	  fi; \
	fi
	$(PY) -c "import sys; from deploybench.data import prepare_fashion_mnist as p; \
	  print('Fashion-MNIST ready in $(DATA)' if p('$(DATA)') else 'Fashion-MNIST not found locally; torchvision will try to download it')"

demo: data
	$(VENV)/bin/deploybench pipeline --dataset fashion-mnist --models $(DEMO_MODELS) --workspace $(WS) --data-dir $(DATA)

# The report's browser test drives Debian's Chromium through chromedriver (installed here when root).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
	      echo "could not install chromium + chromium-driver: the browser test will be skipped"; \
	  else echo "install chromium + chromium-driver to run the browser test"; fi; \
	fi

# The study test with several workers serves a throwaway PostgreSQL from Debian's packages (installed here when
# root; the test runs the server as an unprivileged user).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null || \
	      echo "could not install postgresql: the PostgreSQL study test will be skipped"; \
	  else echo "install postgresql to run the PostgreSQL study test"; fi; \
	fi

# Lint, format and the layer contract first (seconds), so a broken rule fails before the long suite.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

# CI's suite: lint, everything but the `slow` tests (optimize all over the larger architectures), then the
# benchmarks with their same-run gates.
test: setup browser postgres lint
	$(PY) -m pytest -q -m "not slow" tests
	$(MAKE) --no-print-directory bench

test-all: setup browser postgres lint
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory bench

# Benchmarks: hard gates on same-run ratios and deterministic facts, which hold on any machine; then each
# benchmark's fastest call compared with this machine's baseline, where benchmarks/baselines holds one with
# this machine's fingerprint (deploybench.platform.bench_baseline picks it and says which, or that there is
# none). The fastest call, as load only ever adds time; failing only beyond BENCH_FAIL, as a VM's speed drifts
# as a whole between runs: the comparison catches lost kernels and per-call recompiles, the gates the rest.
BENCH_BASELINES := benchmarks/baselines
BENCH_FAIL     ?= min:400%
BENCH_OPTS     := -q -p no:cacheprovider --benchmark-sort=fullname --benchmark-columns=min,median,max,rounds \
                  --benchmark-max-time=0.3
BENCH_SELECT   := $(PY) -m deploybench.platform.bench_baseline
bench: setup
	@mkdir -p reports/benchmarks
	@compare=$$($(BENCH_SELECT) select $(BENCH_BASELINES) --fail=$(BENCH_FAIL)) || exit 1; \
	  echo "$(PY) -m pytest $(BENCH_OPTS) benchmarks --benchmark-json=reports/benchmarks/latest.json $$compare"; \
	  $(PY) -m pytest $(BENCH_OPTS) benchmarks --benchmark-json=reports/benchmarks/latest.json $$compare

# Records this machine's baseline from a full run (a run whose gates fail records nothing).
bench-baseline: setup
	@mkdir -p reports/benchmarks
	$(PY) -m pytest $(BENCH_OPTS) benchmarks --benchmark-json=reports/benchmarks/baseline-run.json
	$(BENCH_SELECT) record reports/benchmarks/baseline-run.json $(BENCH_BASELINES)

clean:
	rm -rf $(WS) .pytest_cache
