"""The train stage's runtime (torch): `train(...)`, `main(argv)`; the stage is described in tasks/train/__init__.py."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from models.gpt import GPT, GPTConfig
from models.presets import preset
from storage import checkpoints as ckpt
from storage import paths
from storage.token_shards import TRAIN_DIR, VAL_DIR, TokenShards, doc_ids_to_torch, to_torch
from tasks.train.loop import (
    DataOrder,
    FaultHooks,
    MicroBatch,
    Models,
    Run,
    Runtime,
    SpikeGuard,
    StepCallback,
    TrainState,
    barrier,
    gather_rng,
    rank_slices,
    record_step,
    restore_rng,
    setup_runtime,
    skip_past,
    teardown_runtime,
    train_step,
)
from tasks.train.metrics import (
    LOSS_PLOT,
    SAMPLE,
    MetricsLog,
    bits_per_byte,
    generate_sample,
    plot_losses,
    sentencepiece_codec,
    unigram_baseline_loss,
)
from tasks.train.params import (
    RESULT,
    TrainJob,
    TrainParams,
    TrainResult,
    check_processes,
    grad_accumulation,
)
from tasks.train.plan import MAX_EPOCHS, auto_preset, gpu_key_for_device_name, peak_flops

log = logging.getLogger(__name__)


def resolve_model_name(params: TrainParams, data: TokenShards) -> str:
    """The preset to train; `auto` plans for the training split's tokens (tasks/train/plan.py) and logs why."""
    if params.model != "auto":
        return params.model
    name, p = auto_preset(data.num_tokens, data.vocab_size, data.seq_len)
    chosen = next(e for e in p.presets if e.name == name)
    log.info(
        "model: auto -> %s (%.3g params): %d training tokens give a Chinchilla-optimal model of %.3g params "
        "(inference-optimal %.3g); presets %s",
        name,
        chosen.params,
        data.num_tokens,
        p.chinchilla.params,
        p.inference_optimal.params,
        {e.name: f"{e.params:.3g}" for e in p.presets},
    )
    return name


def build_model(cfg: GPTConfig, params: TrainParams, rt: Runtime) -> Models:
    """Seeded init, then torch.compile on CUDA and DDP when launched with several processes."""
    torch.manual_seed(params.seed)
    raw = GPT(cfg).to(rt.device)
    compiled: torch.nn.Module = raw
    if params.compile and rt.device_type == "cuda":
        compiled = torch.compile(raw)  # type: ignore[assignment]
    ddp = None
    if rt.ddp:
        ddp = DistributedDataParallel(compiled, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    return Models(raw=raw, compiled=compiled, train=ddp or compiled, ddp=ddp)


def lr_at(step: int, params: TrainParams) -> float:
    """Learning rate of (0-based) step: linear warmup, then cosine decay to min_lr_ratio x lr at max_steps."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    floor = params.lr * params.min_lr_ratio
    return floor + 0.5 * (params.lr - floor) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def micro_batch(
    data: TokenShards,
    idx: np.ndarray,
    rt: Runtime,
    doc_mask: bool,
    corrupt: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    positions: np.ndarray | None = None,
) -> MicroBatch:
    rows = data.get(idx)
    if corrupt is not None and positions is not None:
        rows = corrupt(positions, rows)
    x, y = to_torch(rows, rt.device, pin=rt.device_type == "cuda")
    doc_ids = doc_ids_to_torch(data.offsets(idx), data.seq_len, rt.device) if doc_mask else None
    return x, y, doc_ids


def batches(run: Run, start: int, hooks: FaultHooks) -> Iterator[tuple[int, int, list[MicroBatch]]]:
    """(first position, end position, this rank's micro-batches) per step, from sample position start."""
    p, rt, pos = run.params, run.rt, start
    slices = rank_slices(run.global_batch, p.micro_batch_size, run.accum, rt.rank, rt.world)
    while True:
        pos = skip_past(pos, run.state.skip_ranges)
        positions = np.arange(pos, pos + run.global_batch, dtype=np.int64)
        idx = run.order.indices(pos, run.global_batch)
        micro = [micro_batch(run.train_data, idx[s], rt, p.doc_mask, hooks.corrupt_rows, positions[s]) for s in slices]
        yield pos, pos + run.global_batch, micro
        pos += run.global_batch


def num_eval_sequences(params: TrainParams, val: TokenShards) -> int:
    wanted = max(1, params.eval_tokens // val.seq_len)
    if wanted >= params.micro_batch_size:  # whole micro-batches only: one compiled shape
        wanted -= wanted % params.micro_batch_size
    return min(wanted, val.num_sequences)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val: TokenShards, num_sequences: int, micro: int, rt: Runtime, doc_mask: bool
) -> float:
    """Mean next-token loss over the first num_sequences validation rows (split over ranks)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for start in range(rt.rank * micro, num_sequences, micro * rt.world):
        idx = np.arange(start, min(start + micro, num_sequences))
        x, y, doc_ids = micro_batch(val, idx, rt, doc_mask)
        with rt.autocast():
            _, loss = model(x, y, doc_ids)
        total[0] += loss.double() * len(idx)
        total[1] += len(idx)
    if rt.ddp:
        torch.distributed.all_reduce(total)
    model.train()
    return float(total[0] / total[1])


def save_step(run: Run) -> None:
    """Checkpoint the current step (collective under DDP: every rank contributes its RNG state)."""
    st, rt = run.state, run.rt
    rng = gather_rng(rt)
    if rt.is_main:
        meta = {
            **dataclasses.asdict(st),
            "model": run.model_name,
            "model_config": run.cfg.to_dict(),
            "val_loss": st.val_loss if st.val_step == st.step else None,
            "world_size": rt.world,
            "params": run.params.model_dump(mode="json"),
            **run.lineage,
        }
        objects = {"model": run.models.raw.state_dict(), "optimizer": run.optimizer.state_dict(), "rng": rng}
        ckpt.save_checkpoint(str(run.out), st.step, objects, meta)
        ckpt.prune_checkpoints(str(run.out), run.params.keep_last, run.params.milestone_interval)
    barrier(rt)


def restore_step(run: Run, step: int) -> TrainState:
    """Load model, optimizer and RNG of a valid checkpoint; returns its TrainState."""
    out, rt = str(run.out), run.rt
    meta = ckpt.load_meta(out, step)
    if meta["model_config"] != run.cfg.to_dict():
        raise ValueError(
            f"{ckpt.step_dir(out, step)} holds a different model ({meta['model_config']}); "
            f"use a fresh output directory or set resume: false"
        )
    run.models.raw.load_state_dict(ckpt.load_object(out, step, "model", rt.device))
    run.optimizer.load_state_dict(ckpt.load_object(out, step, "optimizer", rt.device))
    rng = ckpt.load_object(out, step, "rng")
    if len(rng) == rt.world:
        restore_rng(rng[rt.rank], rt)
    names = {f.name for f in dataclasses.fields(TrainState)}
    st = TrainState(**{k: v for k, v in meta.items() if k in names})
    st.skip_ranges = [(int(a), int(b)) for a, b in st.skip_ranges]
    st.val_step = step if meta.get("val_loss") is not None else -1
    return st


def rollback(run: Run) -> bool:
    """Return to the last checkpoint before the spike, skipping its batches; False when there is none."""
    ranges, st, out = run.guard.reset_spike(), run.state, str(run.out)
    before = [s for s in ckpt.list_checkpoints(out) if s <= st.step - len(ranges)]
    step = before[-1] if before else None
    if step is None:
        st.unrecovered_spikes += 1
        log.warning("loss spike at step %d but no checkpoint to roll back to; continuing", st.step)
        return False
    if st.rollbacks >= run.params.max_rollbacks:
        raise RuntimeError(
            f"loss spiked again at step {st.step} after {st.rollbacks} rollbacks; the run "
            f"diverged (lower lr, raise warmup_steps, or inspect the batches {ranges})"
        )
    new = restore_step(run, step)
    barrier(run.rt)
    if run.rt.is_main:  # checkpoints after `step` saw the spike: drop that branch of history
        ckpt.remove_checkpoints_after(out, step)
    new.skip_ranges = sorted(set(new.skip_ranges) | set(st.skip_ranges) | set(ranges))
    new.skipped_steps, new.unrecovered_spikes = st.skipped_steps, st.unrecovered_spikes
    new.rollbacks, new.skipped_batches = st.rollbacks + 1, st.skipped_batches + len(ranges)
    log.warning("loss spike at step %d: rolled back to step %d, skipping sample positions %s", st.step, step, ranges)
    run.metrics.write({"step": st.step, "event": "rollback", "to_step": step, "skip_ranges": ranges})
    run.state = new
    return True


def run_eval(run: Run) -> float:
    st, p = run.state, run.params
    loss = evaluate(
        run.models.compiled, run.val_data, num_eval_sequences(p, run.val_data), p.micro_batch_size, run.rt, p.doc_mask
    )
    st.val_loss, st.val_step = loss, st.step
    st.best_val_loss = loss if st.best_val_loss is None else min(st.best_val_loss, loss)
    bpb = bits_per_byte(loss, run.bytes_per_token)
    run.metrics.write(
        {
            "step": st.step,
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 700.0)),
            "val_bpb": bpb,
            "unigram_loss": run.unigram,
        }
    )
    if run.rt.is_main:
        log.info("step %d val loss %.4f (unigram %.4f) bpb %.4f", st.step, loss, run.unigram, bpb)
    return loss


def run_steps(run: Run, hooks: FaultHooks, on_step: StepCallback | None = None) -> float | None:
    """The training loop; returns the last training loss. `on_step`: the progress callback (loop.StepCallback)."""
    p, last_loss = run.params, None
    stream = batches(run, run.state.seq_pos, hooks)
    while run.state.step < p.max_steps:
        start, end, micro = next(stream)
        t0 = time.perf_counter()
        out = train_step(
            run.models.train,
            run.optimizer,
            micro,
            run.rt,
            lr_at(run.state.step, p),
            p.grad_clip,
            p.skip_grad_norm_factor,
            run.state.step,
            run.models.ddp,
            hooks.corrupt_loss,
        )
        st = run.state
        st.step, st.seq_pos, st.tokens_seen = st.step + 1, end, st.tokens_seen + run.tokens_per_step
        seconds = time.perf_counter() - t0
        record_step(run, out.loss, lr_at(st.step - 1, p), out.grad_norm, out.skipped, seconds)
        if on_step is not None and run.rt.is_main:
            on_step(st.step, p.max_steps, out.loss, run.tokens_per_step / seconds if seconds > 0 else 0.0)
        last_loss = out.loss
        if run.guard.update(out.loss, (start, end)) and rollback(run):
            stream = batches(run, run.state.seq_pos, hooks)
            continue
        if st.step % p.eval_interval == 0 or st.step == p.max_steps:
            run_eval(run)
        if st.step % p.ckpt_interval == 0 or st.step == p.max_steps:
            save_step(run)
        if hooks.after_step is not None:
            hooks.after_step(st.step)
    return last_loss


def prepare(params: TrainParams, job: TrainJob, rt: Runtime) -> Run:
    """Open the data, build model and optimizer, resume from the latest checkpoint."""
    train_data = TokenShards(paths.join(job.shards_dir, TRAIN_DIR))  # on an object store: via the local cache
    val_data = TokenShards(paths.join(job.shards_dir, VAL_DIR))
    name = resolve_model_name(params, train_data)
    cfg = preset(name, vocab_size=train_data.vocab_size, seq_len=train_data.seq_len)
    models = build_model(cfg, params, rt)
    optimizer = models.raw.configure_optimizers(
        params.lr, params.weight_decay, (params.beta1, params.beta2), rt.device_type
    )
    if rt.world > 1:
        check_processes(params, cfg.seq_len, rt.world)
    accum = grad_accumulation(params, cfg.seq_len, rt.world)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else None
    run = Run(
        params=params,
        rt=rt,
        out=out,
        train_data=train_data,
        val_data=val_data,
        model_name=name,
        cfg=cfg,
        models=models,
        optimizer=optimizer,
        order=DataOrder(train_data.num_sequences, params.seed),
        accum=accum,
        metrics=MetricsLog(out, rt.is_main),
        guard=SpikeGuard(params.spike_factor, params.spike_patience, params.spike_window),
        unigram=unigram_baseline_loss(train_data, val_data, num_eval_sequences(params, val_data)),
        bytes_per_token=job.bytes_per_token,
        lineage={"tokenize_version": job.tokenize_version, "tokenizer_sha256": job.tokenizer_sha256},
        peak=peak_flops(gpu) if gpu and gpu_key_for_device_name(gpu) else None,
    )
    epochs = params.max_steps * run.tokens_per_step / train_data.num_tokens
    if epochs > MAX_EPOCHS:
        log.warning(
            "max_steps=%d x %d tokens per step = %.1f epochs of the %d training tokens (> %g): the model "
            "will mostly memorise; lower max_steps or add data",
            params.max_steps,
            run.tokens_per_step,
            epochs,
            train_data.num_tokens,
            MAX_EPOCHS,
        )
    latest = ckpt.latest_step(str(out))
    if latest is not None and not params.resume:
        raise ValueError(
            f"{out} already holds checkpoints (up to step {latest}) and resume is false; "
            f"use a fresh output directory or set resume: true"
        )
    if latest is not None:
        run.state = restore_step(run, latest)
        run.resumed_from = latest
        run.metrics.truncate_after(latest)
        run.metrics.write({"step": latest, "event": "resume"})
    elif rt.is_main:
        run.metrics.path.unlink(missing_ok=True)
    log.info(
        "train %s (%d params) on %s x%d: %d seq/step (accum %d), %d train seqs, unigram loss %.4f%s",
        name,
        cfg.num_params(),
        rt.device,
        rt.world,
        run.global_batch,
        accum,
        train_data.num_sequences,
        run.unigram,
        f", resumed from {ckpt.step_dir_name(latest)}" if latest is not None else "",
    )
    return run


def finish(
    run: Run,
    last_loss: float | None,
    decode: Callable[[list[int]], str] | None,
    encode: Callable[[str], list[int]] | None,
    seconds: float,
) -> TrainResult:
    """Final evaluation, checkpoint, plot, sample and result.json."""
    st, p = run.state, run.params
    if st.val_step != st.step:
        run_eval(run)
    if ckpt.latest_step(str(run.out)) != st.step:
        save_step(run)
    assert st.val_loss is not None and st.best_val_loss is not None, "no evaluation ran"
    prompt = encode(p.sample_prompt) if encode is not None and p.sample_prompt else []
    prompt = prompt or [int(t) for t in run.val_data.get([0])[0, :8]]
    sample = generate_sample(
        run.models.raw,
        prompt,
        decode,
        p.sample_tokens,
        p.sample_temperature,
        p.sample_top_k or None,
        p.seed,
        run.rt.device,
    )
    t = run.timing
    tps = t["tokens"] / t["seconds"] if t["seconds"] else None
    result = TrainResult(
        model=run.model_name,
        requested_model=p.model,
        resumed_from=run.resumed_from,
        epochs=p.max_steps * run.tokens_per_step / run.train_data.num_tokens,
        num_params=run.models.raw.num_params(),
        steps=st.step,
        tokens_seen=st.tokens_seen,
        train_loss=last_loss,
        val_loss=st.val_loss,
        best_val_loss=st.best_val_loss,
        val_ppl=math.exp(min(st.val_loss, 700.0)),
        val_bpb=bits_per_byte(st.val_loss, run.bytes_per_token),
        unigram_loss=run.unigram,
        tokens_per_s=tps,
        mfu=run.cfg.flops_per_token() * tps / (run.peak * run.rt.world) if tps and run.peak else None,
        skipped_steps=st.skipped_steps,
        rollbacks=st.rollbacks,
        skipped_batches=st.skipped_batches,
        # relative to the run's directory: a staged run (object-store root) trains in a local work directory that
        # is gone once the version is committed, and a data root may move
        checkpoint=ckpt.step_dir_name(st.step),
        metrics_path=run.metrics.path.name,
        plot_path=LOSS_PLOT,
        sample=sample,
        seconds=seconds,
    )
    if run.rt.is_main:
        plot_losses(run.metrics.rows(), run.out / LOSS_PLOT, run.unigram)
        (run.out / SAMPLE).write_text(sample + "\n")
        (run.out / RESULT).write_text(result.model_dump_json(indent=2))
        log.info(
            "done: %d steps, val loss %.4f (unigram %.4f), bpb %.4f -> %s",
            st.step,
            st.val_loss,
            run.unigram,
            result.val_bpb,
            run.out / RESULT,
        )
    barrier(run.rt)
    return result


def train(
    params: TrainParams,
    shards_dir: str | Path,
    out_dir: str | Path,
    bytes_per_token: float,
    *,
    tokenizer_path: str | None = None,
    decode: Callable[[list[int]], str] | None = None,
    encode: Callable[[str], list[int]] | None = None,
    tokenize_version: str = "",
    tokenizer_sha256: str = "",
    hooks: FaultHooks | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train (or resume) a model on a tokenize version's shards; writes everything under out_dir.
    `on_step(step, total_steps, loss, tokens_per_second)`: called after each optimizer step (progress bars)."""
    job = TrainJob(
        params=params,
        shards_dir=str(shards_dir),
        out_dir=str(out_dir),
        bytes_per_token=bytes_per_token,
        tokenizer_path=tokenizer_path,
        tokenize_version=tokenize_version,
        tokenizer_sha256=tokenizer_sha256,
    )
    if tokenizer_path is not None and (encode is None or decode is None):
        sp_encode, sp_decode = sentencepiece_codec(paths.local_copy(tokenizer_path))
        encode, decode = encode or sp_encode, decode or sp_decode
    t0 = time.perf_counter()
    rt = setup_runtime(params.device, params.dtype)
    threads = torch.get_num_threads()
    if rt.device_type == "cpu" and params.cpu_threads:
        torch.set_num_threads(params.cpu_threads)
    try:
        run = prepare(params, job, rt)
        last_loss = run_steps(run, hooks or FaultHooks(), on_step)
        return finish(run, last_loss, decode, encode, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        teardown_runtime(rt)


@record  # under torchrun: a worker's exception goes into torchrun's error summary (its last stderr lines)
def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.train JOB.json` (also under torchrun); the result lands in OUT_DIR/result.json.

    Under torchrun, rank 0 logs at INFO and the other ranks at WARNING (every rank computes the same
    numbers; only rank 0 writes files), each line prefixed with its rank, and every worker dies with
    torchrun (PR_SET_PDEATHSIG): a killed launcher leaves no worker behind."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m tasks.train JOB.json   (a TrainJob: params, shards_dir, out_dir, bytes_per_token)",
            file=sys.stderr,
        )
        return 2
    rank = os.environ.get("RANK") if torch.distributed.is_torchelastic_launched() else None
    if rank is not None:
        with contextlib.suppress(OSError, AttributeError):  # Linux only
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    level = logging.INFO if rank in (None, "0") else logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {f'[rank {rank}] ' if rank is not None else ''}%(name)s %(levelname)s %(message)s",
    )
    for name in ("tasks", "storage", "models"):  # storage/__init__.py sets them to INFO
        logging.getLogger(name).setLevel(level)
    job = TrainJob.model_validate_json(Path(args[0]).read_text())
    train(
        job.params,
        job.shards_dir,
        job.out_dir,
        job.bytes_per_token,
        tokenizer_path=job.tokenizer_path,
        tokenize_version=job.tokenize_version,
        tokenizer_sha256=job.tokenizer_sha256,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
