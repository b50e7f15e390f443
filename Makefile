# opengpt2: every target creates .venv on first use; ARGS forwards Hydra overrides, e.g.
#   make train ARGS="model=gpt2-tiny trainer=cpu trainer.max_steps=120"
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
ARGS   ?=

# Offline, quiet defaults for Prefect's temporary server and W&B; override in the environment.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS ?=
export WANDB_SILENT ?= true
export HF_HUB_OFFLINE ?= 1
# Keep freed memory in the process: CPU training allocates the same large logit buffers every
# step, and handing them back to the OS each time makes a step markedly slower.
export MALLOC_MMAP_THRESHOLD_ ?= 1000000000000
export MALLOC_TRIM_THRESHOLD_ ?= 1000000000000

.PHONY: help setup demo test corpus train eval generate export dashboard sample bench-corpus bench-scale bench-train bench-data bench-generate bench-playground bench-archive chaos playground browser serve stop refresh clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with the pinned dependencies (a no-op when up to date)

# torch first, from TORCH_INDEX (a CPU build by default: no CUDA wheels on a CPU machine), pinned by
# constraints.txt like everything else; a torch already in .venv (a GPU build, see README) is kept.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --no-deps -c constraints.txt \
		--extra-index-url $(TORCH_INDEX) torch
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)  ## the whole pipeline on the bundled sample: corpus -> train -> eval -> sample (no network)
	$(PY) -m flows.pipeline $(ARGS)

test: $(DEV_STAMP) browser  ## run the test suite (installs the dev extra: pytest, hadolint, moto, playwright; and Chromium)
	$(PY) -m pytest $(ARGS)

browser:  ## Debian's Chromium for the playground's browser test (as root with apt-get; elsewhere that test skips)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "note: Chromium could not be installed (needs root and apt-get): the browser test will skip"

corpus: $(STAMP)  ## build the token corpus (default: the bundled sample)
	$(PY) -m flows.corpus $(ARGS)

train: $(STAMP)  ## train GPT-2 with Lightning (default: gpt2-tiny on CPU)
	$(PY) -m flows.train $(ARGS)

eval: $(STAMP)  ## val perplexity of a checkpoint, and the GPT-2 paper's benchmarks found under eval.benchmarks_dir
	$(PY) -m flows.evaluate $(ARGS)

generate: $(STAMP)  ## sample text from a checkpoint
	$(PY) -m flows.generate $(ARGS)

playground: $(STAMP)  ## a sampling page on http://127.0.0.1:7860 (make playground checkpoint=PATH compare=PATH)
	$(PY) -m flows.playground $(if $(checkpoint),checkpoint=$(checkpoint)) \
		$(if $(compare),playground.compare=$(compare)) $(ARGS)

refresh: $(STAMP)  ## add new dump months (corpus.refresh.dumps_dir) to the corpus as a new version
	$(PY) -m flows.refresh $(ARGS)

export: $(STAMP)  ## write a checkpoint (Lightning or DeepSpeed ZeRO) as a transformers GPT-2 folder
	$(PY) -m flows.export $(ARGS)

dashboard: $(STAMP)  ## save the W&B training dashboard to logger.project (online: WANDB_API_KEY, ARGS="logger.mode=online")
	$(PY) -m flows.dashboard $(ARGS)

bench-corpus: $(STAMP)  ## each corpus stage's throughput beside its anchor (newspaper3k, datasketch, tiktoken)
	$(PY) -m bench.corpus $(ARGS)

bench-scale: $(STAMP)  ## the corpus flow on N generated WARC pages: local vs Dask 1 and 2 workers, memory, dedup bytes/doc, datatrove beside it (ARGS="N=6000 FILES=8 CHUNK_DOCS=65536 REPEATS=1")
	$(PY) -m bench.scale $(ARGS)

bench-archive: $(STAMP)  ## the archive lookup of corpus.fetch.mode=archive on a Common Crawl-shaped index: wall time, rows/s, bytes read, peak memory (and at 100k URLs), checked against brute force; per-URL CDX rate projected to 1M; records/s (ARGS="ROWS=10000000 FILES=20 URLS=1000000 SHARD_URLS=50000 WORKERS=2 RECORDS=20000 SMALL=100000")
	$(PY) -m bench.archive $(ARGS)

chaos: $(DEV_STAMP)  ## the corpus on S3 (moto) behind a fault proxy, a worker and the flow killed: nothing lost? (ARGS="seed=1 rate=0.2 pages=1200 files=6")
	$(PY) -m tests.chaos $(ARGS)

bench-train: $(STAMP)  ## tokens/s of the training step; on a CPU beside a plain PyTorch loop, alternated, best of 3 (GPU: run bench/gpu.sh for the anchors beside it)
	$(PY) -m bench.train $(ARGS)

bench-data: $(DEV_STAMP)  ## loader tokens/s from a local folder and from S3 (moto, from the dev extra) with 1, 2, 4 workers at block 128 and 1,024, and the time to the first batch (ARGS="TOKENS=… FILES=… BATCH=… SECONDS=…")
	$(PY) -m bench.data $(ARGS)

bench-generate: $(STAMP)  ## decoding tokens/s beside transformers' generate (same weights, batch 1, 256 tokens)
	$(PY) -m bench.generate $(ARGS)

bench-playground: $(STAMP)  ## the playground's batch: 8 staggered requests together vs one after another, best of 5 each (ARGS="checkpoint=… model=gpt2 stagger_tokens=10 repeats=5 decoders=auto"; stagger_ms=N for a gap in ms)
	$(PY) -m bench.playground $(ARGS)

sample: $(STAMP)  ## regenerate the bundled sample web and dump under sample/
	$(PY) -m sample.build

SERVE_DIR    := .prefect-serve
PREFECT_PORT ?= 4200
SERVE_ENV    := PREFECT_HOME=$(CURDIR)/$(SERVE_DIR) PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api

serve: $(STAMP)  ## start a local Prefect server (SQLite) and process workers for both pools; register prefect.yaml's deployments
	@mkdir -p $(SERVE_DIR)
	@test ! -f $(SERVE_DIR)/server.pid || { echo "already serving (make stop first)"; exit 1; }
	$(SERVE_ENV) nohup $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) \
		> $(SERVE_DIR)/server.log 2>&1 & echo $$! > $(SERVE_DIR)/server.pid
	@for i in $$(seq 90); do curl -sf http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null && break; sleep 1; done
	for pool in opengpt2 opengpt2-gpu; do \
		$(SERVE_ENV) $(VENV)/bin/prefect work-pool create $$pool --type process --overwrite > /dev/null; done
	$(SERVE_ENV) $(VENV)/bin/prefect --no-prompt deploy --all
	$(SERVE_ENV) OPENGPT2_HOME=$(CURDIR) nohup $(VENV)/bin/prefect worker start --pool opengpt2 \
		> $(SERVE_DIR)/worker.log 2>&1 & echo $$! > $(SERVE_DIR)/worker.pid
	$(SERVE_ENV) OPENGPT2_HOME=$(CURDIR) nohup $(VENV)/bin/prefect worker start --pool opengpt2-gpu \
		> $(SERVE_DIR)/gpu-worker.log 2>&1 & echo $$! > $(SERVE_DIR)/gpu-worker.pid
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (logs in $(SERVE_DIR)/, stop with make stop)"

stop:  ## stop the server and worker that `make serve` started
	@for name in gpu-worker worker server; do \
		f=$(SERVE_DIR)/$$name.pid; [ -f $$f ] || continue; pid=$$(cat $$f); kill $$pid 2>/dev/null; \
		for i in $$(seq 10); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
		kill -9 $$pid 2>/dev/null; rm -f $$f; echo "stopped $$name ($$pid)"; done

clean:  ## remove generated data, runs and caches (keeps .venv)
	rm -rf data outputs wandb .pytest_cache
