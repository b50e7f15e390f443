#!/usr/bin/env bash
# One GPU run of every training and generation benchmark, anchors first, one JSON line per result.
# Prepare on the dev machine (the GPU machine sees only the checkout):
#   mkdir -p .whl .anchor && cp ../shared/wheels/gpu-py312/*.whl .whl/ && cp ../shared/bench/*.py .anchor/
# then run `bash bench/gpu.sh` there with carry=[".whl", ".anchor"].
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# the benchmarks import only the training stack (no Prefect, tiktoken or corpus libraries)
python3 -c "import bench.train, bench.generate" || exit 1
python3 .anchor/gpu_anchor.py                                    # plain compiled PyTorch loop, HF, HF generate
python3 -m bench.generate model=gpt2 new_tokens=256               # goal: >= 10x HF generate (compiled, bf16)
python3 -m bench.generate model=gpt2 new_tokens=256 compile=false # the eager decode step, for comparison
python3 .anchor/lightning_ds.py                                  # naive Lightning + DeepSpeed ZeRO-2
python3 -m bench.train model=gpt2 trainer=deepspeed_zero2        # goal: >= 1.1x own_compiled_124M
python3 -m bench.train model=gpt2 trainer=deepspeed_zero1
python3 -m bench.train model=gpt2-xl trainer=deepspeed_zero2 trainer.batch_size=8 trainer.activation_checkpointing=true  # goal: MFU >= 0.45
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 -m bench.train memory_cap_gib=24 model=gpt2-xl \
  trainer=deepspeed_zero3_offload trainer.batch_size=4 trainer.max_steps=12   # gpt2-xl within 24 GiB
