"""A user's mistake on the command line is one line on stderr and exit code 2, before any flow
starts; the settings' types and ranges come from flows/schema.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.common import load_config
from flows.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


MISTAKES = [
    ("flows.train", ["trainer.max_steps=abc"], "trainer.max_steps=abc: Input should be a valid integer"),
    ("flows.generate", ["top_p=1.5", "temperature=-1", "top_k=-5"], "temperature=-1"),
    ("flows.train", ["trainer.max_stepz=3"], "Could not override 'trainer.max_stepz'"),
    ("flows.train", ["+trainer.max_stepz=3"], "trainer.max_stepz: not an argument of pytorch_lightning.Trainer"),
    ("flows.playground", ["playground.decoders=0"], "playground.decoders=0: Input should be greater than 0 or 'auto'"),
    ("flows.train", ["trainer=gpux"], "Could not find 'trainer/gpux'"),
    ("flows.corpus", ["corpus=pushshift", "corpus.dumps=[/nonexistent/RS_x.zst]"], "dump /nonexistent/RS_x.zst does not exist"),
    ("flows.corpus", ["corpus.source=warc"], "corpus.source=warc needs corpus.warc_files"),
    ("flows.refresh", ["corpus.refresh.dumps_dir=/nonexistent/dumps"], "corpus.refresh.dumps_dir=/nonexistent/dumps does not exist"),
    ("flows.generate", [f"checkpoint={REPO / 'README.md'}"], "is not a checkpoint"),
    ("flows.evaluate", [], "no checkpoint at"),
    ("flows.train", ["trainer=gpu"], "needs a CUDA GPU and this machine has none"),
    ("flows.dashboard", [], "make dashboard saves a view to your W&B project"),
]


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory) -> dict:
    """Every mistake's command, started at once (each is mostly Python importing the stack), with the
    folder it must leave empty."""
    started = {}
    for n, (module, args, _) in enumerate(MISTAKES):
        data = tmp_path_factory.mktemp(f"mistake{n}")
        started[n] = (subprocess.Popen([sys.executable, "-m", module, f"paths.data={data}", "logger=none", *args],
                                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), data)
    yield started
    for proc, _ in started.values():
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("case", range(len(MISTAKES)), ids=[f"{m}-{' '.join(a)[:40]}" for m, a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_code_2(case, mistakes):
    module, args, says = MISTAKES[case]
    if "trainer=gpu" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: trainer=gpu is no mistake here")
    proc, data = mistakes[case]
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], stderr[-2000:]
    assert not (data / "corpus").exists()  # nothing ran


def test_every_shipped_config_group_passes_the_schema():
    for group in ("trainer", "model", "corpus", "logger", "runner"):
        for option in sorted((CONF / group).glob("*.yaml")):
            if option.stem != "base":
                load_config([f"{group}={option.stem}"])  # raises ConfigError when a shipped file breaks the schema


def test_the_schema_names_every_wrong_key_with_its_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(["top_p=0", "repetition_penalty=0", "model.n_head=5", "corpus.dedup.threshold=1.5",
                     "corpus.pipeline.extract._target_=os.system", "+fit.typo=1"])
    message = str(err.value)
    for part in ("top_p=0: Input should be greater than 0", "repetition_penalty=0:", "model: n_embd=128 must be a multiple of n_head=5",
                 "corpus.dedup.threshold=1.5", "corpus.pipeline.extract._target_=os.system", "fit.typo: unknown key"):
        assert part in message, message


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "random.bin", "is not a checkpoint"),
    (lambda d: REPO / "README.md", "is not a checkpoint"),
    (lambda d: d, "neither a transformers GPT-2 folder"),
    (lambda d: d / "absent.ckpt", "no checkpoint at"),
])
def test_something_that_is_not_a_checkpoint_is_refused_before_unpickling(tmp_path, make, says):
    from flows.common import checkpoint_path
    from tasks.errors import UserError

    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=says):
        checkpoint_path({"checkpoint": str(make(tmp_path)), "run_name": "x", "paths": {"data": str(tmp_path)}})


def test_benchmarks_asked_for_and_not_there_are_an_error(tmp_path):
    from flows.common import check_benchmarks
    from tasks.errors import MissingInput

    files = {"wikitext2": "wikitext-2-raw/wiki.test.raw", "ptb": "ptb/ptb.test.txt"}
    with pytest.raises(MissingInput, match="eval.benchmarks_dir=/nonexistent does not exist"):
        check_benchmarks("/nonexistent", files, "eval.benchmarks_dir")
    with pytest.raises(MissingInput, match="holds none of the benchmark files"):
        check_benchmarks(str(tmp_path), files, "eval.benchmarks_dir")
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text("a b c")
    check_benchmarks(str(tmp_path), files, "eval.benchmarks_dir")  # some of them: the others are skipped
    check_benchmarks(None, files, "eval.benchmarks_dir")  # none asked for


def test_a_checkpoint_written_by_training_passes_and_loads_with_weights_only(tmp_path):
    import torch

    from model.checkpoint import checkpoint_kind, load_gpt
    from model.lit import GPTLightning

    cfg = load_config(["logger=none"])
    module = GPTLightning(cfg["model"], cfg["optim"], 10, False, False)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6"}, tmp_path / "last.ckpt")
    assert checkpoint_kind(tmp_path / "last.ckpt") == "lightning"
    assert load_gpt(str(tmp_path / "last.ckpt")).num_params() == module.model.num_params()


def test_a_corpus_that_keeps_nothing_fails_with_its_funnel(tmp_path):
    dump = tmp_path / "RS_low.ndjson"  # every submission scored below corpus.urls.min_score
    dump.write_text('{"id": "a", "url": "https://example.com/a", "score": 0, "over_18": false, "is_self": false}\n')
    result = subprocess.run([sys.executable, "-m", "flows.corpus", f"paths.data={tmp_path}", "logger=none",
                             "corpus=pushshift", f"corpus.dumps=[{dump}]"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the corpus is empty") and "records read 1 -> URLs kept 0" in last, result.stderr[-2000:]
    assert "Prefect API: a temporary server at http://127.0.0.1:" in result.stderr  # the command's own, logged at INFO


def test_a_prefect_api_that_does_not_answer_is_one_line(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    result = subprocess.run([sys.executable, "-m", "flows.corpus", f"paths.data={tmp_path}", "logger=none"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the Prefect API at http://127.0.0.1:9/api did not answer within 1 s: is the server up? "
        "(PREFECT_API_URL names it; unset, a temporary one is started)"]


def test_training_on_a_corpus_smaller_than_one_block_is_refused(tmp_path):
    import json

    from flows.train import check_inputs
    from tasks.errors import UserError

    cfg = load_config([f"paths.data={tmp_path}", "logger=none"])
    tokens = tmp_path / "corpus" / "demo" / "tokens"
    tokens.mkdir(parents=True)
    (tokens / "manifest.json").write_text(json.dumps({"splits": {"train": [{"bin": "t.bin", "tokens": 100}], "val": []}}))
    with pytest.raises(UserError, match="has 100 train tokens, not one block of model.block_size=128"):
        check_inputs(cfg)
    (tokens / "manifest.json").write_text(json.dumps({"splits": {"train": [{"bin": "t.bin", "tokens": 700}], "val": []}}))
    with pytest.raises(UserError, match="has 5 windows of model.block_size=128, fewer than a batch of data.batch_size=8"):
        check_inputs(cfg)


@pytest.mark.parametrize("prompt", ["plain", "It's \"quoted\" \\ and a backslash", "a, b [c] = {d}", "ends\\"])
def test_a_run_form_becomes_the_overrides_that_compose_its_values(prompt):
    from flows.forms import form_overrides
    from flows.generate import generate_flow
    from flows.train import train_flow

    train = form_overrides(train_flow.fn, {"model": "gpt2", "trainer": "cpu", "max_steps": 20})
    assert train == ["model=gpt2", "trainer.max_steps=20"]  # trainer=cpu is conf/'s pick: no override
    cfg = load_config(train + form_overrides(generate_flow.fn, {"prompt": prompt, "top_p": 0.9, "top_k": 40}))
    assert (cfg["model"]["name"], cfg["trainer"]["max_steps"], cfg["prompt"], cfg["top_p"]) == ("gpt2", 20, prompt, 0.9)
    assert form_overrides(train_flow.fn, {}) == []  # an untouched form keeps conf/'s values


def test_a_run_form_value_out_of_range_fails_the_flow_run_before_it_starts():
    from prefect.exceptions import ParameterTypeError

    from flows.train import train_flow

    with pytest.raises(ParameterTypeError, match="greater than 0"):
        train_flow(max_steps=0)


def test_choosing_the_gpu_trainer_alone_trains_its_own_number_of_steps():
    from flows.forms import form_overrides
    from flows.train import train_flow

    assert load_config(form_overrides(train_flow.fn, {"trainer": "gpu"}))["trainer"]["max_steps"] == 5000


