"""Cache keys for file-exchanging stages (input file identities by size and mtime, settings and the
stage's code), for Prefect's cache and for the done markers that shards leave."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from prefect.cache_policies import CachePolicy
from pydantic import TypeAdapter

from tasks import storage

log = logging.getLogger(__name__)
T = TypeVar("T")


def _file_keys(value: Any) -> Any:
    """Paths or store URLs of existing files or folders (strings with a `/`), alone, in lists, dicts or
    records (dataclasses), replaced by their `file_key`: names, sizes and mtimes (or ETags), never a
    hash of the bytes (inputs are many GB at scale)."""
    if isinstance(value, (list, tuple)):
        return [_file_keys(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        value = as_json(value)
    if isinstance(value, dict):
        return {k: _file_keys(v) for k, v in value.items()}
    is_file = (isinstance(value, str) and "/" in value and not value.startswith(("http://", "https://"))
               and storage.exists(value))
    return storage.file_key(value) if is_file else value


def as_json(value: Any) -> Any:
    """A record (a dataclass) as the dict JSON holds; anything else as its text."""
    return {f.name: getattr(value, f.name) for f in fields(value)} if is_dataclass(value) else str(value)


def targets(value: Any) -> list[ModuleType]:
    """The modules of every `_target_` in a setting (a step of `corpus.pipeline`), imported."""
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in targets(v)]
    if not isinstance(value, dict):
        return []
    own = [importlib.import_module(value["_target_"].rsplit(".", 1)[0])] if "_target_" in value else []
    return own + [m for v in value.values() for m in targets(v)]


PROJECT_PACKAGES = {"tasks", "model", "flows", "sample"}


def code_version(*modules: ModuleType) -> str:
    """Hash of the modules' source and of every project module they use, directly or not."""
    todo, seen = list(modules), {}
    while todo:
        mod = todo.pop()
        if mod.__name__ in seen:
            continue
        seen[mod.__name__] = inspect.getsource(mod)
        for value in vars(mod).values():
            dep = value if isinstance(value, ModuleType) else sys.modules.get(getattr(value, "__module__", "") or "")
            if dep is not None and dep.__name__.split(".")[0] in PROJECT_PACKAGES:
                todo.append(dep)
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()


@dataclass
class FilesAndCode(CachePolicy):
    """Key = size and mtime of the input files named in `files` (and of the files their settings
    point at) + the other inputs + the code of the task (or of the module of `code`, the work it
    hands over) and of the steps its inputs name by `_target_`.

    Parameters in `exclude` (such as a proxy address that changes every run) are not keyed.
    Results are stored beside the outputs (see `flows.common.cached`), so removing the data
    folder removes the cache with it.
    """

    files: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    code: Callable | None = None  # the function whose module's code is keyed, when not the task's own

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        if task_ctx is None:
            return None
        keyed = {k: v for k, v in inputs.items() if k not in self.exclude}
        try:
            return fingerprint(keyed, self.files, inspect.getmodule(self.code or task_ctx.task.fn))
        except storage.StoreError as err:  # no key, no cache: the task runs and meets the error itself
            log.warning("%s: not cached this time, its input could not be looked up: %s", task_ctx.task.name, err)
            return None


def fingerprint(inputs: dict[str, Any], files: tuple[str, ...], module: ModuleType) -> str:
    """One hash of a task's inputs (the files named in `files`, and those their settings point at, by
    `file_key`) and of the code that runs: `module`, the modules its inputs name by `_target_`, and the
    project modules these use."""
    keyed = {k: _file_keys(v) if k in files else v for k, v in inputs.items()}
    payload = json.dumps([keyed, code_version(module, *targets(inputs))], sort_keys=True, default=as_json)
    return hashlib.sha256(payload.encode()).hexdigest()


def once(marker: str, inputs: dict[str, Any], files: tuple[str, ...], code: Callable, force: bool,
         work: Callable[[], T], result_type: Any = dict[str, Any]) -> T:
    """`work()`'s result, reused from the done marker when that was written for the same inputs (the
    files named in `files` by size and mtime), settings and `code`'s module; otherwise computed, then
    the marker written last, so a stage killed half-way has none and is redone. The marker holds the
    result as JSON, read back as `result_type` (records inside it included)."""
    key, as_type = fingerprint(inputs, files, inspect.getmodule(code)), TypeAdapter(result_type)
    if not force and storage.exists(marker):
        saved = json.loads(storage.read_text(marker))
        if saved.get("fingerprint") == key:
            return as_type.validate_python(saved["result"])
    result = work()
    storage.write_text(marker, json.dumps({"fingerprint": key, "result": as_type.dump_python(result, mode="json")}))
    return result
