"""The GPT-2 paper's benchmarks on small files written here in each dataset's public format."""
import json
import math
from collections import Counter

import pytest
import torch

from model import GPT, GPTConfig
from model.benchmarks import (LOADERS, cbt_accuracy, detokenize_1bw, detokenize_ptb, detokenize_wikitext,
                              lambada_scores, normalised, results_table, score, word_count)
from tasks.corpus.contamination import Decontaminate, ngram_filter, overlap
from tasks.corpus.document import Document
from model.bpe import gpt2_encoding

WIKITEXT = """ 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) is a tactical role @-@ playing game . It sold 1 @,@ 000 copies at $ 3 @.@ 5 each , he said . 
"""
PTB = " aer banknote berlitz calloway centrust \n pierre <unk> N years old will join the board as a nonexecutive director nov. N \n it 's what they do n't say \n"
LAMBADA = [{"text": "She opened the door and saw the dog . It was the"}, {"text": "He looked at the"},
           {"text": "the cat sat on the mat and the dog sat on the dog"}]
CBT = "\n".join([f"{i} Line {i} of the story about Mary and the dog ." for i in range(1, 21)]
                + ["21 Then XXXXX went home .\tMary\t\tdog|Mary|story", ""])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(WIKITEXT)
    (tmp_path / "ptb.test.txt").write_text(PTB)
    (tmp_path / "lambada.jsonl").write_text("\n".join(json.dumps(x) for x in LAMBADA))
    (tmp_path / "enwik8").write_bytes(b"<page>caf\xc3\xa9</page>" * 10)
    (tmp_path / "text8").write_text("anarchism originated as a term of abuse " * 5)
    (tmp_path / "cbt.txt").write_text(CBT)
    return tmp_path


def test_wikitext_detokenizer():
    assert detokenize_wikitext(" role @-@ playing game . It sold 1 @,@ 000 copies at 3 @.@ 5 , ( Japanese ) ") == \
        " role-playing game. It sold 1,000 copies at 3.5, (Japanese) "


def test_ptb_and_1bw_detokenizers():
    assert detokenize_ptb("it 's what they do n't say , really .") == "it's what they don't say, really."
    assert detokenize_1bw("He said `` no way '' ( twice ) !") == 'He said "no way" (twice)!'


def test_word_count_adds_one_end_of_line_token_per_line():
    assert word_count(" a b c \n\n d e \n") == 3 + 2 + 2


def test_metric_arithmetic_by_hand():
    nll = 1000 * math.log(2)  # 1000 bits
    assert normalised(nll, 500, "bits/byte") == pytest.approx(2.0)
    assert normalised(nll, 1000, "bits/char") == pytest.approx(1.0)
    assert normalised(10.0, 5, "perplexity") == pytest.approx(math.exp(2.0))


def test_loaders_read_the_public_formats(files):
    wiki = LOADERS["wikitext2"](files / "wiki.test.raw")
    assert "role-playing game." in wiki.text and wiki.units == word_count(WIKITEXT)
    ptb = LOADERS["ptb"](files / "ptb.test.txt")
    assert "it's what they don't say" in ptb.text and ptb.units == 5 + 15 + 7 + 3
    lambada = LOADERS["lambada"](files / "lambada.jsonl")
    assert lambada.examples[0] == ("She opened the door and saw the dog . It was", " the")
    enwik8 = LOADERS["enwik8"](files / "enwik8")
    assert enwik8.units == len(b"<page>caf\xc3\xa9</page>") * 10 and "café" in enwik8.text
    assert LOADERS["text8"](files / "text8").units == len("anarchism originated as a term of abuse " * 5)
    [(context, question, answer, candidates)] = LOADERS["cbt-cn"](files / "cbt.txt").examples
    assert context.startswith("Line 1 of") and question == "Then XXXXX went home." and answer == "Mary"
    assert candidates == ["dog", "Mary", "story"]


class Prefers(torch.nn.Module):
    """A GPT that strongly prefers one token everywhere."""

    def __init__(self, token: int):
        super().__init__()
        torch.manual_seed(0)
        self.gpt, self.token = GPT(GPTConfig(block_size=128, n_layer=1, n_head=2, n_embd=16)), token
        self.config = self.gpt.config

    def forward(self, ids, cache=None):
        logits = self.gpt(ids)
        logits[..., self.token] += 100.0
        return logits


def test_lambada_accuracy_counts_exact_greedy_last_words(files):
    the = gpt2_encoding().encode_ordinary(" the")[0]
    scores = lambada_scores(Prefers(the), LOADERS["lambada"](files / "lambada.jsonl"))
    assert scores["accuracy"] == pytest.approx(200 / 3)  # two passages end in " the", one in " dog"
    # per last-word token: the two " the" cost almost nothing, the " dog" the +100 logit it lost to " the"
    assert 90 / 3 < math.log(scores["perplexity"]) < 110 / 3


def test_cbt_picks_the_candidate_the_model_prefers(files):
    bench = LOADERS["cbt-cn"](files / "cbt.txt")
    mary = gpt2_encoding().encode_ordinary(" Mary")[0]
    assert cbt_accuracy(Prefers(mary), bench) == 100.0
    dog = gpt2_encoding().encode_ordinary(" dog")[0]
    assert cbt_accuracy(Prefers(dog), bench) == 0.0


def test_scores_of_a_uniform_model(files):
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16))
    torch.nn.init.zeros_(model.lm_head.weight)  # every token equally likely: log(50257) nats each
    bench = LOADERS["text8"](files / "text8")
    n_tokens = len(gpt2_encoding().encode_ordinary(bench.text)) - 1
    expected = n_tokens * math.log(50257) / bench.units / math.log(2)
    assert score(model, bench, 64, 32)["bits/char"] == pytest.approx(expected, rel=1e-4)


def test_results_table_sits_beside_the_paper():
    table = results_table({"wikitext2": {"perplexity": 31.0}, "lambada": {"accuracy": 40.0}}, "gpt2")
    assert "| wikitext2 | perplexity | 31.00 | 29.41 | 22.76 | 19.93 | 18.34 |" in table
    assert "**117M**" in table


def test_contamination_overlap_and_drop(tmp_path):
    train = ["the quick brown fox jumps over the lazy dog near the river bank today"]
    bloom = ngram_filter(train, expected=100)
    assert overlap(bloom, "The quick brown fox jumps over the lazy dog near the river") == 1.0
    assert overlap(bloom, "a completely different sentence with more than eight words in it") == 0.0
    (tmp_path / "wiki.test.raw").write_text("one two three four five six seven eight nine ten")
    step = Decontaminate(str(tmp_path), {"wikitext2": "wiki.test.raw"}, max_overlap=0.5)
    docs = [Document(id="a", url="a", text="one two three four five six seven eight nine ten eleven"),
            Document(id="b", url="b", text="nothing in common with the evaluation set at all, honestly")]
    stats = Counter()
    assert [d.id for d in step(docs, stats)] == ["b"]
    assert stats == Counter({"decontaminate/in": 2, "decontaminate/kept": 1, "decontaminate/overlaps_eval": 1})
