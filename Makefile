# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs what it needs (the CPU build of torch is pinned in constraints-cpu.txt).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2

demo: $(STAMP)
	$(PY) -m scoresde demo

clean:
	rm -rf $(VENV) build *.egg-info
