# Two set-up commands for a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= ../shared/datasets/otrf

.PHONY: venv demo test eval bench clean

$(BIN)/siemcrew: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/siemcrew

venv: $(BIN)/siemcrew

demo: venv
	$(BIN)/siemcrew demo

test: venv
	$(BIN)/python -m pytest -q

eval: venv
	$(BIN)/siemcrew eval --dataset $(DATASET) --out eval-report.md --json \
		--require "tp_recall>=0.95" --require "host_recall>=0.9" --require "account_recall>=0.8" \
		--require "evidence_complete_rate>=0.9" --require "unsupported_findings==0" > eval-result.json

bench: venv
	$(BIN)/python benchmarks/load_otrf.py
	$(BIN)/python benchmarks/investigate.py

clean:
	rm -rf $(VENV) .siemcrew-demo dist eval-report.md eval-result.json
