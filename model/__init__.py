"""GPT-2 and everything around it: Lightning training, data, evaluation and sampling."""
from __future__ import annotations

from typing import Any

__all__ = ["GPT", "GPTConfig"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that `model.bpe` (used by corpus workers) does not load torch
    if name in __all__:
        from model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
