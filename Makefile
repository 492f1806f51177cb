# `make demo` and `make test` bootstrap .venv from nothing; reruns skip what is installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmdistill-installed
JOBS   := $(shell nproc 2>/dev/null || echo 2)
# llama-cpp-python builds only what llmdistill calls: the llama library for this CPU, without the
# multimodal (mtmd/llava) library. pip keeps the built wheel in its cache, so a second venv
# installs it in seconds.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
                    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: demo test lint clean-venv

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install -q -e '.[all]'
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

# Headless Chromium for the report's browser test, where apt is available (the test skips, saying
# why, where no Chromium exists).
CHROMIUM := $(VENV)/.chromium
$(CHROMIUM):
	command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "chromium not installed: the browser test will be skipped"
	touch $(CHROMIUM)

demo: $(STAMP)
	$(BIN)/llmdistill run

# Tests run in a random order (pytest-randomly); the seed is in the command make prints, so a
# failing order replays with `make test SEED=N`.
SEED ?= $(shell od -An -N3 -tu4 /dev/urandom | tr -d ' ')
test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q --randomly-seed=$(SEED)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean-venv:
	rm -rf $(VENV)
