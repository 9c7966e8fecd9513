"""Named model presets: plain functions returning a `GPTConfig` (torchtitan's config registry idea).

Every preset takes the tokenizer's `vocab_size` and the token shards' `seq_len`, because both are fixed
by the tokenize stage, not by the model. Parameter counts below are for the default arguments.

    tiny       4 x 128, 4 heads, seq 256       ~1.4M params at vocab 4096  (CPU demo, minutes)
    small      6 x 512, 8 heads, seq 512       ~36M params at vocab 32000
    gpt2-124m  12 x 768, 12 heads, seq 1024    ~124M params at vocab 50257 (GPT-2 small shape)
"""

from __future__ import annotations

from collections.abc import Callable

from models.config import GPTConfig


def tiny(vocab_size: int = 4096, seq_len: int = 256) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=4, n_head=4, n_embd=128)


def small(vocab_size: int = 32000, seq_len: int = 512) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=6, n_head=8, n_embd=512)


def gpt2_124m(vocab_size: int = 50257, seq_len: int = 1024) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=12, n_head=12, n_embd=768)


PRESETS: dict[str, Callable[..., GPTConfig]] = {"tiny": tiny, "small": small, "gpt2-124m": gpt2_124m}


def preset(name: str, vocab_size: int, seq_len: int) -> GPTConfig:
    """The named preset's config for this tokenizer and sequence length."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](vocab_size=vocab_size, seq_len=seq_len)
