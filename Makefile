# The README's two commands, `make demo` and `make test`, do all the set-up on first use.
# `make test` is the fast suite (CI runs it); `make test-all` adds the slow end-to-end tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medl2b-installed
# torch is pinned to the CPU wheel that lies on disk here, so no CUDA build is pulled.
TORCH  ?= torch==2.13.0

.PHONY: install test test-all demo clean bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/medl2b demo --out demo_output

bench: $(STAMP)
	$(PY) benchmarks/meta_step.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
