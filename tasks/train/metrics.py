"""Training outputs besides checkpoints: `metrics.jsonl`, the loss-curve PNG and a text sample.

`metrics.jsonl` has one JSON object per line (written through `MetricsLog`; the training rows by
`record_step` in tasks/train/loop.py). Training rows: step, loss, lr, grad_norm, tokens_per_s,
mfu (null on CPU or an unknown GPU), skipped_steps, rollbacks. Evaluation rows: step, val_loss,
val_ppl, val_bpb, unigram_loss. Event rows carry `event` ("grad_skip", "rollback", "resume").
On resume the rows past the checkpoint's step are dropped, so the file describes one history.
The plot uses matplotlib's Agg backend (no display needed). `unigram_baseline_loss` is the
reference a trained model must beat: the train-set token frequencies scored on the validation targets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.gpt import GPT
from storage.token_shards import TokenShards

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SAMPLE = "sample.txt"


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Tokenizer-independent loss: bits per token / bytes per token."""
    return loss_nats / math.log(2) / bytes_per_token


class MetricsLog:
    """Append-only JSON-lines writer (only the main rank writes)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.path = out_dir / METRICS
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step` (left by a run that died after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(r + "\n" for r in rows))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(rows: Sequence[dict[str, Any]], path: Path, unigram_loss: float | None) -> None:
    """Train and validation loss against step, unigram baseline dashed, rollbacks as red lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # after a rollback a step is logged twice: the later row is the history that counts
    train = sorted({r["step"]: r["loss"] for r in rows if r.get("loss") is not None and "event" not in r}.items())
    val = sorted({r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}.items())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        if r.get("event") == "rollback":
            ax.axvline(r["step"], color="red", alpha=0.3, linewidth=1)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", markersize=3)
    if unigram_loss is not None:
        ax.axhline(unigram_loss, linestyle="--", color="grey", label=f"unigram baseline {unigram_loss:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def generate_sample(
    model: GPT,
    prompt_ids: list[int],
    decode: Callable[[list[int]], str] | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    device: torch.device,
) -> str:
    """Seeded sample continuing prompt_ids; token ids joined by spaces when there is no decoder."""
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    model.train(was_training)
    ids = [int(t) for t in out[0].tolist()]
    return decode(ids) if decode is not None else " ".join(map(str, ids))


def sentencepiece_codec(model_path: str) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """encode / decode callables of a sentencepiece model file."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    return (lambda text: list(sp.encode(text))), (lambda ids: str(sp.decode(ids)))


def unigram_baseline_loss(
    train: TokenShards, val: TokenShards, num_val_sequences: int | None = None, max_train_tokens: int = 200_000_000
) -> float:
    """Cross-entropy (nats/token) on val targets of the train-set unigram distribution (add-one smoothed)."""
    counts = np.zeros(train.vocab_size, dtype=np.int64)
    seen = 0
    for chunk in train.iter_chunks():
        counts += np.bincount(chunk.reshape(-1), minlength=train.vocab_size)[: train.vocab_size]
        seen += chunk.size
        if seen >= max_train_tokens:
            break
    logp = np.log(counts + 1.0) - np.log(counts.sum() + train.vocab_size)
    n = val.num_sequences if num_val_sequences is None else min(num_val_sequences, val.num_sequences)
    targets = val.get(np.arange(n))[:, 1:].reshape(-1)
    return float(-logp[targets].mean())
