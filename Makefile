# Two commands: `make book` builds the HTML book, `make test` runs every test.
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: book test linkcheck clean

# One stamp per set of extras; each is rebuilt when pyproject.toml is newer.
$(VENV)/.installed-%: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[$*]"
	@touch $@

book: $(VENV)/.installed-book
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Book built: $(abspath _build/html/index.html)"

test: $(VENV)/.installed-test
	$(PY) -m pytest tests/
	LICTUTOR_BUDGET=smoke MPLBACKEND=Agg $(PY) -m pytest -p no:cacheprovider \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=900 book/

# Broken internal links (href/src to files that do not exist) in the built book.
linkcheck: book
	$(PY) .ci/check_links.py _build/html

clean:
	rm -rf _build
