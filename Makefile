# The two commands: `make dev` runs the embedded stack, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test test-unit lint typecheck unit bench clean system-packages

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

# The API test suite: every file that drives the HTTP API and the read model through a stack
# (the session's `live` stack or a stack of the module's own). It runs on SQLite and again on
# PostgreSQL (fresh databases of the local server), but for the files of DATABASE_NEUTRAL
# (at the end). The rest runs once, on SQLite: unit tests,
# the deploy files, the migrations (which test both databases themselves) and the scale-out
# test (always on PostgreSQL). The three passes run side by side (tests/passes.py): most tests
# wait on timers, so the wall time is about the longest pass's, not the sum.
API_TESTS := tests/test_accounts.py tests/test_afterlife.py tests/test_body_limits.py \
	tests/test_cog_features.py \
	tests/test_conformance.py \
	tests/test_deployment_instances.py tests/test_deployment_priority.py \
	tests/test_deployments.py tests/test_durability.py tests/test_fairness.py \
	tests/test_file_lifecycle.py tests/test_model_health.py \
	tests/test_files.py tests/test_models.py tests/test_operability.py tests/test_predictions.py \
	tests/test_privacy.py tests/test_push.py tests/test_push_archives.py tests/test_queueing.py \
	tests/test_ratelimits.py tests/test_readme.py tests/test_replay.py tests/test_sessions.py \
	tests/test_streaming.py \
	tests/test_tracing.py tests/test_trainings.py tests/test_usage.py tests/test_webhooks.py \
	tests/test_workflow_close.py
# tests/test_real_models.py and tests/test_cog_examples.py run once, in the `once` pass: they
# test models, and each pass would build the real models' environments again.

# Debian packages the tests need, installed when missing (the test machine runs as root): the
# OCR model's OpenCV loads libGL; the dashboard's browser tests drive Debian's Chromium
# (browser downloads are not possible).
SYSTEM_PACKAGES := libgl1 libglib2.0-0 chromium bubblewrap

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: lint typecheck system-packages
	$(BIN)/python tests/passes.py \
		"sqlite=$(BIN)/pytest -q --durations=30 $(API_TESTS)" \
		"postgres=env REPLICANT_TEST_DATABASE=postgres $(BIN)/pytest -q --durations=30 \
		-o cache_dir=.pytest_cache/postgres $(POSTGRES_TESTS)" \
		"once=$(BIN)/pytest -q --durations=30 -o cache_dir=.pytest_cache/once \
		$(addprefix --ignore=,$(API_TESTS))"

# The unit tier (tests/tiers.py): no services, a few seconds.
test-unit: $(STAMP)
	$(BIN)/pytest -q -m unit

bench: $(STAMP)
	$(BIN)/python bench/predict_latency.py
	$(BIN)/python bench/tracing_overhead.py

clean:
	rm -rf $(VENV) .replicant .pytest_cache .mypy_cache .ruff_cache

# The crash-window, hostile-input and SSRF tests drive the read model too. (The webhook-outage
# test checks deliveries across a receiver's minutes-long outage: it runs once.)
API_TESTS += tests/test_crash_windows.py tests/test_hostile_input.py tests/test_ssrf.py \
	tests/test_model_sandbox.py
API_TESTS += tests/test_builds.py tests/test_collections_search.py tests/test_deadlines.py \
	tests/test_idempotency.py tests/test_list_filters.py tests/test_model_examples.py \
	tests/test_model_readme.py tests/test_model_sorting.py tests/test_official_models.py \
	tests/test_prediction_delete.py
API_TESTS += tests/test_concurrency.py
API_TESTS += tests/test_visibility.py

# The PostgreSQL pass runs the API tests but these, whose behaviour no database changes: what
# they check happens before anything is stored or after it is read, and the rows they write
# and read are the same as the files left in write and read. test_replay: workflow code
# replaying saved and fresh histories (the histories' predictions, trainings, builds and
# deployments are test_predictions', test_trainings', test_builds' and test_deployments' own
# on PostgreSQL). test_ssrf: URLs refused before a row is written (a stack of its own).
# test_tracing: spans sent over OTLP, with no span from the database (a stack of its own).
# test_body_limits: bodies capped before they are read or authenticated. test_push_archives:
# archives refused before anything is stored. They run on SQLite, in the sqlite pass.
DATABASE_NEUTRAL := tests/test_replay.py tests/test_ssrf.py tests/test_tracing.py \
	tests/test_body_limits.py tests/test_push_archives.py
POSTGRES_TESTS := $(filter-out $(DATABASE_NEUTRAL),$(API_TESTS))
