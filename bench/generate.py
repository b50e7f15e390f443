"""`make bench-generate`: decoding speed of model/sample.py beside transformers' generate, same
weights, batch 1, 256 new tokens, top-k 40, in the same run after a full-length warm-up.

    python -m bench.generate [model=gpt2] [new_tokens=256] [dtype=auto] [compile=auto]
dtype auto: bf16 on a GPU, fp32 on a CPU. compile auto: the fixed-shape step under torch.compile
(CUDA graphs) on a GPU, eager on a CPU, where decoding is memory-bound. The first call after
loading (compilation included) is reported separately, as time to first sample, for both.
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
from model.checkpoint import compiled_decoding, inference_device, inference_dtype
from model.sample import generate

PROMPT_TOKENS = 32


def timed(fn) -> tuple[float, int]:
    """Seconds taken by `fn` and the number of new tokens it returned."""
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - start, out.shape[1] - PROMPT_TOKENS


def rate(run: tuple[float, int]) -> float:
    return round(run[1] / run[0], 1)


def main(args: list[str]) -> None:
    options = dict(a.split("=", 1) for a in args)
    m = load_config([f"model={options.get('model', 'gpt2')}"])["model"]
    new = int(options.get("new_tokens", 256))
    device = inference_device("auto")
    dtype = inference_dtype(options.get("dtype", "auto"), device)
    setting = options.get("compile", "auto")
    compile = compiled_decoding({"true": True, "false": False}.get(setting, setting), device)
    torch.manual_seed(0)
    ours = GPT(GPTConfig.from_settings(m, padded_vocab_size=50257))
    with tempfile.TemporaryDirectory() as folder:  # the very same weights for both
        ours.to_hf(folder)
        hf = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True)
    ours, hf = ours.to(device, dtype).eval().pack_for_cpu(), hf.to(device, dtype).eval()  # ours as load_gpt gives it
    prompt = torch.randint(0, 50257, (1, PROMPT_TOKENS), device=device)

    def run_ours(seed: int = 0) -> torch.Tensor:
        return generate(ours, prompt, new, temperature=1.0, top_k=40,
                        generator=torch.Generator(device).manual_seed(seed), compile=compile)

    def run_hf() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=40,
                               pad_token_id=0)

    ours_first, hf_first = timed(run_ours), timed(run_hf)
    ours_runs, hf_runs = [], []
    for _ in range(3):  # alternating, so that both see the same machine
        ours_runs.append(timed(run_ours))
        hf_runs.append(timed(run_hf))
    ours_best, hf_best = max(ours_runs, key=rate), max(hf_runs, key=rate)
    result = {"name": f"generate_{m['name']}_bs1_topk40", "device": torch.cuda.get_device_name() if device.type == "cuda"
              else device.type, "dtype": str(dtype).removeprefix("torch."), "compiled": compile,
              "new_tokens": ours_best[1], "ours_tok_per_s": rate(ours_best), "hf_generate_tok_per_s": rate(hf_best),
              "ratio": round(rate(ours_best) / rate(hf_best), 2),
              "ours_first_sample_s": round(ours_first[0], 2), "hf_first_sample_s": round(hf_first[0], 2)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
