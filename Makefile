# `make demo` and `make test` do all set-up (apt libraries, a venv, pinned wheels) on first use.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.ready

$(VENV)/.ready: requirements.txt setup.py scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(BIN)/ukpgan demo --stride 4

test: setup
	$(BIN)/python -m pytest -q test

bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) out build *.egg-info
