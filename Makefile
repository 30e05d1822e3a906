# The two commands of README.md: `make demo` and `make test`. Both set up
# everything they need on a fresh machine (virtual environment, pinned
# installs, the CASA site config is in include/casa and needs no set-up).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	# The build leaves plugins/alma_regen.egg-info, on sys.path through the editable .pth:
	# Airflow would then see the plugin's entry point twice (a plugin import error in the UI).
	rm -rf plugins/*.egg-info
	touch $@

demo: $(STAMP)
	$(VENV)/bin/alma-regen demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .demo
