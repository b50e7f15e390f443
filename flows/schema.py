"""The typed shape of the Hydra config: every group's keys, types and allowed ranges (`trainer`'s
keys are pytorch_lightning.Trainer's arguments: those the code reads are typed here, and the train
command checks every one against the Trainer's signature).

`check(cfg)` runs after Hydra composes a config and before any flow starts; a wrong type, an unknown
key or a value out of range becomes one `ConfigError` line naming the key, the value and what is
allowed. The values themselves live in `conf/` only.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import UserError

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(UserError):
    """A setting that is not allowed, said in one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Paths(Strict):
    data: str


class Optim(Strict):
    lr: Annotated[float, Field(gt=0)]
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_steps: NonNegative
    min_lr_ratio: Fraction


class Model(Strict):
    name: str
    block_size: Positive
    n_layer: Positive
    n_head: Positive
    n_embd: Positive
    padded_vocab_size: Annotated[int, Field(ge=50257)] = 50304  # the model code's default
    dropout: Annotated[float, Field(ge=0, lt=1)]
    lr: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def heads_divide_width(self) -> Model:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        return self


class Trainer(BaseModel):
    """pytorch_lightning.Trainer's arguments: the ones the code reads, typed here; every key is checked
    against the Trainer's signature before training starts (`flows.train.check_trainer`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: Annotated[str, Field(alias="_target_")]
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"]
    devices: int | str | list[int]
    num_nodes: Positive
    max_steps: Positive
    accumulate_grad_batches: Positive


class Data(Strict):
    batch_size: Positive
    global_batch_tokens: Positive | None
    num_workers: NonNegative
    sampling: Literal["shuffle", "random"]
    shuffle_buffer: Positive
    cache_dir: str
    cache_gb: Annotated[float, Field(gt=0)]


class Callbacks(Strict):
    checkpoint_every_n_steps: Positive
    sample_every_n_steps: NonNegative
    peak_flops: Annotated[float, Field(gt=0)] | None


class Fit(Strict):
    compile: bool
    activation_checkpointing: bool
    resume: bool


class Logger(Strict):
    enabled: bool
    project: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    save_dir: str | None = None
    log_model: bool | None = None


class Eval(Strict):
    context: Positive
    stride: Positive | None
    max_tokens: Positive
    device: str
    dtype: Literal["float32", "bfloat16", "float16"]
    cache_dir: str
    cache_gb: Annotated[float, Field(gt=0)]
    benchmarks_dir: str | None
    benchmarks: dict[str, str]


class Runner(Strict):
    type: Literal["dask", "threads"]
    address: str | None = None
    n_workers: Positive | None = None
    max_workers: Positive | None = None
    dask_config: dict[str, Any] | None = None


class Refresh(Strict):
    dumps_dir: str
    pattern: str
    dump_urls: list[str]


class Urls(Strict):
    min_score: int
    skip_bad_dumps: bool
    blocked_domains: list[str]
    blocked_extensions: list[str]
    tracking_params: list[str]


class CommonCrawl(Strict):
    base: str
    collinfo: str
    batch_keys: Positive
    concurrency: Positive
    max_gap: NonNegative


class Wayback(Strict):
    enabled: bool
    cdx: str
    replay: str
    requests_per_s: Annotated[float, Field(gt=0)]


class Archive(Strict):
    max_days: Positive
    commoncrawl: CommonCrawl
    wayback: Wayback


class Fetch(Strict):
    mode: Literal["live", "archive", "live_then_archive"]
    concurrency: Positive
    per_host: Positive
    connect_timeout_s: Annotated[float, Field(gt=0)]
    read_timeout_s: Annotated[float, Field(gt=0)]
    total_timeout_s: Annotated[float, Field(gt=0)]
    retries: NonNegative
    backoff_s: Annotated[float, Field(ge=0)]
    max_retry_wait_s: Annotated[float, Field(ge=0)]
    max_redirects: NonNegative
    max_bytes: Positive
    slow_after_s: Annotated[float, Field(ge=0)]
    min_bytes_per_s: Annotated[float, Field(ge=0)]
    max_network_failure_share: Fraction
    connectivity_url: str | None
    task_retries: NonNegative
    task_retry_delay_s: Annotated[float, Field(ge=0)]
    allow_addresses: list[str]
    user_agent: str
    proxy: str | None
    archive: Archive


class Step(BaseModel):
    """One step of `corpus.pipeline`, by name: its class and its settings (checked by the class itself)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: Annotated[str, Field(alias="_target_", pattern=r"^tasks\.corpus\.\w+\.\w+$")]
    enabled: bool = True


class Dedup(Strict):
    threshold: Annotated[float, Field(gt=0, lt=1)]
    ngram: Positive
    bands: Positive
    rows: Positive
    max_bucket: Positive
    chunk_docs: Positive
    against: list[str]


class Tokenize(Strict):
    min_tokens: NonNegative
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    shard_tokens: Positive


class Corpus(Strict):
    name: str
    source: Literal["fetch", "warc"]
    dumps: list[str]
    warc_files: list[str]
    refresh: Refresh
    out_dir: str
    seen_urls_dir: str | None
    shard_docs: Positive
    shard_bytes: Positive
    serve_sample_web: bool
    max_error_share: Fraction
    urls: Urls
    fetch: Fetch
    pipeline: dict[str, Step]
    dedup: Dedup
    tokenize: Tokenize


class S3(Strict):
    attempts: Positive
    botocore_attempts: Positive
    connect_timeout: Annotated[float, Field(gt=0)]
    read_timeout: Annotated[float, Field(gt=0)]


class Store(Strict):
    retries: NonNegative
    backoff_s: Annotated[float, Field(ge=0)]
    max_backoff_s: Annotated[float, Field(ge=0)]
    task_retries: NonNegative
    task_retry_delay_s: Annotated[float, Field(ge=0)]
    read_ahead: Positive
    block_size: Positive
    s3: S3


class Sampling(Strict):
    """How text is sampled: by `make generate` and by each request to the playground alike."""

    prompt: str
    max_new_tokens: Positive
    temperature: Annotated[float, Field(ge=0)]
    top_k: NonNegative | None
    top_p: Annotated[float, Field(gt=0, le=1)] | None
    repetition_penalty: Annotated[float, Field(gt=0)]


class Playground(Strict):
    host: str
    port: Annotated[int, Field(ge=0, le=65535)]
    batch: Positive
    decoders: Positive | Literal["auto"]
    max_new_tokens: Positive
    compare: str | None


class Config(Sampling):
    paths: Paths
    seed: int
    refresh: bool
    run_name: str
    optim: Optim
    checkpoint: str | None
    init_from: str | None
    export_dir: str
    num_samples: Positive
    compile_decode: bool | Literal["auto"]
    device: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    corpus: Corpus
    model: Model
    trainer: Trainer
    data: Data
    callbacks: Callbacks
    fit: Fit
    logger: Logger
    eval: Eval
    runner: Runner
    store: Store
    playground: Playground


def check(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` unchanged when every key is allowed, else ConfigError: one line per wrong key."""
    try:
        Config.model_validate(cfg)
    except ValidationError as err:
        raise ConfigError(describe(err.errors())) from None
    return cfg


def describe(errors: list[dict[str, Any]]) -> str:
    """'trainer.max_steps=abc: Input should be a valid integer' per wrong key, joined by '; '. The
    members of a union that all refused one value make one line: 'Input should be greater than 0
    or 'auto''."""
    lines: dict[str, list[str]] = {}
    for error in errors:
        head, message = describe_one(error)
        lines.setdefault(head, []).append(message)
    return "; ".join(f"{head}: {messages[0]}" + "".join(f" or {m.removeprefix('Input should be ')}" for m in messages[1:])
                     for head, messages in lines.items())


def describe_one(error: dict[str, Any]) -> tuple[str, str]:
    """A validation error as 'key=value' (or 'key') and its message."""
    loc = [str(part) for part in error["loc"] if not union_member(str(part))]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        return key, "unknown key (a typo? see conf/)"
    if error["type"] == "missing":
        return key, "missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    return (key if isinstance(value, (dict, list)) else f"{key}={value}"), message


def union_member(part: str) -> bool:
    """Whether a part of an error's location names a member of a union type, not a key:
    'function-after[…]', "literal['auto']", 'constrained-int', 'bool'."""
    return part.startswith(("function-after", "tagged-union")) or any(c in part for c in "[-'") or \
        part in ("bool", "int", "float", "str")
