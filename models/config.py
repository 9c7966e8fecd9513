"""`GPTConfig`: the model's shape (no torch, so presets, `pretrain plan` and the pipeline table import it
cheaply); the model itself is models/gpt.py."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: same as n_head (plain multi-head attention)
    n_embd: int = 768
    ffn_hidden: int | None = None  # None: 8/3 * n_embd rounded up to a multiple of 64 (Llama)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    vocab_multiple: int = 128  # embedding rows padded so the head matmul is tensor-core aligned
    init_std: float = 0.02

    def __post_init__(self) -> None:
        assert self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} not divisible by n_head={self.n_head}"
        assert self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even for rotary embeddings"
        assert self.n_head % self.kv_heads == 0, f"n_head={self.n_head} not a multiple of n_kv_head={self.kv_heads}"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)

    @property
    def padded_vocab_size(self) -> int:
        return self.vocab_multiple * math.ceil(self.vocab_size / self.vocab_multiple)

    def num_params(self) -> int:
        """Parameter count computed from the shapes (equals `GPT(self).num_params()`)."""
        d, hd = self.n_embd, self.head_dim
        attn = d * (self.n_head + 2 * self.kv_heads) * hd + self.n_head * hd * d
        mlp = 3 * d * self.hidden
        return self.padded_vocab_size * d + self.n_layer * (attn + mlp + 2 * d) + d

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L H Q T (PaLM appendix B)."""
        return 6.0 * self.num_params() + 12.0 * self.n_layer * self.n_head * self.head_dim * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
