"""Prefect cache keys for file-exchanging stages: input file contents, settings and the stage's code."""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect.cache_policies import CachePolicy


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (names and contents, in sorted order)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def _digests(value: Any) -> Any:
    """A path, or a list of paths, replaced by the content digests of what they name (None stays None)."""
    if isinstance(value, (list, tuple)):
        return [_digests(v) for v in value]
    return None if value is None else file_digest(Path(value))


PROJECT_PACKAGES = {"tasks", "model", "flows", "sample"}


def code_version(module: ModuleType) -> str:
    """Hash of a module's source and of every project module it uses, directly or not."""
    todo, seen = [module], {}
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
    """Key = contents of the input files named in `files` + the other inputs + the code of the task.

    Parameters in `exclude` (such as a proxy address that changes every run) are not keyed.
    Results are stored beside the outputs (see `flows.common.cached`), so removing the data
    folder removes the cache with it.
    """

    files: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        if task_ctx is None:
            return None
        keyed = {k: _digests(v) if k in self.files else v for k, v in inputs.items() if k not in self.exclude}
        code = code_version(inspect.getmodule(task_ctx.task.fn))
        payload = json.dumps([keyed, code], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()
