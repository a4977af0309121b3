# One command each: `make run` starts the server, `make test` runs every test.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check
export DJANGO_DEBUG ?= 1

.PHONY: install install-dev browser run test lint bench

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

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
