# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# -P: the checkout's root stays off sys.path, so its kernels/ folder (installed as lmkan_surgery.kernels) cannot
# shadow Hugging Face's `kernels` package, which transformers >= 5.25 imports
test: $(STAMP)
	$(PY) -P -m pytest -q -ra tests

clean:
	rm -rf $(VENV) build *.egg-info
