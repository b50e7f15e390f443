"""The token corpus's manifest, `tokens/manifest.json`: every token file by split, the kept documents
of each shard (for dedup against this version and for evaluation), the funnel's counters, and the
settings, code version and tokenizer that made it. The corpus flow writes it, a refresh merges
versions into one, training, evaluation, lineage and export read it; nothing else touches its keys.

Manifests written before a field existed still load: a missing name is taken from the settings (or
"unknown"), a missing version is 1.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from model.bpe import EOT

FILE = "manifest.json"
SPLITS = ("train", "val")


@dataclass
class Manifest:
    name: str
    version: int
    splits: dict[str, list[dict[str, Any]]]   # split -> token files: {"bin": path from the folder, "tokens": n}
    kept: list[dict[str, Any]] = field(default_factory=list)  # per shard: {"docs", "bands", "n"} (paths from the folder)
    stats: dict[str, int] = field(default_factory=dict)       # the funnel's counters
    config: dict[str, Any] = field(default_factory=dict)      # the corpus settings that made it
    code_version: str = ""
    tokenizer: str = "gpt2"
    dtype: str = "uint16"
    eot: int = EOT
    sha256: str = field(default="", compare=False)            # of the file it was read from

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and k != "sha256"}
        known.setdefault("name", raw.get("config", {}).get("name", "unknown"))
        known.setdefault("version", 1)
        known["splits"] = {split: raw.get("splits", {}).get(split, []) for split in SPLITS}
        return cls(**known, sha256=hashlib.sha256(text.encode()).hexdigest())

    @classmethod
    def read(cls, tokens_dir: str) -> Manifest:
        """The manifest in `tokens_dir` (a folder or a store URL)."""
        with fsspec.open(f"{str(tokens_dir).rstrip('/')}/{FILE}", "rt") as fh:
            return cls.from_json(fh.read())

    def to_json(self) -> str:
        fields = asdict(self)
        del fields["sha256"]
        return json.dumps(fields, indent=2)

    def tokens(self, split: str) -> int:
        return sum(s["tokens"] for s in self.splits[split])

    @property
    def documents(self) -> int:
        return sum(k["n"] for k in self.kept)

    def identity(self) -> dict[str, Any]:
        """What a training run and its checkpoints record of the corpus: name, version, size, digest."""
        return {"name": self.name, "version": self.version, "train_tokens": self.tokens("train"),
                "val_tokens": self.tokens("val"), "documents": self.documents, "manifest_sha256": self.sha256}

    @classmethod
    def merged(cls, parts: list[tuple[str, Manifest]], name: str, version: int, config: dict[str, Any],
               code_version: str) -> Manifest:
        """One manifest listing every file of `parts` (each a folder, relative to the merged
        manifest's, and the manifest there), their counters summed."""
        def moved(entry: dict[str, Any], folder: str, *keys: str) -> dict[str, Any]:
            return {**entry, **{k: f"{folder}/{entry[k]}" for k in keys}}

        stats: dict[str, int] = {}
        for _, part in parts:
            for key, n in part.stats.items():
                stats[key] = stats.get(key, 0) + n
        return cls(name=name, version=version, config=config, code_version=code_version, stats=stats,
                   splits={split: [moved(s, folder, "bin") for folder, part in parts for s in part.splits[split]]
                           for split in SPLITS},
                   kept=[moved(k, folder, "docs", "bands") for folder, part in parts for k in part.kept])
