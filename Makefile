# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
LOCK_PLATFORM := x86_64-unknown-linux-gnu
WORKDIR ?= rlops-work
# setup_env.sh installs uv here when it is not on PATH.
UV ?= $(shell command -v uv || echo .cache/tools/bin/uv)
# The suite's fast part, run again on Python 3.9 (the fallback route's version) in .venv39.
PY39_TESTS := rlops functions cli/deploy_test.py

.PHONY: setup setup-py39 demo lint test test-py39 bench lock clean

setup:
	@bash setup_env.sh

demo: setup
	$(PY) -m cli.main demo --workdir $(WORKDIR) --force

lint: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check .

test: lint
	$(PY) -m pytest

setup-py39:
	@RLOPS_VENV=.venv39 RLOPS_PYTHON_VERSION=3.9 bash setup_env.sh

test-py39: setup-py39
	.venv39/bin/python -m pytest $(PY39_TESTS)

bench: setup
	$(PY) bench/policy_quality.py
	$(PY) bench/pipeline_cost.py
	$(PY) bench/serving.py
	$(PY) bench/warehouse_inserts.py
	$(PY) bench/log_messages.py
	$(PY) bench/learning_loop.py

lock: setup
	for v in 3.9 3.10; do \
	  $(UV) pip compile --quiet --python-platform $(LOCK_PLATFORM) --python-version $$v setup.py --extra test \
	    --custom-compile-command "make lock" -o requirements-py$$(echo $$v | tr -d .).lock; \
	done

clean:
	rm -rf $(WORKDIR) .pytest_cache
