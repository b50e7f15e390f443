"""`make playground`: a local web page that samples from a checkpoint (and, with `playground.compare`,
from a second one beside it), streaming tokens as the continuous batch decodes them.

Each request is checked by the same schema as `make generate`'s settings (`flows.schema.Sampling`),
so the page refuses what the command line refuses, with the same message.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows.common import checkpoint_path, command
from flows.schema import Sampling, describe
from model.batching import BatchedGenerator, decoding_plan, leave_cores_to_decoders
from model.checkpoint import load_gpt


class PlaygroundRequest(Sampling):
    seed: int


def playground_checkpoints(cfg: dict[str, Any]) -> dict[str, str]:
    """The checkpoints to serve, by the name the page shows: `checkpoint` (default: the last of
    `run_name`), then `playground.compare` when set; each checked as `make generate` checks it."""
    first = checkpoint_path(cfg)
    found = {label(first): first}
    if cfg["playground"]["compare"]:
        path = checkpoint_path({**cfg, "checkpoint": cfg["playground"]["compare"]})
        found[label(path) if label(path) not in found else f"{label(path)} (compare)"] = path
    return found


def label(path: str) -> str:
    """A checkpoint's short name: its folder, or its run folder and file name."""
    p = Path(path)
    return p.name if p.is_dir() else f"{p.parent.name}/{p.name}"


def request_checker(limit: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A request's JSON as sampling settings, or ValueError naming each wrong field in one line."""
    def check(body: dict[str, Any]) -> dict[str, Any]:
        try:
            settings = PlaygroundRequest.model_validate(body).model_dump()
        except ValidationError as err:
            raise ValueError(describe(err.errors())) from None
        if settings["max_new_tokens"] > limit:
            raise ValueError(f"max_new_tokens={settings['max_new_tokens']}: at most {limit} here "
                             "(playground.max_new_tokens)")
        return settings
    return check


def build_app(cfg: dict[str, Any]) -> Any:
    """The playground's app for `cfg`: its checkpoints loaded, one continuous batch each."""
    from tasks.lm.playground import create_app

    settings, paths = cfg["playground"], playground_checkpoints(cfg)
    engines = {name: continuous_batch(load_gpt(path, cfg["device"], cfg["dtype"]), settings, len(paths))
               for name, path in paths.items()}
    defaults = {key: cfg[key] for key in Sampling.model_fields} | {"seed": cfg["seed"]}
    return create_app(engines, request_checker(settings["max_new_tokens"]), defaults)


def continuous_batch(model: Any, settings: dict[str, Any], engines: int = 1) -> BatchedGenerator:
    """The continuous batch of `model` as `playground` settings lay it out, one of `engines` served."""
    decoders, threads = decoding_plan(next(model.parameters()).device, settings["decoders"], engines)
    return BatchedGenerator(model, settings["batch"], decoders, threads)


def serve(cfg: dict[str, Any]) -> None:
    from tasks.lm.playground import run_server

    leave_cores_to_decoders()
    app = build_app(cfg)
    host, port = cfg["playground"]["host"], cfg["playground"]["port"]
    print(f"playground: http://{host}:{port}  (Ctrl+C stops it)", flush=True)
    run_server(app, host, port)


main = command(serve, playground_checkpoints)


if __name__ == "__main__":
    main()
