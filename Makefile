# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
LOCK_PLATFORM := x86_64-unknown-linux-gnu
WORKDIR ?= rlops-work
# setup_env.sh installs uv here when it is not on PATH.
UV ?= $(shell command -v uv || echo .cache/tools/bin/uv)

.PHONY: setup demo lint test bench lock clean

setup:
	@bash setup_env.sh

demo: setup
	$(PY) -m cli.main demo --workdir $(WORKDIR) --force

lint: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) bench/policy_quality.py
	$(PY) bench/pipeline_cost.py
	$(PY) bench/serving.py
	$(PY) bench/learning_loop.py

lock: setup
	for v in 3.9 3.10; do \
	  $(UV) pip compile --quiet --python-platform $(LOCK_PLATFORM) --python-version $$v setup.py --extra test \
	    --custom-compile-command "make lock" -o requirements-py$$(echo $$v | tr -d .).lock; \
	done

clean:
	rm -rf $(WORKDIR) .pytest_cache
