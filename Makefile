# The two commands a user needs: `make demo` and `make test`. Both install what they need (scripts/bootstrap.sh).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: all bootstrap test lint demo bench clean

all: test

bootstrap:
	scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check agent lease netops tests bench examples docker
	$(VENV)/bin/ruff format --check agent lease netops tests bench examples docker
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: bootstrap
	$(PY) examples/demo.py

# About 40 minutes: lease store ops, lease store scale, failover versus keepalived, a 10-minute footprint run.
bench: bootstrap
	$(PY) bench/lease_ops.py
	$(PY) bench/lease_scale.py
	$(PY) bench/failover.py
	$(PY) bench/probe_cost.py
	$(PY) bench/footprint.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
