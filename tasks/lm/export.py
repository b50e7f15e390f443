"""Export stage: a checkpoint as a Hugging Face folder that `transformers.pipeline("text-generation",
model=folder)` loads offline: weights, GPT-2's tokenizer and a model card."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from model.bpe import hf_tokenizer
from model.checkpoint import load_gpt, training_state


def export_hf(checkpoint: str, out_dir: str) -> str:
    """Write `checkpoint` to `out_dir` (weights, tokenizer, README.md); returns the folder."""
    load_gpt(checkpoint, pack=False).to_hf(out_dir)
    hf_tokenizer().save_pretrained(out_dir)
    (Path(out_dir) / "README.md").write_text(model_card(training_facts(checkpoint), checkpoint))
    return out_dir


def training_facts(checkpoint: str) -> dict[str, Any]:
    """Steps, hyperparameters, last metrics and the corpus (`Manifest.identity`) of a training
    checkpoint, as it recorded them (empty for a transformers folder)."""
    saved = training_state(checkpoint)
    return {"steps": saved.get("global_step"), "hparams": saved.get("hyper_parameters", {}),
            "metrics": saved.get("metrics", {}), "corpus": saved.get("corpus", {})}


def model_card(facts: dict[str, Any], checkpoint: str) -> str:
    """A short Markdown model card: what the model is, what it was trained on, how far, how well."""
    model = facts.get("hparams", {}).get("model", {})
    metrics, corpus = facts.get("metrics", {}), facts.get("corpus", {})
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [gpt2, opengpt2]", "---", "",
             f"# {model.get('name', 'opengpt2 model')}", "",
             "A GPT-2 trained by [opengpt2](https://github.com/opengpt2) on an OpenWebText-style corpus.", "",
             "| | |", "|---|---|",
             f"| architecture | GPT-2, {model.get('n_layer', '?')} layers, {model.get('n_head', '?')} heads, "
             f"width {model.get('n_embd', '?')}, context {model.get('block_size', '?')} |",
             f"| corpus | {corpus.get('name', 'unknown')}{', version ' + str(corpus['version']) if 'version' in corpus else ''}"
             f", {corpus.get('train_tokens', 0):,} train tokens (manifest sha256 {corpus.get('manifest_sha256', '?')[:12]}) |",
             f"| training steps | {facts.get('steps', 'unknown')} |"]
    if "val/loss" in metrics:
        lines.append(f"| val loss / perplexity (windowed, at the last validation) | {metrics['val/loss']:.3f} / "
                     f"{math.exp(metrics['val/loss']):.2f} |")
    if "train/loss" in metrics:
        lines.append(f"| last train loss | {metrics['train/loss']:.3f} |")
    lines += [f"| exported from | `{checkpoint}` |", "",
              "Tokenizer: GPT-2's byte-level BPE (50,257 ids, `<|endoftext|>` = 50256).", ""]
    return "\n".join(lines)
