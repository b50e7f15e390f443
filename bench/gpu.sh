#!/usr/bin/env bash
# The GPU benchmarks, anchors beside ours, one JSON line per result:
#   bash bench/gpu.sh [generate|train|all]      (default all)
# generate: bench.generate times transformers' generate in the same run (its anchor), then ours,
#           compiled (CUDA graphs) and eager. A few minutes, most of it compilation.
# train:    ../shared/bench's anchors (plain compiled PyTorch, naive Lightning + DeepSpeed), then ours.
# Prepare on the dev machine (the GPU machine sees only the checkout):
#   mkdir -p .whl .anchor && cp ../shared/wheels/gpu-py312/*.whl .whl/ && cp ../shared/bench/*.py .anchor/
# then run it there with carry=[".whl", ".anchor"]. Each command is capped, so one hang cannot eat the budget.
set -uo pipefail
part=${1:-all}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# the benchmarks import only the training stack (no Prefect, tiktoken or corpus libraries)
python3 -c "import bench.train, bench.generate" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cap() { timeout "$1" "${@:2}" || echo "{\"failed\": \"${*:2}\", \"rc\": $?}"; }

if [[ $part == generate || $part == all ]]; then
  cap 240 python3 -m bench.generate model=gpt2 new_tokens=256                # goal: >= 10x HF generate (bf16)
  cap 120 python3 -m bench.generate model=gpt2 new_tokens=256 compile=false  # the eager decode step
fi
if [[ $part == train || $part == all ]]; then
  cap 240 python3 .anchor/gpu_anchor.py                                      # plain compiled PyTorch loop, HF
  cap 180 python3 .anchor/lightning_ds.py                                    # naive Lightning + DeepSpeed ZeRO-2
  cap 180 python3 -m bench.train model=gpt2 trainer=deepspeed_zero2          # goal: >= 1.1x own_compiled_124M
  cap 180 python3 -m bench.train model=gpt2 trainer=deepspeed_zero1
  cap 240 python3 -m bench.train model=gpt2-xl trainer=deepspeed_zero2 trainer.batch_size=8 \
    trainer.activation_checkpointing=true                                    # goal: MFU >= 0.45
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True cap 300 python3 -m bench.train memory_cap_gib=24 model=gpt2-xl \
    trainer=deepspeed_zero3_offload trainer.batch_size=4 trainer.max_steps=12  # gpt2-xl within 24 GiB
fi
