# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs what it needs (the CPU build of torch is pinned in constraints-cpu.txt).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: test demo install clean mutation planted test-kinds

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2

demo: $(STAMP)
	$(PY) -m scoresde demo

# How many tests compare numbers with exact answers, and how many check the interface (tests/kinds.py)
test-kinds: $(STAMP)
	@for kind in exact interface; do printf '%-10s' $$kind; $(PY) -m pytest --collect-only -q -m $$kind | tail -n 1; done

# Mutation testing of the numerical core with mutmut (slow, not in CI; see mutation/REPORT.md):
#   make mutation                   every module in mutation/modules.toml with default = true
#   make mutation MODULE=sde        one module (or several: MODULE="sde losses")
$(VENV)/.mutation-installed: $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[test,mutation]'
	touch $@

mutation: $(VENV)/.mutation-installed
	$(PY) mutation/run.py $(if $(MODULE),--module "$(MODULE)")

# The planted-bug audit of issue 10: each listed bug in a copy of the package, its tests run there
planted: $(STAMP)
	$(PY) mutation/planted.py

clean:
	rm -rf $(VENV) build *.egg-info
