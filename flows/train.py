"""Training flow: fit GPT-2 on the corpus token shards (building the demo corpus first if it is missing)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import cached, command, load_config, run_dir, token_dir
from flows.corpus import corpus_flow
from tasks import storage
from tasks.errors import UserError
from tasks.lm.train import train_task

TRAIN_SETTINGS = ("model", "optim", "trainer", "logger", "seed", "run_name", "prompt")


def corpus_dir(cfg: dict[str, Any]) -> str:
    """The token shards for `cfg.corpus`, running the corpus flow when they do not exist yet."""
    tokens = token_dir(cfg)
    if not storage.is_local(tokens):
        raise UserError(f"corpus.out_dir={cfg['corpus']['out_dir']}: training reads token shards from a local "
                         "folder; copy the corpus's tokens/ folder down and point corpus.out_dir at it")
    return tokens if Path(tokens, "manifest.json").exists() else corpus_flow(cfg)["data_dir"]


@flow(name="train", log_prints=True)
def train_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train `cfg.model` with `cfg.trainer`; returns the last checkpoint and the final metrics."""
    cfg = cfg or load_config(overrides)  # a deployment run passes Hydra overrides instead of a config
    settings = {k: cfg[k] for k in TRAIN_SETTINGS}
    result = cached(train_task, cfg)(settings, corpus_dir(cfg), str(run_dir(cfg)))
    print(f"checkpoint: {result['checkpoint']}  metrics: {result['metrics']}")
    return result


main = command(train_flow)


if __name__ == "__main__":
    main()
