#!/usr/bin/env bash
# The GPU benchmarks, anchors beside ours, one JSON line per result, kept in
# bench/results/<date>-<gpu>.jsonl (and copied to the folder $OUT names, when set):
#   bash bench/gpu.sh [core] [xl] [generate]     (default: core)
# core:     ../shared/bench's anchors (plain compiled PyTorch; naive Lightning + DeepSpeed ZeRO-2), then
#           ours with trainer=gpu and trainer=deepspeed_zero2, gpt2, B16 x T1024, bf16: caps add up to 8 min.
# xl:       gpt2-xl MFU (ZeRO-2, activation checkpointing), and gpt2-xl in a 24 GiB cap with ZeRO-3 offload.
# generate: bench.generate beside transformers' generate, compiled (CUDA graphs) and eager.
# A run whose name is already in a results file for this GPU is skipped: a second call finishes the rest.
# Prepare on a machine with ../shared when the GPU machine sees only the checkout:
#   mkdir -p .whl .anchor && cp ../shared/wheels/gpu-py312/*.whl .whl/ && cp ../shared/bench/*.py .anchor/
# then copy the checkout with .whl and .anchor there and run it. Each command is capped, so one hang cannot eat the time.
# DRY_RUN=1 runs every step on the CPU with tiny sizes, to check the script itself (RESULTS_DIR: where to keep them).
set -uo pipefail
parts=${*:-core}
dry=${DRY_RUN:-0}
if [[ $dry == 0 ]]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
else
  gpu=dry-run-cpu
fi
# the benchmarks import only the training stack (no Prefect, tiktoken or corpus libraries)
python3 -c "import bench.train, bench.generate" || exit 1
slug=$(echo "$gpu" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
resdir=${RESULTS_DIR:-bench/results}
[[ $dry == 0 || -n ${RESULTS_DIR:-} ]] || resdir=$(mktemp -d)  # a dry run's figures mean nothing: not kept
mkdir -p "$resdir"
results=$resdir/$(date +%F)-$slug.jsonl
echo "GPU: $gpu; results in $results"

# run NAME CAP_S COMMAND...: unless NAME is in a results file of this GPU, run COMMAND under a time cap and
# append each JSON line it prints, tagged with NAME, the GPU and the date.
run() {
  local name=$1 cap=$2; shift 2
  if grep -qs "\"run\": \"$name\"" "$resdir"/*-"$slug".jsonl; then echo "skip $name: measured already"; return; fi
  echo "run $name (cap ${cap}s): $*"
  timeout "$cap" "$@" | python3 -c '
import json, sys, datetime
for line in sys.stdin:
    print(line, end="", file=sys.stderr)
    if line.startswith("{"):
        print(json.dumps({"run": sys.argv[1], "gpu": sys.argv[2], "date": str(datetime.date.today()), **json.loads(line)}))
' "$name" "$gpu" >> "$results"
  local rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || echo "{\"run\": \"$name-failed\", \"gpu\": \"$gpu\", \"rc\": $rc}" >> "$results"
}

if [[ $dry == 1 ]]; then  # the same steps, tiny, on the CPU
  tiny=(model=gpt2-tiny trainer=cpu trainer.max_steps=10)
  run dry-ours-cpu 300 python3 -m bench.train "${tiny[@]}"
  run dry-generate 300 python3 -m bench.generate model=gpt2-tiny new_tokens=16
else
  for part in $parts; do
    case $part in
      core)
        run anchor-plain-compiled 200 python3 .anchor/gpu_anchor.py                  # own_compiled_124M: the anchor
        run anchor-naive-lightning-ds 100 python3 .anchor/lightning_ds.py           # naive Lightning + DeepSpeed ZeRO-2
        run ours-gpu 90 python3 -m bench.train model=gpt2 trainer=gpu              # beside own_compiled_124M
        run ours-zero2 90 python3 -m bench.train model=gpt2 trainer=deepspeed_zero2  # beside both
        ;;
      xl)
        run ours-xl-zero2-ckpt 240 python3 -m bench.train model=gpt2-xl trainer=deepspeed_zero2 \
          data.batch_size=8 fit.activation_checkpointing=true               # its MFU
        run ours-xl-zero3-offload-24GiB 300 env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 -m bench.train \
          memory_cap_gib=24 model=gpt2-xl trainer=deepspeed_zero3_offload data.batch_size=4 trainer.max_steps=12
        ;;
      generate)
        run ours-generate-compiled 240 python3 -m bench.generate model=gpt2 new_tokens=256  # beside HF generate (bf16)
        run ours-generate-eager 120 python3 -m bench.generate model=gpt2 new_tokens=256 compile=false
        ;;
      *) echo "unknown part $part: use core, xl or generate"; exit 2 ;;
    esac
  done
fi
if [[ -n ${OUT:-} ]]; then cp "$results" "$OUT/"; fi
