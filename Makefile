# One command each: `make run` starts the server, `make test` runs every test, `make lint`
# checks style and types.
#
# Everything installs into and runs from a virtualenv, so a fresh machine needs only
# python3 (with its venv module) and make: the first command creates .venv with
# $(BASE_PYTHON). With a virtualenv already active ($VIRTUAL_ENV set), that one is used
# instead. Installs happen again only when a requirements file changes: a stamp file in the
# virtualenv records each one.
BASE_PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
override VENV := .venv
endif
PYTHON := $(VENV)/bin/python
TWISTD := $(VENV)/bin/twistd
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed-django-twisted-chat
# As if the virtualenv were activated: what the commands start (the benchmark's twistd and
# daphne) is found there too.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DJANGO_DEBUG ?= 1

.PHONY: install install-dev install-bench browser run superuser test test-postgres lint bench soak

install: $(STAMP)-requirements

install-dev: $(STAMP)-requirements-dev

install-bench: $(STAMP)-requirements-bench

# The virtualenv's interpreter.
$(PYTHON):
ifdef VIRTUAL_ENV
	@echo "make: the active virtualenv $(VIRTUAL_ENV) has no bin/python: recreate it, or deactivate it to use .venv." >&2; exit 1
else
	@command -v $(BASE_PYTHON) >/dev/null || { \
	  echo "make: $(BASE_PYTHON) not found: this project needs Python 3.11 or newer." >&2; exit 1; }
	@$(BASE_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: $(BASE_PYTHON) is older than Python 3.11: run make BASE_PYTHON=python3.11 (or newer)." >&2; exit 1; }
	@$(BASE_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "make: $(BASE_PYTHON) cannot create a virtualenv: its venv module or ensurepip is missing." >&2; \
	  echo "      On Debian or Ubuntu: sudo apt-get install python3-venv   (then run make again)" >&2; exit 1; }
	rm -rf .venv
	$(BASE_PYTHON) -m venv .venv || { rm -rf .venv; exit 1; }
endif

# Without a working interpreter (.venv deleted, or the Python it was made from removed), the
# virtualenv is made again and every stamp in it is stale, whatever its date.
ifeq ($(shell test -x $(PYTHON) && echo yes),)
FORCE_INSTALL := FORCE
endif
.PHONY: FORCE

# A virtualenv made by other tools (uv) may come without pip.
$(STAMP)-requirements: requirements.txt $(FORCE_INSTALL) | $(PYTHON)
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m ensurepip --upgrade >/dev/null
	$(PIP) -r requirements.txt
	@touch $@

$(STAMP)-requirements-dev: requirements-dev.txt $(STAMP)-requirements
	$(PIP) -r requirements-dev.txt
	@touch $@

$(STAMP)-requirements-bench: bench/requirements.txt $(STAMP)-requirements
	$(PIP) -r bench/requirements.txt
	@touch $@

# Debian's Chromium for the browser tests (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

run: install
	$(PYTHON) manage.py migrate --noinput
	$(TWISTD) -n --pidfile= -y chatserver.tac

# An admin account for /admin/, with the settings `make run` uses (ARGS go to createsuperuser,
# e.g. ARGS=--noinput with DJANGO_SUPERUSER_USERNAME, _EMAIL and _PASSWORD set).
superuser: install
	$(PYTHON) manage.py migrate --noinput
	$(PYTHON) manage.py createsuperuser $(ARGS)

# pytest exits with 5 when it collected nothing: a failure here, said in words.
test: install-dev browser
	@$(PYTHON) -m pytest || { status=$$?; \
	  [ $$status -ne 5 ] || echo "pytest collected no tests: that is a failure" >&2; exit $$status; }
	$(MAKE) --no-print-directory test-postgres

# The storage contract, the SQL log, the room core, the multi-process tests and the Django
# tests again on PostgreSQL, the production database, when one answers on 127.0.0.1:5432
# (trust auth). CI's machines have one: there, its absence is an error rather than a skip.
PG_URL ?= postgres://postgres@127.0.0.1:5432/chat
test-postgres: install-dev
	@if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  DATABASE_URL=$(PG_URL) $(PYTHON) -m pytest tests/test_storage_contract.py tests/test_message_log.py tests/test_hub.py tests/test_cluster.py chat; \
	elif [ -n "$$CI" ]; then \
	  echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; \
	else \
	  echo "PostgreSQL is not answering on 127.0.0.1:5432: skipped the PostgreSQL pass"; \
	fi

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

# The benchmark (about 6 minutes; ARGS go to bench.run, e.g. ARGS="--servers ours") and the
# memory soak (3 minutes): bench/README.md.
bench: install-bench
	$(PYTHON) -m bench.run $(ARGS)

soak: install-bench
	$(PYTHON) -m bench.soak $(ARGS)
