# The book's two commands: `make book` and `make test`. Everything else is a helper for them.
# Each target creates .venv (if missing) and installs what it needs first.

PYTHON ?= python3
VENV   ?= .venv
# The PyTorch requirement, installed before the package so that pip keeps it. Override it for
# your hardware, e.g. `make book TORCH="torch --index-url https://download.pytorch.org/whl/cpu"`
# or `make book TORCH=torch==2.13.0` (the CPU build CI pins).
TORCH  ?= torch==2.13.0

BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
ASSETS := book/vendor/.fetched
BUILD  := _build/html

# Kernels for nbval and for `make notebooks` run in this environment, whatever kernelspecs the
# user has installed elsewhere.
export JUPYTER_PREFER_ENV_PATH := 1
export PYTHONHASHSEED := 0

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: book test setup notebooks book-strict browser-check ci clean distclean bench-efficient

book: setup $(ASSETS)
	$(BIN)/jupyter-book build .
	@echo "The book's front page: file://$(abspath $(BUILD))/index.html"

test: setup
	$(BIN)/pytest -m "not browser" $(NBVAL) tests chapters appendices

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $@

# MathJax, require.js and the ipywidgets HTML manager, fetched from the npm registry with pinned
# SHA-512 checksums into an ignored folder, so the book renders math and widgets with no CDN.
$(ASSETS): scripts/fetch_web_assets.py | setup
	$(PY) scripts/fetch_web_assets.py book/vendor

# Re-execute the chapter notebooks in place (their stored outputs are what nbval compares).
NB ?= $(wildcard chapters/*.ipynb appendices/*.ipynb)
notebooks: setup
	$(PY) scripts/execute_notebooks.py $(NB)

# What CI builds: from clean, warnings are errors, every problem reported.
book-strict: setup $(ASSETS)
	$(BIN)/jupyter-book clean . --all
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book's front page: file://$(abspath $(BUILD))/index.html"

browser-check: setup
	$(PY) scripts/ensure_chromium.py
	$(BIN)/pytest -m browser tests/test_browser.py

ci:
	bash .ci/run

# Part IV's numbers: attention time and peak memory against length (naive, tiled, SDPA), decoding with
# and without the key/value cache, K/V cache bytes per token. Time it on an idle machine.
bench-efficient: setup
	$(PY) benchmarks/efficient.py --out benchmarks/results/efficient.json

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) book/vendor
