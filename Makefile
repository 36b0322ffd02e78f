# zapd: every target works on a fresh machine; it builds .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := zapd zapd_demo drivers fallback cloud_sync cloud bench

.PHONY: demo test lint bench docs venv deps-system clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Integration tests talk to a real mosquitto broker and a real PostgreSQL server, and the web view is tested in
# Debian's headless chromium; install each when missing.
# (postgresql-common would create and start a system cluster: the tests never use it, they initdb their own.)
deps-system:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto) >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the web view's browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; }

demo: $(STAMP)
	$(BIN)/python -m zapd_demo --hours 24

# The whole suite, with a throwaway PostgreSQL cluster (its own data dir, a free port) for the cloud's SQL tests.
# The tests start hundreds of zapd / zapcloud / simulator processes: our modules are compiled to bytecode once
# first, or each process would compile them again (PYTHONDONTWRITEBYTECODE, set on CI machines, stops Python
# writing the cache; it still reads it).
# Most of the suite's wall time is tests waiting on their processes (a serial run uses well under one core), so
# the unit and integration tests run in TEST_WORKERS pytest-xdist workers (each with its own PostgreSQL database,
# tests/db_backends.py, and its own share of loopback ports, tests/ports.py). The end-to-end tests run afterwards,
# alone: they drive daemons on a clock at up to 240x, where a second of CPU starvation is minutes of site time.
# Both parts always run; the target fails if either failed.
TEST_WORKERS ?= 3
test: $(STAMP) deps-system
	$(BIN)/python -m compileall -q -j 0 $(PACKAGES) tests
	$(BIN)/python -m tests.pg_cluster -- sh -c '\
	  $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25 tests --ignore=tests/e2e; parallel=$$?; \
	  $(BIN)/pytest -q --durations=10 tests/e2e; e2e=$$?; \
	  test $$parallel -eq 0 && test $$e2e -eq 0'

lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests
	$(BIN)/ruff format --check $(PACKAGES) tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# The config reference and the daemon's config structs are generated from the schema; `make test`
# fails when either is out of date.
docs: $(STAMP)
	$(BIN)/python -m zapd.config_doc > docs/config-reference.md.tmp && mv docs/config-reference.md.tmp docs/config-reference.md
	$(BIN)/python -m zapd.config_gen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
