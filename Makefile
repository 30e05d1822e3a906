# The two commands of README.md: `make demo` and `make test`. Both set up
# everything they need on a fresh machine (virtual environment, pinned
# installs, the CASA site config is in include/casa and needs no set-up).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install system clean

install: $(STAMP) system

# Debian packages: bubblewrap (the sandbox delivery code runs in), chromium and
# its driver (the browser tests), docker-compose (validates docker-compose.yaml; no
# engine runs here). Installed when missing and we are root; else
# one line says what to install (under CI=true the tests needing them fail).
SYSTEM_PKGS := bubblewrap chromium chromium-driver docker-compose
system:
	@command -v bwrap >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v docker-compose >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && export DEBIAN_FRONTEND=noninteractive && \
	    { apt-get install -y -q $(SYSTEM_PKGS) || { apt-get update -q && apt-get install -y -q $(SYSTEM_PKGS); }; } \
	  || echo "alma-regen: install the Debian packages $(SYSTEM_PKGS) for the sandbox and the browser tests"; }

# The product (.) and the developer tools (devtools/: synth, serve-archive, the local S3, the
# demo), both editable. The Dockerfile installs the product only.
$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml setup.cfg devtools/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e . -e devtools
	touch $@

# `make demo PORT=8081` moves the Airflow UI from 8080.
PORT ?= 8080
demo: $(STAMP) system
	$(VENV)/bin/alma-regen demo --port $(PORT)

test: $(STAMP) system
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .demo
