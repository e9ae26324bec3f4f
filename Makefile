# The two commands of the README:
#   make run   - set up a venv, install relaybox, run it on the sample config (SQLite under ./var)
#   make test  - install the real peers (Debian packages) and the test deps, lint (ruff, mypy), run the suite
#   make lint  - ruff and mypy only (configured in pyproject.toml)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint peers venv bench clean

$(BIN)/relaybox: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/relaybox

run: venv
	mkdir -p var
	$(BIN)/relaybox run --config conf/relaybox.toml

peers:
	bash .ci/install-peers.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: venv peers lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv peers
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/dkim.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/e2e_postfix.py
	$(BIN)/python bench/bounces.py
	$(BIN)/python bench/poller.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/logs.py

clean:
	rm -rf $(VENV) var
