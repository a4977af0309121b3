# One command each: `make run` starts the server, `make test` runs every test, `make lint`
# checks style and types.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check
export DJANGO_DEBUG ?= 1

.PHONY: install install-dev browser run test test-postgres lint bench

install:
	$(PIP) -r requirements.txt

install-dev: install
	$(PIP) -r requirements-dev.txt

# Debian's Chromium for the browser tests (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

run: install
	$(PYTHON) manage.py migrate --noinput
	twistd -n --pidfile= -y chatserver.tac

test: install-dev browser
	$(PYTHON) -m pytest
	$(MAKE) --no-print-directory test-postgres

# The storage contract, the SQL log, the room core and the Django tests again on
# PostgreSQL, the production database, when one answers on 127.0.0.1:5432 (trust auth). CI's machines have one: there, its absence
# is an error rather than a skip.
PG_URL ?= postgres://postgres@127.0.0.1:5432/chat
test-postgres:
	@if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
	  DATABASE_URL=$(PG_URL) $(PYTHON) -m pytest tests/test_storage_contract.py tests/test_message_log.py tests/test_hub.py chat; \
	elif [ -n "$$CI" ]; then \
	  echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; \
	else \
	  echo "PostgreSQL is not answering on 127.0.0.1:5432: skipped the PostgreSQL pass"; \
	fi

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
