"""The run forms the Prefect UI shows for each deployment: a flow's parameters are the settings users
change most, each a plain typed field, then the advanced `overrides` list.

- A conf/ group (`model`, `trainer`, `corpus`, `runner`) is a dropdown preset to conf/'s pick.
- A setting with one default is preset to it; one whose default depends on another choice
  (`trainer.max_steps`: 300 for cpu, 5,000 for gpu) starts empty, its defaults named in its
  description, and stays conf/'s unless typed in.
- A field left at its preset, or empty (None, or an empty text or list), is no override: a run submitted untouched runs exactly
  conf/'s defaults. Any other value becomes one Hydra override (`model=gpt2`, `trainer.max_steps=5`).

Field types and ranges are those of `flows/schema.py`; the choices and presets are read from conf/.
"""
from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf
from pydantic import TypeAdapter, WithJsonSchema
from pydantic.json_schema import PydanticJsonSchemaWarning
from pydantic_core import core_schema

from flows import schema

CONF = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Override:
    """Marks a run-form parameter: the Hydra override its value becomes (`key=value`)."""

    key: str
    group: bool = False

    def render(self, value: Any) -> str:
        return f"{self.key}={value if self.group else hydra_value(value)}"


def field(type_: Any, key: str, description: str, group: bool = False) -> Any:
    """A run-form parameter of `type_`, shown as a plain field (never a choice between it and None:
    empty keeps conf/'s value) with `description`, becoming the override `key=value`."""
    shown = {**TypeAdapter(type_).json_schema(), "description": description}
    return Annotated[Optional[type_], WithJsonSchema(shown), Override(key, group)]


def typed(model: type[schema.Strict], name: str) -> Any:
    """The schema's type of one setting, its constraints included and None left out."""
    info = model.model_fields[name]
    kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    if get_origin(kind) not in (Union, UnionType):
        return kind
    members = tuple(m for m in get_args(kind) if m is not NoneType)
    return members[0] if len(members) == 1 else Union[members]


class Unset:
    """The schema default of a field that starts empty. pydantic cannot write it as JSON, so the field's
    JSON schema has no default: the Prefect UI then leaves it unset (null), which Prefect's validation
    allows for an optional field without a default, while a `null` default would be refused."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.any_schema(serialization=core_schema.plain_serializer_function_ser_schema(cls.refuse))

    @staticmethod
    def refuse(value: Any) -> None:
        raise ValueError("an empty run-form field has no JSON default")


warnings.filterwarnings("ignore", message=r"Default value <flows\.forms\.Unset", category=PydanticJsonSchemaWarning)


def run_form(flow: Any) -> Any:
    """A flow whose parameters are a run form: the schema Prefect builds from its signature shows its
    empty fields (default None) as unset, and its docstring describes `overrides`."""
    signature = inspect.signature(flow.fn, eval_str=True)
    flow.__signature__ = signature.replace(parameters=[
        p.replace(default=Unset()) if p.default is None else p for p in signature.parameters.values()])
    flow.__doc__ = flow.__doc__.rstrip() + f"\n\n    Args:\n        overrides: {OVERRIDES_HELP}\n"
    return flow


def choices(group: str) -> Any:
    """The options of a conf/ group (its YAML files but `base`), as a Literal type: a dropdown."""
    return Literal[tuple(sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "base"))]


@cache
def root_config() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))


def pick(group: str) -> str:
    """conf/config.yaml's choice for `group`: its dropdown's preset."""
    return next(entry[group] for entry in root_config()["defaults"] if isinstance(entry, dict) and group in entry)


def preset(key: str) -> Any:
    """conf/config.yaml's value of the top-level setting `key`: its field's preset."""
    return root_config()[key]


@cache
def by_choice(group: str, key: str) -> str:
    """`key`'s value under each option of `group`, for a description: '300 for cpu; 5000 for ddp, gpu'.
    Each option is composed alone (with its own defaults), a third of the time of the whole config."""
    from hydra import compose, initialize_config_dir

    values: dict[str, list[str]] = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in choices(group).__args__:
            config = compose(config_name=f"{group}/{option}")
            values.setdefault(str(OmegaConf.select(config, key)), []).append(option)
    return "; ".join(f"{value} for {', '.join(options)}" for value, options in values.items())


def hydra_value(value: Any) -> str:
    """A value written in Hydra's override grammar."""
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        # in Hydra's quoted strings a backslash escapes only a quote, or backslashes before a quote or the end
        return "'" + re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'") + "'"
    return str(value).lower() if isinstance(value, bool) else str(value)


@cache
def form_fields(flow_fn: Callable) -> list[tuple[str, Override, Any]]:
    """A flow's run-form fields: (name, its override, its preset), read once per flow."""
    hints = get_type_hints(flow_fn, include_extras=True)
    fields = []
    for name, parameter in inspect.signature(flow_fn).parameters.items():
        marker = next((m for m in getattr(hints.get(name), "__metadata__", ()) if isinstance(m, Override)), None)
        if marker:
            fields.append((name, marker, parameter.default))
    return fields


def form_overrides(flow_fn: Callable, values: dict[str, Any]) -> list[str]:
    """The Hydra overrides of a flow's run-form `values`: one per field set to other than its preset."""
    return [marker.render(values[name]) for name, marker, preset in form_fields(flow_fn)
            if values.get(name) not in (None, "", []) and values[name] != preset]


Corpus = field(choices("corpus"), "corpus", "Corpus config in conf/corpus (dumps, filters, sizes)", group=True)
Model = field(choices("model"), "model", "Model size: gpt2-tiny (CPU demo), gpt2 (124M) … gpt2-xl (1.5B)", group=True)
Trainer = field(choices("trainer"), "trainer", "cpu, gpu, ddp or a DeepSpeed ZeRO stage", group=True)
Runner = field(choices("runner"), "runner", "local: one task at a time on threads; dask: shards on Dask workers",
               group=True)

Source = field(typed(schema.Corpus, "source"), "corpus.source",
               "fetch: the pages of the dumps' URLs; warc: WARC files. Empty: the corpus config's")
FetchMode = field(typed(schema.Fetch, "mode"), "corpus.fetch.mode",
                  "live: today's web; archive: the capture nearest each submission (Common Crawl, else the Wayback "
                  "Machine); live_then_archive: the archives for what live could not get. Empty: the corpus config's")
Dumps = field(list[str], "corpus.dumps", "Pushshift dump files (RS_*.zst/.xz/.bz2). Empty: the corpus config's")
WarcFiles = field(list[str], "corpus.warc_files", "WARC files or s3:// URLs, with source warc")
Workers = field(typed(schema.Runner, "n_workers"), "runner.n_workers",
                "Dask worker processes started here, with runner dask")
MaxSteps = field(typed(schema.Trainer, "max_steps"), "trainer.max_steps",
                 f"Optimizer steps. Empty: the trainer's ({by_choice('trainer', 'trainer.max_steps')})")
InitFrom = field(str, "init_from", "A transformers GPT-2 folder to fine-tune from (the model size must match it)")
RunName = field(str, "run_name",
                "Checkpoint folder name; resumes when it exists. Empty: MODEL-CORPUS, as gpt2-tiny-demo")
Checkpoint = field(str, "checkpoint", "A .ckpt, DeepSpeed or transformers folder. Empty: the last of the run")
BenchmarksDir = field(str, "eval.benchmarks_dir", "Folder of the GPT-2 paper's benchmark files. Empty: val only")
Prompt = field(str, "prompt", "Text to continue")
MaxNewTokens = field(typed(schema.Sampling, "max_new_tokens"), "max_new_tokens", "Tokens to generate")
Temperature = field(typed(schema.Sampling, "temperature"), "temperature", "0: greedy")
TopK = field(typed(schema.Sampling, "top_k"), "top_k", "Sample from the k likeliest tokens (0: all)")
TopP = field(typed(schema.Sampling, "top_p"), "top_p",
             "Nucleus sampling, in (0, 1]. Empty: off")
NumSamples = field(typed(schema.Config, "num_samples"), "num_samples", "Continuations to sample")
ExportDir = field(str, "export_dir", "Where the Hugging Face folder goes. Empty: data/hf/RUN_NAME")
DumpsDir = field(str, "corpus.refresh.dumps_dir", "Folder of monthly dumps. Empty: the corpus config's")

OVERRIDES_HELP = "advanced: any other setting as Hydra overrides, e.g. [\"optim.lr=3e-4\"], applied after the fields"
