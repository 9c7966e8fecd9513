"""Scoring a causal LM on evaluation items and held-out text, batched on the training device.

- `loglikelihoods`: for (context ids, continuation ids) requests, the summed log-probability of the
  continuation and whether every continuation token is the greedy choice, as lm-evaluation-harness's
  `loglikelihood` computes it: input = (context + continuation)[-(seq_len + 1):][:-1], log-softmax over the
  real vocabulary (the padded rows of the output matrix are excluded), requests sorted by length and
  batched with right padding (padding never reaches a scored position: attention is causal).
- `encode_pair`: lm-evaluation-harness's `_encode_pair` (trailing spaces of the context move to the
  continuation; the continuation's ids are those of context + continuation after the context's), with our
  document separator (EOS) in front of every context, as each document followed one in training.
- `score_task`: accuracy (highest summed log-likelihood), length-normalised accuracy (divided by the
  continuation's characters, lm-evaluation-harness's `acc_norm`), and the centred accuracy
  (acc - chance) / (1 - chance) that CORE-style averages use (DCLM; llm-foundry's gauntlet).
- `bits_per_byte`: held-out text, each document after an EOS, cut into disjoint windows of `seq_len`
  predicted tokens (each window sees only its own tokens): total negative log2-likelihood / UTF-8 bytes,
  comparable across tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tasks.eval.tasks import EvalTask


class Encoder(Protocol):
    eos_id: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


def encode_pair(tok: Encoder, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = tok.encode([context + continuation, context])
    return [tok.eos_id, *ctx], whole[len(ctx) :]


def _logits(model: Any, batch: torch.Tensor) -> torch.Tensor:
    out = model(batch)
    logits: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return logits


@torch.no_grad()
def loglikelihoods(
    model: Any,
    requests: Sequence[tuple[list[int], list[int]]],
    seq_len: int,
    vocab_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), all continuation tokens greedy) per request, in request order."""
    out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    prepared = []
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i}: empty continuation")
        if len(cont) > seq_len:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens > model seq_len {seq_len}")
        full = (ctx + cont)[-(seq_len + 1) :]
        prepared.append((i, full[:-1], cont))
    prepared.sort(key=lambda r: -len(r[1]))  # similar lengths together: less padding
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        width = len(chunk[0][1])
        batch = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (_, inp, _) in enumerate(chunk):
            batch[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        logp = F.log_softmax(_logits(model, batch.to(device))[..., :vocab_size].float(), dim=-1).cpu()
        for b, (i, inp, cont) in enumerate(chunk):
            rows = logp[b, len(inp) - len(cont) : len(inp)]
            target = torch.tensor(cont, dtype=torch.long)
            out[i] = (float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all()))
    return out


def score_task(
    model: Any,
    tok: Encoder,
    task: EvalTask,
    seq_len: int,
    vocab_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> dict[str, float]:
    """acc, acc_norm, centred acc, chance and n for one task."""
    requests, owner = [], []
    for k, item in enumerate(task.items):
        for ctx, cont in zip(item.contexts, item.continuations):
            requests.append(encode_pair(tok, ctx, cont))
            owner.append(k)
    scores = loglikelihoods(model, requests, seq_len, vocab_size, device, batch_size)
    correct = correct_norm = 0
    pos = 0
    for item in task.items:
        n = len(item.contexts)
        mine = scores[pos : pos + n]
        pos += n
        if task.kind == "greedy":
            hit = mine[0][1]
            correct += hit
            correct_norm += hit
            continue
        lls = [s for s, _ in mine]
        norm = [s / max(len(c.lstrip()), 1) for s, c in zip(lls, item.continuations)]
        correct += max(range(n), key=lambda j: lls[j]) == item.gold
        correct_norm += max(range(n), key=lambda j: norm[j]) == item.gold
    n_items = max(len(task.items), 1)
    acc, chance = correct / n_items, task.chance
    return {
        "acc": acc,
        "acc_norm": correct_norm / n_items,
        "centered": (acc - chance) / (1.0 - chance) if chance < 1.0 else 0.0,
        "chance": chance,
        "n": float(len(task.items)),
    }


@torch.no_grad()
def bits_per_byte(
    model: Any,
    tok: Encoder,
    texts: Sequence[str],
    seq_len: int,
    vocab_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> dict[str, float]:
    """Bits per UTF-8 byte of `texts` (and the token count, bytes, nats per token)."""
    windows: list[tuple[list[int], list[int]]] = []
    n_bytes = 0
    for text, ids in zip(texts, tok.encode(list(texts))):
        n_bytes += len(text.encode("utf-8"))
        seq = [tok.eos_id, *ids]
        for pos in range(0, len(seq) - 1, seq_len):
            chunk = seq[pos : pos + seq_len + 1]
            windows.append((chunk[:-1], chunk[1:]))
    nll = 0.0
    tokens = 0
    windows.sort(key=lambda w: -len(w[0]))
    for start in range(0, len(windows), batch_size):
        group = windows[start : start + batch_size]
        width = len(group[0][0])
        inp = torch.zeros((len(group), width), dtype=torch.long)
        tgt = torch.full((len(group), width), -100, dtype=torch.long)
        for b, (x, y) in enumerate(group):
            inp[b, : len(x)] = torch.tensor(x)
            tgt[b, : len(y)] = torch.tensor(y)
        logits = _logits(model, inp.to(device))[..., :vocab_size].float()
        nll += float(
            F.cross_entropy(
                logits.reshape(-1, vocab_size), tgt.to(device).reshape(-1), reduction="sum", ignore_index=-100
            )
        )
        tokens += int((tgt != -100).sum())
    return {
        "bpb": nll / math.log(2) / max(n_bytes, 1),
        "tokens": float(tokens),
        "bytes": float(n_bytes),
        "nats_per_token": nll / max(tokens, 1),
    }


def core_score(results: dict[str, dict[str, float]]) -> float:
    """Mean centred accuracy over tasks (CORE-style: chance = 0, perfect = 1)."""
    return sum(r["centered"] for r in results.values()) / len(results) if results else float("nan")
