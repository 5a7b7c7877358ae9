# Two set-up commands for a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# `make eval`: datasets scored together (metrics overall and per split), recordings in JOBS worker processes
DATASETS ?= ../shared/datasets/otrf ../shared/datasets/otrf-dev2
JOBS ?= 2
# `make test`: test files spread over TEST_PROCS processes (pytest-xdist; a file's tests stay in one process, in order)
TEST_PROCS ?= 2
EVAL_BAR := "tp_recall>=0.95" "tp_malicious_rate>=0.85" "fp_rate<=0.2" "fp_malicious_rate<=0.02" \
	"analyst_queue_rate<=0.2" "host_recall>=0.9" "account_recall>=0.85" "account_precision>=0.7" \
	"evidence_complete_rate>=0.95" "unsupported_findings==0"

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
	$(BIN)/python -m pytest -q -n $(TEST_PROCS) --dist loadfile

eval: venv
	$(BIN)/siemcrew eval $(addprefix --dataset ,$(DATASETS)) --jobs $(JOBS) --out eval-report.md --json \
		$(addprefix --require ,$(EVAL_BAR)) > eval-result.json

bench: venv
	$(BIN)/python benchmarks/load_otrf.py
	$(BIN)/python benchmarks/investigate.py

clean:
	rm -rf $(VENV) .siemcrew-demo dist eval-report.md eval-result.json
