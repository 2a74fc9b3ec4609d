# Set-up, tests and demo from a fresh clone: every target builds its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.omniart-installed

.PHONY: test demo bench install clean

install: $(STAMP)

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[offline,test,demo]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m omniart.pipeline.demo --out demo-output

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_heads.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
