# One entry point for people and CI: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit fmt clean bench screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamq demo

lint: $(STAMP)
	$(BIN)/ruff check streamq tests examples
	$(BIN)/ruff format --check streamq tests examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Two test processes (pytest-xdist); TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

unit: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS)

test: lint typecheck unit

# The README's screenshots: the browser tests write docs/screenshots/*.png.
screenshots: $(STAMP)
	STREAMQ_SCREENSHOTS=1 STREAMQ_REQUIRE_BROWSER=1 $(BIN)/pytest -m browser -q

fmt: $(STAMP)
	$(BIN)/ruff format streamq tests examples
	$(BIN)/ruff check --fix streamq tests examples

# streamq against its peers on fresh valkey-servers: about 1.5 h; BENCH_ARGS=--quick: about 5 min.
# Then the scale-out over 1, 2 and 3 cluster masters (bench/cluster_scale.py): about 3 min.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/cluster_scale.py $(CLUSTER_BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
