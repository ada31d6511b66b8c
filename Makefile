# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv at the repository root when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: setup test demo data
setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

data: $(STAMP)
	$(VENV)/bin/medgan-data

demo: $(STAMP)
	$(VENV)/bin/python -m medgan_training.demo
