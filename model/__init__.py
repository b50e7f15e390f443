"""GPT-2 and everything around it: Lightning training, data, evaluation and sampling."""
from model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
