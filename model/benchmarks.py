"""The zero-shot benchmarks of the GPT-2 paper's Table 3, read from local files in their public formats.

Each loader returns a `Benchmark`: the text to score, how many units (words, bytes, characters)
the paper normalises by, or, for LAMBADA and CBT, the examples to score one by one.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from model.evaluate import perplexity
from model.bpe import gpt2_encoding

# GPT-2 paper, Table 3: (117M, 345M, 762M, 1542M)
PAPER = {
    ("lambada", "perplexity"): (35.13, 15.60, 10.87, 8.63), ("lambada", "accuracy"): (45.99, 55.48, 60.12, 63.24),
    ("cbt-cn", "accuracy"): (87.65, 92.35, 93.45, 93.30), ("cbt-ne", "accuracy"): (83.4, 87.1, 88.0, 89.05),
    ("wikitext2", "perplexity"): (29.41, 22.76, 19.93, 18.34), ("ptb", "perplexity"): (65.85, 47.33, 40.31, 35.76),
    ("enwik8", "bits/byte"): (1.16, 1.01, 0.97, 0.93), ("text8", "bits/char"): (1.17, 1.06, 1.02, 0.98),
    ("wikitext103", "perplexity"): (37.50, 26.37, 22.05, 17.48), ("1bw", "perplexity"): (75.20, 55.72, 44.575, 42.16),
}
log = logging.getLogger(__name__)
PAPER_SIZES = {"gpt2": 0, "gpt2-medium": 1, "gpt2-large": 2, "gpt2-xl": 3}


@dataclass
class Benchmark:
    name: str
    metric: str
    text: str = ""
    units: int = 0  # what the metric is normalised by: words (+1 per line end), bytes or characters
    examples: list = field(default_factory=list)


# ---- detokenizers: undo the tokenisation of WikiText, PTB and 1BW, so the text reads like the web ----

def detokenize_wikitext(text: str) -> str:
    """WikiText's " @-@ ", spaced punctuation and " = Heading = " lines back to plain text."""
    for token, plain in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                         (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "), (" 's", "'s"), (" n't", "n't")):
        text = text.replace(token, plain)
    text = re.sub(r"\( ([^()]*?) \)", r"(\1)", text)
    text = re.sub(r"\[ ([^\[\]]*?) \]", r"[\1]", text)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    text = re.sub(r"(=+) (.*?) (=+)", r"\1 \2 \3", text)  # keep headings as they are, one space inside
    return text.replace(" \n", "\n").replace("\n ", "\n")


def detokenize_ptb(text: str) -> str:
    """PTB's split clitics and punctuation joined back; <unk> and N stay, as the paper left them."""
    for token, plain in ((" 's", "'s"), (" n't", "n't"), (" 're", "'re"), (" 've", "'ve"), (" 'll", "'ll"),
                         (" 'm", "'m"), (" 'd", "'d"), (" $ ", " $"), (" ,", ","), (" .", "."), (" ;", ";"), (" :", ":")):
        text = text.replace(token, plain)
    return text


def detokenize_1bw(text: str) -> str:
    """One Billion Word's spaced punctuation, quotes and clitics joined back."""
    text = detokenize_ptb(text)
    for token, plain in ((" !", "!"), (" ?", "?"), ("( ", "("), (" )", ")"), ("`` ", '"'), (" ''", '"')):
        text = text.replace(token, plain)
    return re.sub(r'" ([^"\n]*?) "', r'"\1"', text)


def word_count(raw: str) -> int:
    """The original token count: whitespace tokens plus one end-of-line token per non-empty line."""
    lines = [line for line in raw.split("\n") if line.strip()]
    return sum(len(line.split()) for line in lines) + len(lines)


# ---- loaders ----

def load_word_level(name: str, path: Path, detokenize: Callable[[str], str]) -> Benchmark:
    raw = path.read_text(encoding="utf-8")
    return Benchmark(name, "perplexity", detokenize(raw), word_count(raw))


def load_enwik8(path: Path, test_bytes: int = 5_000_000) -> Benchmark:
    """The last 5M bytes of enwik8 (the standard 90M/5M/5M split), scored in bits per byte."""
    data = path.read_bytes()[-test_bytes:]
    return Benchmark("enwik8", "bits/byte", data.decode("utf-8", errors="replace"), len(data))


def load_text8(path: Path, test_chars: int = 5_000_000) -> Benchmark:
    """The last 5M characters of text8, scored in bits per character."""
    text = path.read_text(encoding="utf-8")[-test_chars:]
    return Benchmark("text8", "bits/char", text, len(text))


def load_lambada(path: Path) -> Benchmark:
    """OpenAI's LAMBADA jsonl ({"text": ...} per line): predict each passage's last word."""
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            context, last = json.loads(line)["text"].rsplit(" ", 1)
            examples.append((context, " " + last))
    return Benchmark("lambada", "accuracy", examples=examples)


def load_cbt(name: str, path: Path) -> Benchmark:
    """Children's Book Test: 20 numbered context lines, then a question line holding XXXXX, the
    answer and the candidates, separated by tabs."""
    examples, context = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        number, _, rest = line.partition(" ")
        if "\t" in rest:
            question, answer, _, candidates = rest.split("\t")
            examples.append((detokenize_1bw(" ".join(context)), detokenize_1bw(question), answer,
                             [c for c in candidates.split("|") if c]))
            context = []
        else:
            context.append(rest)
    return Benchmark(name, "accuracy", examples=examples)


LOADERS: dict[str, Callable[[Path], Benchmark]] = {
    "wikitext2": lambda p: load_word_level("wikitext2", p, detokenize_wikitext),
    "wikitext103": lambda p: load_word_level("wikitext103", p, detokenize_wikitext),
    "ptb": lambda p: load_word_level("ptb", p, detokenize_ptb),
    "1bw": lambda p: load_word_level("1bw", p, detokenize_1bw),
    "enwik8": load_enwik8,
    "text8": load_text8,
    "lambada": load_lambada,
    "cbt-cn": lambda p: load_cbt("cbt-cn", p),
    "cbt-ne": lambda p: load_cbt("cbt-ne", p),
}


# ---- metrics ----

def available_benchmarks(cfg: dict) -> list[Benchmark]:
    """The benchmarks whose files are under `cfg.benchmarks_dir`; the missing ones are logged and skipped."""
    if not cfg["benchmarks_dir"]:
        return []
    found = []
    for name, relative in cfg["benchmarks"].items():
        path = Path(cfg["benchmarks_dir"]) / relative
        if path.exists():
            found.append(LOADERS[name](path))
        else:
            log.warning("benchmark %s skipped: %s not found", name, path)
    return found


def benchmark_text(bench: Benchmark) -> str:
    """All the text of a benchmark: its body, or its examples' contexts and targets."""
    return bench.text or "\n".join(" ".join(map(str, example[:2])) for example in bench.examples)


def total_nll(model: torch.nn.Module, text: str, context: int, stride: int) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of a text's BPE tokens, and how many were scored."""
    ids = torch.tensor(gpt2_encoding().encode_ordinary(text))
    ppl = perplexity(model, ids, context, stride)
    return math.log(ppl) * (ids.numel() - 1), ids.numel() - 1


def normalised(nll_nats: float, units: int, metric: str) -> float:
    """The paper's numbers: perplexity per original token, or bits per byte/character."""
    if metric == "perplexity":
        return math.exp(nll_nats / units)
    return nll_nats / units / math.log(2)


@torch.no_grad()
def continuation_logprob(model: torch.nn.Module, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context), and whether greedy decoding would produce it exactly."""
    enc = gpt2_encoding()
    ctx, cont = enc.encode_ordinary(context), enc.encode_ordinary(continuation)
    ids = torch.tensor([(ctx + cont)[-model.config.block_size:]], device=next(model.parameters()).device)
    logprobs = F.log_softmax(model(ids)[0, -len(cont) - 1:-1].float(), dim=-1)
    target = ids[0, -len(cont):]
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def lambada_scores(model: torch.nn.Module, bench: Benchmark) -> dict[str, float]:
    """Last-word accuracy (greedy, every token of the word right) and the last word's perplexity."""
    enc = gpt2_encoding()
    logprob, tokens, correct = 0.0, 0, 0
    for context, last in bench.examples:
        lp, exact = continuation_logprob(model, context, last)
        logprob, tokens, correct = logprob + lp, tokens + len(enc.encode_ordinary(last)), correct + exact
    return {"accuracy": 100 * correct / len(bench.examples), "perplexity": math.exp(-logprob / tokens)}


def cbt_accuracy(model: torch.nn.Module, bench: Benchmark) -> float:
    """Each candidate is put in the blank; the one that makes the question most likely wins."""
    correct = 0
    for context, question, answer, candidates in bench.examples:
        head, tail = question.split("XXXXX", 1)
        scores = {c: continuation_logprob(model, context + " " + head.rstrip(), " " + c + tail)[0] for c in candidates}
        correct += max(scores, key=scores.get) == answer
    return 100 * correct / len(bench.examples)


def score(model: torch.nn.Module, bench: Benchmark, context: int, stride: int) -> dict[str, float]:
    """The benchmark's metrics, in the paper's units."""
    if bench.name == "lambada":
        return lambada_scores(model, bench)
    if bench.name.startswith("cbt"):
        return {"accuracy": cbt_accuracy(model, bench)}
    nll, _ = total_nll(model, bench.text, context, stride)
    return {bench.metric: normalised(nll, bench.units, bench.metric)}


def results_table(results: dict[str, dict[str, float]], model_name: str) -> str:
    """Markdown: each metric beside the GPT-2 paper's four sizes, this model's size marked."""
    sizes = ["117M", "345M", "762M", "1542M"]
    mine = PAPER_SIZES.get(model_name)
    head = " | ".join(f"**{s}**" if i == mine else s for i, s in enumerate(sizes))
    rows = [f"| benchmark | metric | {model_name} | paper {head} |", "|---|---|---:|" + "---:|" * 4]
    for name, metrics in results.items():
        for metric, value in metrics.items():
            paper = " | ".join(f"{v:g}" for v in PAPER.get((name, metric), ("–",) * 4))
            rows.append(f"| {name} | {metric} | {value:.2f} | {paper} |")
    return "\n".join(rows)
