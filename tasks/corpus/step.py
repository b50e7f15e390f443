"""The shared base of the per-document corpus steps, and the pipeline built from `corpus.pipeline`.

A step looks at one document and says why it is dropped (or None to keep it); the base counts
`<step>/in`, `<step>/kept` and `<step>/<reason>` once for every step, and turns an exception on one
document into a counted `<step>/error_<Type>` drop, so a broken page never stops a shard.
Adding a filter is one file with a `Step` subclass and one entry in `conf/corpus/base.yaml`.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from hydra.utils import get_class, instantiate

from tasks.corpus.document import Document
from tasks.storage import StoreError

log = logging.getLogger(__name__)


class Step:
    """One per-document step: subclasses set `name` and `label` and implement `reject`."""

    name: ClassVar[str]   # counter prefix, e.g. "language"
    label: ClassVar[str]  # its row in the funnel, e.g. "English"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def reject(self, doc: Document) -> str | None:
        """Why `doc` is dropped, or None to keep it; may fill in the document's fields."""
        raise NotImplementedError

    def count(self, what: str) -> None:
        """Count something beyond kept and dropped (e.g. each language seen)."""
        self.stats[f"{self.name}/{what}"] += 1

    def __call__(self, docs: Iterable[Document], stats: Counter) -> Iterator[Document]:
        self.stats = stats
        for doc in docs:
            stats[f"{self.name}/in"] += 1
            try:
                reason = self.reject(doc)
            except StoreError:  # the machine failed, not the document
                raise
            except Exception as err:  # bad input is dropped and counted, never fatal
                reason = f"error_{type(err).__name__}"
                log.warning("%s %s: %s: %s", self.name, doc.url, type(err).__name__, err)
            if reason is None:
                stats[f"{self.name}/kept"] += 1
                yield doc
            else:
                stats[f"{self.name}/{reason}"] += 1


class StepFailed(Exception):
    """A step that raised on most of its documents: a bug or a broken dependency, not bad pages."""


def check_errors(stats: Counter, steps: list[Step], max_share: float, where: str, min_docs: int = 20) -> None:
    """StepFailed when a step raised on more than `max_share` of its documents: from `min_docs` on,
    or on every document of a smaller shard (a few broken pages in a small shard are still just bad
    input; all of them, a broken step)."""
    for step in steps:
        seen = stats[f"{step.name}/in"]
        errors = Counter({k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith(f"{step.name}/error_")})
        raised = sum(errors.values())
        if (seen >= min_docs or raised == seen) and raised > max_share * seen:
            top = ", ".join(f"{reason} {n}" for reason, n in errors.most_common(3))
            raise StepFailed(f"{where}: step {step.name} raised on {sum(errors.values())} of {seen} documents ({top}), "
                             f"over corpus.max_error_share={max_share}: see the log's warnings for the first errors")


def enabled_steps(pipeline: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The `corpus.pipeline` entries that are enabled, in order, each without its `enabled` flag:
    the one place the flag is read."""
    return {name: {k: v for k, v in entry.items() if k != "enabled"}
            for name, entry in pipeline.items() if entry.get("enabled", True)}


def build_steps(pipeline: dict[str, dict[str, Any]]) -> list[Step]:
    """The enabled steps of `corpus.pipeline`, in order (a disabled one is not even imported)."""
    return [instantiate(entry) for entry in enabled_steps(pipeline).values()]


def run_steps(docs: Iterable[Document], steps: list[Step], stats: Counter,
              taps: dict[str, Callable[[Document], None]] | None = None) -> Iterator[Document]:
    """Chain the steps lazily: one document at a time goes through all of them. `taps[name]` sees
    each document the step `name` kept."""
    for step in steps:
        docs = step(docs, stats)
        if taps and step.name in taps:
            docs = tapped(docs, taps[step.name])
    return iter(docs)


def tapped(docs: Iterable[Document], tap: Callable[[Document], None]) -> Iterator[Document]:
    for doc in docs:
        tap(doc)
        yield doc


def funnel_rows(pipeline: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(funnel label, counter) of each enabled step, in pipeline order, without building the steps."""
    steps = [get_class(entry["_target_"]) for entry in enabled_steps(pipeline).values()]
    return [(step.label, f"{step.name}/kept") for step in steps]
