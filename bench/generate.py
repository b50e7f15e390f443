"""`make bench-generate`: decoding speed of model/sample.py beside transformers' generate, same
weights, batch 1, 256 new tokens, top-k 40, in the same run after a full-length warm-up.

    python -m bench.generate [model=gpt2] [new_tokens=256]
bf16 and a compiled fixed-shape decode step on a GPU, fp32 eager on the CPU. The first call after
loading (compilation included) is reported as time to first sample.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from transformers import GPT2LMHeadModel

from flows.common import load_config
from model import GPT, GPTConfig
from model.sample import generate


def timed(fn) -> float:
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - start


def main(args: list[str]) -> None:
    options = dict(a.split("=", 1) for a in args)
    m = load_config([f"model={options.get('model', 'gpt2')}"])["model"]
    new = int(options.get("new_tokens", 256))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=m["block_size"], n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"],
                         padded_vocab_size=50257))
    with tempfile.TemporaryDirectory() as folder:  # the very same weights for both
        ours.to_hf(folder)
        hf = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True)
    ours, hf = ours.to(device, dtype).eval(), hf.to(device, dtype).eval()
    prompt = torch.randint(0, 50257, (1, 32), device=device)

    compile = device == "cuda"  # CUDA graphs pay off on a GPU; on a CPU decoding is memory-bound

    def run_ours(seed: int = 0):
        generate(ours, prompt, new, temperature=1.0, top_k=40, generator=torch.Generator(device).manual_seed(seed),
                 compile=compile)

    def run_hf():
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=40, pad_token_id=0)

    first = timed(run_ours)
    run_hf()  # warm-up
    ours_s, hf_s = min(timed(run_ours) for _ in range(3)), min(timed(run_hf) for _ in range(3))
    result = {"name": f"generate_{m['name']}_bs1_topk40", "device": device, "new_tokens": new,
              "ours_tok_per_s": round(new / ours_s, 1), "hf_generate_tok_per_s": round(new / hf_s, 1),
              "ratio": round(hf_s / ours_s, 2), "ours_first_call_s": round(first, 2), "compiled": compile}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
