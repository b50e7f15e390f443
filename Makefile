# opengpt2: every target creates .venv on first use; ARGS forwards Hydra overrides, e.g.
#   make train ARGS="model=gpt2-tiny trainer=cpu trainer.max_steps=120"
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

# Offline, quiet defaults for Prefect's temporary server and W&B; override in the environment.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS ?=
export WANDB_SILENT ?= true
export HF_HUB_OFFLINE ?= 1
# Keep freed memory in the process: CPU training allocates the same large logit buffers every
# step, and handing them back to the OS each time made a gpt2-tiny step 1.5x slower (0.59 s -> 0.40 s).
export MALLOC_MMAP_THRESHOLD_ ?= 1000000000000
export MALLOC_TRIM_THRESHOLD_ ?= 1000000000000

.PHONY: help setup demo test corpus train eval generate export sample bench-corpus bench-train clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned dependencies (a no-op when up to date)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

demo: $(STAMP)  ## the whole pipeline on the bundled sample: corpus -> train -> eval -> sample (no network)
	$(PY) -m flows.pipeline $(ARGS)

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest $(ARGS)

corpus: $(STAMP)  ## build the token corpus (default: the bundled sample)
	$(PY) -m flows.corpus $(ARGS)

train: $(STAMP)  ## train GPT-2 with Lightning (default: gpt2-tiny on CPU)
	$(PY) -m flows.train $(ARGS)

eval: $(STAMP)  ## perplexity of a checkpoint on the corpus val split
	$(PY) -m flows.evaluate $(ARGS)

generate: $(STAMP)  ## sample text from a checkpoint
	$(PY) -m flows.generate $(ARGS)

export: $(STAMP)  ## write a checkpoint (Lightning or DeepSpeed ZeRO) as a transformers GPT-2 folder
	$(PY) -m flows.export $(ARGS)

bench-corpus: $(STAMP)  ## each corpus stage's throughput beside its anchor (newspaper3k, datasketch, tiktoken)
	$(PY) -m bench.corpus $(ARGS)

bench-train: $(STAMP)  ## tokens/s and MFU of the training step (GPU: run bench/gpu.sh for the anchors beside it)
	$(PY) -m bench.train $(ARGS)

sample: $(STAMP)  ## regenerate the bundled sample web and dump under sample/
	$(PY) -m sample.build

clean:  ## remove generated data, runs and caches (keeps .venv)
	rm -rf data outputs wandb .pytest_cache
