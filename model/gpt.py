"""GPT-2, the whole model in one file: config, attention, MLP, block, model.

Faithful to OpenAI's GPT-2: pre-LayerNorm blocks, tanh-GELU, learned positions, tied
input/output embeddings, residual projections scaled by 1/sqrt(2 * n_layer) at init.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# transformers stores these as Conv1D, whose weight is the transpose of nn.Linear's
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# oneDNN lays a packed weight out for products of about this many rows: 4 and 8 measured alike, and
# faster than a layout for 1 even on one row (the results are the same)
PACKED_FOR_ROWS = 8


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    padded_vocab_size: int = 50304  # a multiple of 64 runs faster; the extra rows never get probability
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    activation_checkpointing: bool = False  # recompute each block in the backward pass to save memory

    @classmethod
    def from_settings(cls, settings: dict[str, Any], **overrides: Any) -> GPTConfig:
        """The fields of a conf/model entry (which also holds e.g. its name and lr), with `overrides` on top."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings} | overrides)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, so that decoding a token costs one
    position instead of the whole context. Preallocated to `max_len` positions.

    After `make_static()`, one token per row is written at that row's position, held in a tensor,
    and attention runs over the whole buffer with a mask: every shape stays fixed, so the decode
    step can be captured once by torch.compile / CUDA graphs, and rows may stand at different
    positions (the playground's batch of requests that came at different times). Eager decoding
    may narrow `window`, the leading positions attention reads, to those any row has reached:
    the masked positions past it only added zeros (the same logits, bit for bit).
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device, dtype):
        shape = (2, batch, config.n_head, max_len, config.n_embd // config.n_head)
        # keys and values of a layer in one buffer of their own: a static step updates each in place
        # with a single store, where views of one shared buffer would make torch.compile copy it whole
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.size, self.length = max_len, 0
        self.static, self.window = False, max_len
        self.position = torch.zeros(batch, dtype=torch.long, device=device)
        self.slots, self.rows = torch.arange(max_len, device=device), torch.arange(batch, device=device)

    def make_static(self) -> None:
        self.static = True
        self.position.fill_(self.length)

    def reset(self) -> None:
        """Empty, ready for a new prompt, in the same buffers."""
        self.length, self.static = 0, False

    def visible(self) -> torch.Tensor | None:
        """In static mode, each row's mask of the positions written so far (None otherwise)."""
        return (self.slots[None, :self.window] <= self.position[:, None])[:, None, None, :] if self.static else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k and v; returns k and v for every position so far."""
        kv = self.kv[layer]
        if self.static:
            kv[:, self.rows, :, self.position] = torch.stack((k, v))[:, :, :, 0].transpose(0, 1)
            return kv[0, :, :, :self.window], kv[1, :, :, :self.window]
        end = self.length + k.shape[2]
        kv[:, :, :, self.length:end] = torch.stack((k, v))
        return kv[0, :, :, :end], kv[1, :, :, :end]


class Linear(nn.Linear):
    """nn.Linear with two faster ways to run inference:
    - under torch.compile, one token's product as multiply-and-sum. Inductor writes that as a Triton
      reduction fused with what surrounds it (bias, GELU, residual), where a matrix library would
      launch kernels that take longer than reading the weights: decoding speed on a GPU;
    - on a CPU, after `pack()`, oneDNN's product over a copy of the weight laid out for it once, with
      the operators PyTorch's own CPU compiler emits for a frozen model (`torch.ops.mkldnn`, outside
      torch's documented API: `GPT.pack_for_cpu` packs only where they exist). On a few rows
      (decoding) it measured 2-4x faster than the default (MKL's) on an AMD EPYC, where MKL's fp32
      product of one row uses neither a second core nor the weight's row-major layout well. Used
      only without autograd, and only while the weight is the one packed: training, or weights
      changed since, take the plain path.
    """

    packed: tuple[torch.Tensor, tuple[int, int]] | None = None  # oneDNN's layout, and the weight it was made from

    def pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKED_FOR_ROWS), self._weight_key()

    def _weight_key(self) -> tuple[int, int]:
        weight = self.weight  # a tensor made under torch.inference_mode keeps no version
        return weight.data_ptr(), -1 if weight.is_inference() else weight._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            if x.shape[-2] == 1:
                y = (x.unsqueeze(-2) * self.weight).sum(-1)
                return y if self.bias is None else y + self.bias
        elif self.packed is not None and not torch.is_grad_enabled() and self.packed[1] == self._weight_key():
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.packed[0], self.bias, "none", [], "")
            return y.view(*x.shape[:-1], y.shape[-1])
        return super().forward(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.layer = config.n_head, layer
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.c_proj.residual = True
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask = None
        if cache is not None:
            if (cache.static or cache.length) and T > 1:
                raise ValueError("a KV cache takes a whole prompt first, then one token at a time")
            k, v = cache.update(self.layer, k, v)
            mask = cache.visible()
        # one new token may attend to every cached one; a whole sequence needs the causal mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (B, T) in, next-token logits (B, T, vocab_size) out."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once and leaving out positions, as GPT-2's sizes do."""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per parameter, plus attention's 12 * layers * width * context."""
        c = self.config
        return 6 * sum(p.numel() for p in self.parameters()) + 12 * c.n_layer * c.n_embd * c.block_size

    def pack_for_cpu(self) -> GPT:
        """On a CPU in float32 or bfloat16 with oneDNN at hand, every Linear packed for inference (see
        `Linear`): decoding 2-3x as fast, for a second copy of the weights in memory."""
        weight = self.lm_head.weight
        if (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
                and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            for module in self.modules():
                if isinstance(module, Linear):
                    module.pack()
        return self

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch, max_len or self.config.block_size, p.device, p.dtype)

    def positions(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Position ids of `length` tokens after `start`, refusing to run past the context."""
        if start + length > self.config.block_size:
            raise ValueError(f"sequence of {start + length} tokens is longer than the context of {self.config.block_size}")
        return torch.arange(start, start + length, device=device)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None and cache.static:
            pos = cache.position[:, None]  # never read cache.length here: torch.compile would recompile per prompt length
        else:
            pos = self.positions(cache.length if cache is not None else 0, idx.shape[1], idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache)
        if cache is not None and cache.static:
            cache.position += 1  # in place: the captured graph sees the new position next time
        elif cache is not None:
            cache.length += idx.shape[1]
        if cache is not None:  # decoding reads only the next token's logits: the output layer, the
            x = x[:, -1:]      # largest product of a prefill, runs on the last position alone
        logits = self.lm_head(self.ln_f(x))
        return logits if self.config.padded_vocab_size == self.config.vocab_size else logits[..., : self.config.vocab_size]

    @classmethod
    def from_hf(cls, path: str) -> GPT:
        """A GPT with the weights of a transformers GPT-2 folder on local disk (safetensors or .bin)."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(path, local_files_only=True)
        c = hf.config
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, padded_vocab_size=c.vocab_size,
                              n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd))
        ours = model.state_dict()
        with torch.no_grad():
            for name, tensor in hf.transformer.state_dict().items():
                if name.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
                    continue  # causal-mask buffers in older files, not weights
                ours[name].copy_(tensor.t() if name.endswith(HF_TRANSPOSED) else tensor)
        return model

    def copy_weights_from(self, other: GPT) -> None:
        """Take `other`'s weights (the same architecture; its vocabulary may be unpadded, as in a
        transformers folder): the start of a fine-tuning run. Padding rows keep their initial values."""
        theirs = other.state_dict()
        with torch.no_grad():
            for name, tensor in self.state_dict().items():
                if name == "lm_head.weight":
                    continue  # tied to wte
                source = theirs[name]
                (tensor[: source.shape[0]] if name == "wte.weight" else tensor).copy_(source)

    def to_hf(self, path: str) -> None:
        """Write this model as a transformers GPT-2 folder (config.json + model.safetensors)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                        n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        theirs = hf.transformer.state_dict()
        with torch.no_grad():
            for name, tensor in self.state_dict().items():
                if name == "lm_head.weight":
                    continue  # tied to wte
                if name == "wte.weight":
                    tensor = tensor[: c.vocab_size]  # padding rows are not part of the vocabulary
                theirs[name].copy_(tensor.t() if name.endswith(HF_TRANSPOSED) else tensor)
        hf.save_pretrained(path)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
