# The two commands: `make dev` runs the embedded stack, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

dev: $(STAMP)
	$(BIN)/replicant dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The API and read-model tests run a second time with the stack on PostgreSQL (a fresh
# database of the local server); the rest of the suite exercises the same code on SQLite.
PG_TESTS := tests/test_predictions.py tests/test_conformance.py tests/test_models.py \
	tests/test_operability.py

test: lint typecheck
	$(BIN)/pytest -q
	REPLICANT_TEST_DATABASE=postgres $(BIN)/pytest -q $(PG_TESTS)

bench: $(STAMP)
	$(BIN)/python bench/predict_latency.py

clean:
	rm -rf $(VENV) .replicant .pytest_cache .mypy_cache .ruff_cache
