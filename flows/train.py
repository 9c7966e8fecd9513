"""train_flow: the `tokenize` version's token shards -> the `train` version (checkpoints, metrics, plot).

Training is not sharded: one `train_run` task trains (or resumes), writing `step-NNNNNN/` checkpoints,
`metrics.jsonl`, `loss.png`, `sample.txt` and `result.json`; the manifest (written last) holds the
`TrainResult` (preset, val loss, bits-per-byte, unigram baseline, tokens/s, MFU) in its extras, with
`checkpoint`, `metrics_path` and `plot_path` relative to the version directory. The report, the
`train-metrics` table and the `train-loss-curve` markdown are tasks/train/report.py's.

Progress: with `gpus: 1`, inside `pretrain run`'s live display (flows/progress.py), a training bar (step/total,
loss, tokens/s, ETA) follows the trainer's `on_step` callback; without one the trainer's log lines are all.

Processes: with `gpus: 1` (the default) the task trains in its own process on one device. With
`gpus: N > 1` it launches `torchrun --standalone --nproc_per_node N -m tasks.train <version
dir>/_work/job.json` (tasks/train/launch.py): N DDP processes, one per GPU on CUDA (NCCL), N gloo
processes on CPU, rank 0 writing the same files into the same version directory; their output is
streamed to the task's log, a non-zero exit fails the run naming the exit code and torchrun's last
stderr lines, and an interrupted or cancelled run stops torchrun and its workers. The result is
committed exactly as an in-process run's, and resume works the same (a killed torchrun run's
checkpoints stay). `gpus` is not part of the version id: the batch is `tokens_per_step` whatever the
process count (a count that would change it is refused before launch), so N processes reach the
one-process losses up to floating-point reduction order (on CPU the tests see equal val losses).

One training run per GPU machine: `train_run` carries the Prefect tag `gpu` (`GPU_TAG`), so a tag
concurrency limit, `prefect concurrency-limit create gpu 1`, lets one training task run at a time
across every worker (another waits in `AwaitingConcurrencySlot`); with several GPU machines, raise
it to their number (each run uses all `gpus` of its machine) or give each machine its own work pool.

Resume in place: the stage frame (flows/stage.py `run_stage`) runs with `resumable=True`, so training
writes straight into the version's final directory `<root>/train/<version>/` (same params and input ->
same version -> same directory) while holding the version's lock (`train/.lock-<version>`,
storage.locks). Until the manifest is written last that directory does not exist to readers
(storage.artifacts); its `_writing.json` says `"resumable": true`. A failed or killed run leaves its
checkpoints there (the writer's abort keeps them); the next run of the same version continues from the
latest valid one (meta.json written last, storage.checkpoints) when `resume: true` (the default), or,
with `resume: false`, discards them first (logged as a warning). A run that fails before its first
checkpoint removes the directory; files without a valid checkpoint (a killed run's) are discarded at
the start. `force` retrains from scratch: whatever
the directory holds (a committed run's files or a partial run's) is discarded after the old manifest is
gone. Two runs of one version never write the directory together: the second waits on the version
lock, then reuses the first's version. `result.json` is written in the final directory too, so the
paths in it exist once the version is committed.
`pretrain gc` lists resumable partial runs (a `_writing.json` with `resumable` true) and never deletes
them: an abandoned run's checkpoints stay until you delete `<root>/train/<version>/` yourself.
"""

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.progress import train_progress
from flows.stage import StageOutput, StageRun, run_stage
from storage import checkpoints as ckpt
from storage import paths
from storage.artifacts import WRITING
from storage.manifest import Manifest, ShardInfo
from storage.stats import StageStats
from tasks.train import TrainJob, TrainParams, TrainResult, train
from tasks.train.launch import train_processes
from tasks.train.params import STAGE, STAGE_VERSION, check_processes, grad_accumulation
from tasks.train.report import loss_curve_markdown, metrics_table, report

RESULT_PATHS = ("checkpoint", "metrics_path", "plot_path")
MIRROR_INTERVAL_S = 30.0  # object-store roots: seconds between checkpoint uploads while training
GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu 1`: one training run at a time


@task(task_run_name="train-run", tags=[GPU_TAG])
def train_run(
    params: TrainParams, shards_dir: str, out_dir: str, tokenize: dict[str, Any], version: str
) -> TrainResult:
    """Train in this process (gpus: 1) or in `gpus` torchrun processes (deterministic compute: no retries)."""
    tok_path = paths.join(shards_dir, tokenize["tokenizer_path"]) if tokenize.get("tokenizer_path") else None
    if params.gpus == 1:
        with train_progress(params.max_steps, _tokens_per_step(params, tokenize)) as bar:  # a bar in a live display
            return train(
                params,
                shards_dir,
                out_dir,
                float(tokenize["bytes_per_token"]),
                tokenizer_path=tok_path,
                tokenize_version=version,
                tokenizer_sha256=str(tokenize.get("tokenizer_sha256", "")),
                on_step=bar.on_step,
            )
    _check_processes(params, tokenize)
    job = TrainJob(
        params=params,
        shards_dir=shards_dir,
        out_dir=out_dir,
        bytes_per_token=float(tokenize["bytes_per_token"]),
        tokenizer_path=tok_path,
        tokenize_version=version,
        tokenizer_sha256=str(tokenize.get("tokenizer_sha256", "")),
    )
    return train_processes(job, params.gpus, get_run_logger())


def _tokens_per_step(params: TrainParams, tokenize: dict[str, Any]) -> int:
    """The batch in tokens of a one-process run (tasks/train/params.py `grad_accumulation`)."""
    if "seq_len" not in tokenize:
        return params.tokens_per_step
    seq_len = int(tokenize["seq_len"])
    return grad_accumulation(params, seq_len, 1) * params.micro_batch_size * seq_len


def _check_processes(params: TrainParams, tokenize: dict[str, Any]) -> None:
    """Refuse, before launching, a process count that changes the batch or exceeds the GPUs there are."""
    if "seq_len" in tokenize:
        check_processes(params, int(tokenize["seq_len"]), params.gpus)
    cuda = torch.cuda.is_available() if params.device == "auto" else params.device == "cuda"
    if cuda and torch.cuda.device_count() < params.gpus:
        raise ValueError(
            f"gpus={params.gpus} but this machine has {torch.cuda.device_count()} CUDA devices; lower gpus "
            f"(or set device: cpu for {params.gpus} gloo processes)"
        )


def publish_more(manifest: Manifest, root: str) -> None:
    """The `train-metrics` table and the `train-loss-curve` markdown (called by the frame in a flow run)."""
    create_table_artifact(key="train-metrics", table=metrics_table(manifest))
    create_markdown_artifact(key="train-loss-curve", markdown=loss_curve_markdown(manifest, root))


@flow(name="train")
def train_flow(
    params: TrainParams = TrainParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Train a GPT on a tokenize version (resuming an unfinished run of it); returns the train version id."""
    root = paths.resolve_data_root(data_root)
    return run_stage(
        STAGE,
        STAGE_VERSION,
        params,
        lambda run: _train(run, params, force),
        root,
        input_version,
        force,
        report=report,
        publish_more=publish_more,
        resumable=True,
    )


def _train(run: StageRun, params: TrainParams, force: bool) -> StageOutput:
    """The phases: train (or resume) in the version's directory; the frame commits it. On an object-store root
    training runs in a local work directory (torch checkpoints, memory-mapped shards from the local cache) and its
    files are uploaded into the version before the commit (`_train_staged`)."""
    assert run.input_manifest is not None and run.writer is not None
    if paths.is_remote(run.writer.path):
        return _train_staged(run, params, force)
    return _train_in(run, params, force, run.writer.local_path())


def _train_staged(run: StageRun, params: TrainParams, force: bool) -> StageOutput:
    """Train into `<cache>/work/train-<hash of the version URL>` and mirror it into the version directory while it
    trains (`storage.checkpoints.Mirror`: every `MIRROR_INTERVAL_S`, each complete checkpoint uploaded with its
    meta.json last, pruned ones deleted, metrics re-sent; and once more at the end, success or failure).
    Resume: a local work directory left by a killed run on this machine is continued; else the checkpoints
    uploaded to the version are downloaded first, so a run killed outright (SIGKILL) on one machine resumes on
    another from its last uploaded checkpoint."""
    assert run.writer is not None
    remote = run.writer.path
    fs, base = paths.filesystem(remote)
    local = paths.local_work_dir(remote, "train")
    if force or not params.resume:
        paths.remove_local(local)
        os.makedirs(local)
        for entry in fs.ls(base, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != WRITING:
                fs.rm(entry, recursive=True)
    elif (ckpt.latest_step(remote) or -1) > (ckpt.latest_step(local) or -1):  # the upload is newer: start from it
        paths.remove_local(local)
        for entry in fs.ls(base, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name != WRITING:
                fs.get(entry, os.path.join(local, name), recursive=True)
    try:
        with ckpt.Mirror(local, remote, MIRROR_INTERVAL_S):  # each checkpoint is uploaded once it is complete
            out = _train_in(run, params, force, local)
    finally:
        paths.remove_local(local)
    return out


def _train_in(run: StageRun, params: TrainParams, force: bool, out: str) -> StageOutput:
    assert run.input_manifest is not None
    tok = run.input_manifest
    logger = get_run_logger()
    _start_or_resume(run.version, out, params, force)
    try:
        result = train_run(params, paths.version_dir(run.root, tok.stage, tok.version), out, tok.extras, tok.version)
    except BaseException:
        last = ckpt.latest_step(out)
        if last is not None:
            logger.warning(
                "train@%s failed; its checkpoints stay in %s and the next run of this version resumes from %s",
                run.version,
                out,
                ckpt.step_dir_name(last),
            )
        else:  # nothing to resume from
            shutil.rmtree(out, ignore_errors=True)
        raise
    logger.info(
        "trained %s (%s) for %d steps in %.0fs: val loss %.4f (unigram %.4f), %.4f bits/byte",
        result.model,
        "auto" if result.requested_model == "auto" else "configured",
        result.steps,
        result.seconds,
        result.val_loss,
        result.unigram_loss,
        result.val_bpb,
    )
    assert not any(os.path.isabs(getattr(result, k)) for k in RESULT_PATHS), "result paths are relative to the run"
    return StageOutput(
        shards=[ShardInfo(name=result.checkpoint, rows=result.tokens_seen, bytes=0)],
        stats=StageStats(),
        extras={"result": result.model_dump(mode="json")},
    )


def _start_or_resume(version: str, out: str, params: TrainParams, force: bool) -> None:
    """Log what the run continues from; with force or resume: false, discard what the directory holds."""
    logger = get_run_logger()
    previous = ckpt.latest_step(out)
    if force or previous is None:  # force: retrain; no valid checkpoint: a killed run's files are useless
        if _discard(out) and force:
            logger.info("force: discarded the files of an earlier run of train@%s in %s", version, out)
        logger.info("train@%s: starting from scratch in %s", version, out)
    elif not params.resume:
        logger.warning(
            "train@%s: resume is false: discarding the unfinished run in %s (up to %s)",
            version,
            out,
            ckpt.step_dir_name(previous),
        )
        _discard(out)
    else:
        logger.info("train@%s: resuming from %s in %s", version, ckpt.step_dir_name(previous), out)


def _discard(out: str) -> bool:
    """Remove everything in the version's directory but its `_writing.json`; whether anything was there."""
    entries = [e for e in Path(out).iterdir() if e.name != WRITING]
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return bool(entries)
