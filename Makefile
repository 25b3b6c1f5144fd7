# recallq: `make demo` runs the whole retrieval path, `make test` runs lint, types and tests.
# Both set themselves up from a fresh clone: virtualenv, CPU torch, the package with dev extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RECALLQ_AMQP_URL ?= amqp://guest:guest@localhost:5672/

.PHONY: demo test lint format unit integration check-broker schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

check-broker: $(STAMP)
	$(PY) scripts/check_rabbitmq.py

demo: check-broker
	$(PY) scripts/demo.py

test: lint check-broker
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: check-broker
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

schemas: $(STAMP)
	$(PY) -m schemas export
	$(PY) -m worker.admin.settings_table --write README.md

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
