"""The eval stage's runtime (torch): `evaluate(...)`; the stage is described in tasks/eval/__init__.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import torch

from models.gpt import GPT, GPTConfig
from models.tokenizer import Tokenizer
from storage import checkpoints as ckpt
from storage import paths
from storage.manifest import Manifest, load_manifest
from storage.stats import StageStats
from tasks.eval.heldout import CONTINUATION_TASK, continuation_task, read_texts, val_documents
from tasks.eval.params import (
    NO_SPANS,
    RESULTS,
    VAL_TEXT,
    EvalParams,
    heldout_name,
)
from tasks.eval.score import bits_per_byte, core_score, encode_pair, score_task
from tasks.eval.tasks import EvalTask, load_task

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("eval.device is cuda but CUDA is not available; use device: auto or cpu")
    return torch.device("cuda" if use_cuda else "cpu")


def load_checkpoint(run_dir: str, step: int, device: torch.device) -> GPT:
    cfg = GPTConfig(**ckpt.load_meta(run_dir, step)["model_config"])
    model = GPT(cfg)
    model.load_state_dict(ckpt.load_object(run_dir, step, "model", map_location="cpu"))
    return model.to(device).eval()


def tokenizer_of(root: str, train: Manifest, step: int) -> tuple[Manifest, Tokenizer]:
    """The tokenize version the run trained on and its sentencepiece model (sha256 as the checkpoint's)."""
    meta = ckpt.load_meta(paths.version_dir(root, "train", train.version), step)
    tm = load_manifest(root, "tokenize", str(meta.get("tokenize_version") or train.inputs["tokenize"]))
    if "tokenizer_path" not in tm.extras:
        raise ValueError(f"tokenize@{tm.version} records no tokenizer_path; eval needs the run's tokenizer")
    tok = Tokenizer(
        paths.local_copy(paths.join(paths.version_dir(root, "tokenize", tm.version), tm.extras["tokenizer_path"]))
    )
    if meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != tok.sha256:
        raise ValueError(f"tokenize@{tm.version}'s tokenizer differs from the one train@{train.version} used")
    return tm, tok


def checkpoint_steps(run_dir: str, train: Manifest, wanted: list[int]) -> list[int]:
    """The final step and the `steps` milestones, ascending; a step the run did not keep is an error."""
    kept = ckpt.list_checkpoints(run_dir)
    result = train.extras.get("result") or {}
    final = int(result["steps"]) if "steps" in result else (kept[-1] if kept else -1)
    missing = [s for s in [final, *wanted] if s not in kept]
    if missing:
        raise ValueError(f"eval.steps: train@{train.version} kept checkpoints {kept}, not {missing}")
    return sorted({final, *wanted})


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(params: EvalParams) -> dict[str, str]:
    """{config key: sha256} of every configured file; a missing one is an error naming its key."""
    entries = [(f"eval.tasks[{i}].path", t.path) for i, t in enumerate(params.tasks)]
    entries += [(f"eval.heldout[{i}].path", h.path) for i, h in enumerate(params.heldout)]
    for key, path in entries:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{key}: {path} does not exist; fix the path or remove the entry")
    return {key: _sha256(path) for key, path in entries}


def files_version(params: EvalParams) -> str | None:
    """A content id of the configured files (None without any): part of the version, so an edited file at the
    same path is scored again instead of reused."""
    digests = check_files(params)
    if not digests:
        return None
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:12]


def load_inputs(
    root: str, tokenize: Manifest, params: EvalParams
) -> tuple[list[EvalTask], dict[str, list[str]], dict[str, dict[str, str]]]:
    """(tasks, held-out texts by name, sources by name) before any model loads: bad config fails fast."""
    tasks, texts, sources = [], {}, {}
    digests = check_files(params)
    for i, t in enumerate(params.tasks):
        task = load_task(t.path, t.name, t.limit or params.limit, t.delimiter)
        tasks.append(task)
        sources[task.name] = {"path": t.path, "sha256": digests[f"eval.tasks[{i}].path"]}
    for i, h in enumerate(params.heldout):
        name = heldout_name(h)
        texts[name] = read_texts(h.path, f"eval.heldout[{i}].path", h.limit)
        sources[name] = {"path": h.path, "sha256": digests[f"eval.heldout[{i}].path"]}
    if params.val_documents:
        val = val_documents(root, tokenize, params.val_documents)
        if not val:
            raise ValueError(f"tokenize@{tokenize.version} has no val document; set eval.val_documents: 0")
        texts[VAL_TEXT] = val
        sources[VAL_TEXT] = {"path": f"tokenize@{tokenize.version} val split", "sha256": ""}
        if params.val_continuation_items:
            task = continuation_task(val, params.val_continuation_items, params.seed)
            if task.items:
                tasks.append(task)
                sources[CONTINUATION_TASK] = {"path": f"tokenize@{tokenize.version} val split", "sha256": ""}
            else:  # a tiny demo's val split: said in the manifest, the report and the log, not skipped silently
                sources[CONTINUATION_TASK] = {"path": "not scored", "sha256": "", "skipped": NO_SPANS}
                log.warning("eval: %s not scored: %s", CONTINUATION_TASK, NO_SPANS)
    return tasks, texts, sources


def fit_items(task: EvalTask, tok: Tokenizer, seq_len: int, stats: StageStats) -> EvalTask:
    """The task without items that have a continuation longer than the model's context (lm-evaluation-harness
    refuses those too), counted as `items_too_long.<task>`; the rest as `items.<task>`."""
    kept = []
    for item in task.items:
        too_long = max(len(encode_pair(tok, c, x)[1]) for c, x in zip(item.contexts, item.continuations)) > seq_len
        stats.count(f"{'items_too_long' if too_long else 'items'}.{task.name}")
        if not too_long:
            kept.append(item)
    if not kept:
        raise ValueError(
            f"eval task {task.name}: every item's continuation is longer than the model's {seq_len} tokens"
        )
    return EvalTask(task.name, task.kind, kept, task.source)


def score_checkpoint(
    model: GPT,
    tok: Tokenizer,
    tasks: list[EvalTask],
    texts: dict[str, list[str]],
    params: EvalParams,
    device: torch.device,
) -> dict[str, Any]:
    """Bits per byte per text, scores per task and CORE for one loaded checkpoint."""
    seq_len, vocab = model.cfg.seq_len, model.cfg.vocab_size
    started = time.perf_counter()
    bpb = {n: bits_per_byte(model, tok, t, seq_len, vocab, device, params.batch_size) for n, t in texts.items()}
    scores = {t.name: score_task(model, tok, t, seq_len, vocab, device, params.batch_size) for t in tasks}
    core = core_score(scores)
    return {
        "bpb": bpb,
        "tasks": scores,
        "core": None if core != core else core,
        "seconds": time.perf_counter() - started,
    }


def evaluate(root: str, train: Manifest, params: EvalParams, out_dir: str) -> tuple[dict[str, Any], StageStats]:
    """Score every chosen checkpoint of train@version; returns the manifest extras and stats."""
    run_dir = paths.version_dir(root, "train", train.version)
    steps = checkpoint_steps(run_dir, train, params.steps)
    tokenize, tok = tokenizer_of(root, train, steps[-1])
    tasks, texts, sources = load_inputs(root, tokenize, params)
    device = pick_device(params.device)
    stats = StageStats()
    seq_len = int(GPTConfig(**ckpt.load_meta(run_dir, steps[-1])["model_config"]).seq_len)
    tasks = [fit_items(t, tok, seq_len, stats) for t in tasks]
    for n, docs in texts.items():
        stats.count(f"heldout_documents.{n}", len(docs))
    final = checkpoint_steps(run_dir, train, [])[0]
    results = []
    for step in steps:
        model = load_checkpoint(run_dir, step, device)
        r = score_checkpoint(model, tok, tasks, texts, params, device)
        log.info("eval train@%s step %d: CORE %s, %.1fs", train.version, step, r["core"], r["seconds"])
        results.append({"step": step, "final": step == final, **r})
        del model
    extras = {
        "train_version": train.version,
        "tokenize_version": tokenize.version,
        "device": str(device),
        "checkpoints": results,
        "sources": sources,
        "results_path": RESULTS,
    }
    return extras, stats
