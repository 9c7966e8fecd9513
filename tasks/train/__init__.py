"""The train stage: `tokenize` token shards -> a trained GPT (checkpoints, metrics, plot, sample).

Input: a tokenize version directory with `train/tokens-NNNNN.arrow` and `val/tokens-NNNNN.arrow`
(storage/token_shards.py), memory-mapped. Output, in `out_dir`: `step-NNNNNN/` checkpoints
(storage/checkpoints.py), `metrics.jsonl`, `loss.png`, `sample.txt` and `result.json` (TrainResult).

Algorithm: next-token cross-entropy on x = row[:-1], y = row[1:] in a seeded, resumable data order;
AdamW (fused on CUDA, weight decay on matrices only); linear warmup then cosine decay to
`min_lr_ratio` x peak; clipping at `grad_clip`; gradient accumulation up to `tokens_per_step`;
bf16 autocast + torch.compile on CUDA, float32 on CPU. Every `eval_interval` steps: validation loss
on a fixed token budget, perplexity, bits per byte, compared with the unigram baseline.
Stability: a step whose gradient norm is non-finite or above `skip_grad_norm_factor` x `grad_clip` is
skipped; a loss above `spike_factor` x its running mean for `spike_patience` steps rolls back to the
last checkpoint and skips the offending batches. Both are logged and counted in the result.
Resume: `train` continues from the highest valid checkpoint in `out_dir` (model, optimizer, data
position, RNG), so an interrupted run reaches the same losses as an uninterrupted one. The train stage
(flows/train.py) passes the version's own directory as `out_dir`, written in place until its manifest.
Modules: run (the runtime: `train`, `main`; imports torch, so loaded on first use), params (TrainParams,
TrainJob, TrainResult; no torch), loop (runtime, data order, step, guards, per-step bookkeeping), metrics
(metrics.jsonl, plot, sample, unigram baseline), plan (`pretrain plan`, `model: auto`, `train_tokens`), report
(the stage's markdown and extra artifacts), launch (torchrun from Python; imports params only); imports go one way.

Runs in-process (`train(...)`, what the Prefect `train_run` task calls with `gpus: 1`) or as
`python -m tasks.train JOB.json` (a `TrainJob`), also under `torchrun --nproc_per_node N` (DDP; NCCL
on CUDA, gloo on CPU), which the `train_run` task launches for `gpus: N > 1` (launch.py). Under DDP
every rank computes, rank 0 alone writes (metrics, checkpoints with every rank's RNG state, plot,
sample, result.json), and the global batch must be the one-process batch (`check_processes`), so
the result does not depend on the process count beyond floating-point reduction order.
References: nanoGPT train.py; Chinchilla; PaLM appendix B (MFU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.train.params import (
    RESULT,
    STAGE,
    STAGE_VERSION,
    TrainJob,
    TrainParams,
    TrainResult,
    check_processes,
    grad_accumulation,
)

if TYPE_CHECKING:
    from tasks.train.loop import FaultHooks
    from tasks.train.metrics import unigram_baseline_loss
    from tasks.train.run import lr_at, main, train

__all__ = [
    "RESULT",
    "STAGE",
    "STAGE_VERSION",
    "FaultHooks",
    "TrainJob",
    "TrainParams",
    "TrainResult",
    "check_processes",
    "grad_accumulation",
    "lr_at",
    "main",
    "train",
    "unigram_baseline_loss",
]


def __getattr__(name: str) -> Any:
    """The runtime (`train`, `main`, `lr_at`, ...) lives in tasks.train.run, which imports torch (~1 s): only
    when asked for, so the params, `pretrain status`/`inspect` and the pipeline table stay light."""
    import tasks.train.run

    try:
        return getattr(tasks.train.run, name)
    except AttributeError:
        raise AttributeError(f"module 'tasks.train' has no attribute {name!r}") from None
