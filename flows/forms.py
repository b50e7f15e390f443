"""The run forms the Prefect UI shows for each deployment: the settings users change most, with the
types and ranges of `flows/schema.py` (the same field types, not a second schema), choices read
from `conf/`, and descriptions. A filled field becomes a Hydra override; an empty one keeps conf/'s
value; every other setting stays reachable through the flow's `overrides` list."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from flows import schema

CONF = Path(__file__).resolve().parent.parent / "conf"


def choices(group: str) -> Any:
    """The options of a conf/ group (its YAML files but `base`), as a Literal type: a dropdown."""
    return Literal[tuple(sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "base"))]


def typed(model: type[BaseModel], name: str) -> Any:
    """The schema's type of one setting, constraints included, made optional (empty: keep conf/'s)."""
    info = model.model_fields[name]
    return Optional[Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation]


def setting(key: str, description: str) -> Any:
    """An empty form field that becomes the override `key=value` when filled."""
    return Field(None, description=description, json_schema_extra={"override": key})


def group(name: str, description: str) -> Any:
    """An empty form field that picks an option of the conf/ group `name` when filled."""
    return Field(None, description=description, json_schema_extra={"override": name, "group": True})


def hydra_value(value: Any) -> str:
    """A value written in Hydra's override grammar."""
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        # in Hydra's quoted strings a backslash escapes only a quote, or backslashes before a quote or the end
        return "'" + re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


class Form(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_overrides(self) -> list[str]:
        """The filled fields as Hydra overrides (`model=gpt2`, `trainer.max_steps=20`)."""
        out = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is not None:
                extra = info.json_schema_extra
                out.append(f"{extra['override']}={value if extra.get('group') else hydra_value(value)}")
        return out


class CorpusForm(Form):
    corpus: choices("corpus") | None = group("corpus", "Corpus config in conf/corpus (dumps, filters, sizes)")
    source: typed(schema.Corpus, "source") = setting("corpus.source", "fetch: pages of the dumps' URLs; warc: WARC files")
    dumps: typed(schema.Corpus, "dumps") = setting("corpus.dumps", "Pushshift dump files (RS_*.zst/.xz/.bz2)")
    warc_files: typed(schema.Corpus, "warc_files") = setting("corpus.warc_files", "WARC files or s3:// URLs, with source=warc")
    runner: choices("runner") | None = group("runner", "local: one task at a time; dask: shards on Dask workers")
    n_workers: typed(schema.Runner, "n_workers") = setting("runner.n_workers", "Dask workers with runner=dask")


class TrainForm(Form):
    corpus: choices("corpus") | None = group("corpus", "Corpus to train on (built first when missing)")
    model: choices("model") | None = group("model", "Model size: gpt2-tiny (CPU demo), gpt2 (124M) … gpt2-xl (1.5B)")
    trainer: choices("trainer") | None = group("trainer", "cpu, gpu, ddp or a DeepSpeed ZeRO stage")
    max_steps: typed(schema.Trainer, "max_steps") = setting("trainer.max_steps", "Optimizer steps")
    init_from: typed(schema.Config, "init_from") = setting("init_from", "A transformers GPT-2 folder to fine-tune from")
    run_name: typed(schema.Config, "run_name") = setting("run_name", "Checkpoint folder name (resumes when it exists)")


class CheckpointForm(Form):
    """What reads a checkpoint: which one, by default the last of the run of this model size."""

    model: choices("model") | None = group("model", "Model size of the default checkpoint's run")
    checkpoint: typed(schema.Config, "checkpoint") = setting("checkpoint", "A .ckpt, DeepSpeed or transformers folder")


class EvaluateForm(CheckpointForm):
    corpus: choices("corpus") | None = group("corpus", "Corpus whose val split is scored")
    benchmarks_dir: typed(schema.Eval, "benchmarks_dir") = setting("eval.benchmarks_dir", "Folder of the GPT-2 paper's benchmark files")


class GenerateForm(CheckpointForm):
    prompt: typed(schema.Config, "prompt") = setting("prompt", "Text to continue")
    max_new_tokens: typed(schema.Config, "max_new_tokens") = setting("max_new_tokens", "Tokens to generate")
    temperature: typed(schema.Config, "temperature") = setting("temperature", "0: greedy")
    top_k: typed(schema.Config, "top_k") = setting("top_k", "Sample from the k likeliest tokens")
    top_p: typed(schema.Config, "top_p") = setting("top_p", "Nucleus sampling, in (0, 1]")
    num_samples: typed(schema.Config, "num_samples") = setting("num_samples", "Continuations to sample")


class ExportForm(CheckpointForm):
    export_dir: typed(schema.Config, "export_dir") = setting("export_dir", "Where the Hugging Face folder goes")


class PipelineForm(Form):
    corpus: choices("corpus") | None = group("corpus", "Corpus config in conf/corpus")
    model: choices("model") | None = group("model", "Model size")
    trainer: choices("trainer") | None = group("trainer", "cpu, gpu, ddp or a DeepSpeed ZeRO stage")
    max_steps: typed(schema.Trainer, "max_steps") = setting("trainer.max_steps", "Optimizer steps")


class RefreshForm(Form):
    corpus: choices("corpus") | None = group("corpus", "Corpus to add the new months to")
    dumps_dir: typed(schema.Refresh, "dumps_dir") = setting("corpus.refresh.dumps_dir", "Folder of monthly dumps")
