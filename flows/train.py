"""train_flow: the `tokenize` version's token shards -> the `train` version (checkpoints, metrics, plot).

Training is not sharded: one `train_run` task trains (or resumes) in-process on one device, writing
`step-NNNNNN/` checkpoints, `metrics.jsonl`, `loss.png` and a text sample; the manifest (written last)
holds the `TrainResult` (preset, val loss, bits-per-byte, unigram baseline, tokens/s, MFU) in its extras.
Multi-GPU runs use `python -m tasks.train PARAMS_FILE` under torchrun (see tasks/train/__init__.py).

Cross-run resume: the run writes into a stable work dir, `<root>/train/.work-<version>/` (same params and
input -> same version -> same dir), not into the version's temporary dir, which is deleted when a run
fails. A failed or killed run leaves its checkpoints there; the next run of the same version continues
from the latest valid one (meta.json written last) when `resume: true` (the default), or discards them
when `resume: false`. On success the files are hard-linked into the version's temporary dir, the version
is committed, and the work dir is removed. Two runs of one version do not meet in the work dir: the second
waits in `begin_stage` on the version lock (`train/.lock-<version>`, storage.manifest.VersionLock) until the
first has committed, then reuses its version; the work dir's own `.lock` (flock) is a second guard (a run
that finds it held fails at once). `pretrain gc` lists `.work-*` dirs and never deletes them
(storage/gc.py): an abandoned run's checkpoints stay until you delete `<root>/train/.work-<version>/`
yourself; it removes a killed run's `train/.tmp-<version>-*` dir once no run holds that version's lock.
"""

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from flows.stage import StageRun, abort_on_error, begin_stage, finish_stage, publish
from storage import checkpoints as ckpt
from storage import paths
from storage.manifest import Manifest, ShardInfo, is_complete
from storage.stats import StageStats
from storage.token_shards import TRAIN_DIR
from tasks.train import RESULT, TrainParams, TrainResult, train

from tasks.train.params import STAGE, STAGE_VERSION
WORK_PREFIX = ".work-"
LOCK = ".lock"


def train_tokens(tokenize: Manifest) -> int:
    """Tokens in the train split of a tokenize version (rows x (seq_len + 1), as the trainer counts them)."""
    e = tokenize.extras
    return int(e["sequences"][TRAIN_DIR]) * (int(e["seq_len"]) + 1)


def work_dir(root: str, version: str) -> Path:
    """Where a train version's checkpoints live until it is committed."""
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"train needs a local data root (checkpoints, memory-mapped shards), got {root}")
    return Path(paths.version_dir(root.removeprefix("file://"), str(STAGE), WORK_PREFIX + version))


@contextmanager
def locked(work: Path) -> Iterator[Path]:
    """Create the work dir and hold its lock (released when the process exits, however it exits)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"{work} is in use by another run of the same train version (lock {work / LOCK}); "
                f"wait for that run or stop it"
            ) from None
        yield work


def _clear(work: Path) -> None:
    for entry in work.iterdir():
        if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


@task(task_run_name="train-run")
def train_run(
    params: TrainParams, shards_dir: str, out_dir: str, tokenize: dict[str, Any], version: str
) -> TrainResult:
    """Train on one device in this process (deterministic compute: no retries)."""
    tok_path = paths.join(shards_dir, tokenize["tokenizer_path"]) if tokenize.get("tokenizer_path") else None
    return train(
        params,
        shards_dir,
        out_dir,
        float(tokenize["bytes_per_token"]),
        tokenizer_path=tok_path,
        tokenize_version=version,
        tokenizer_sha256=str(tokenize.get("tokenizer_sha256", "")),
    )


def report_markdown(manifest: Manifest, root: str) -> str:
    r = manifest.extras.get("result") or {}
    if not r:
        return ""
    requested = r.get("requested_model")
    model = f"{r.get('model')} (auto)" if requested == "auto" else r.get("model")
    rows = [
        ("model", model),
        ("parameters", r.get("num_params")),
        ("steps", r.get("steps")),
        ("tokens seen", r.get("tokens_seen")),
        ("epochs", r.get("epochs")),
        ("val loss (nats/token)", r.get("val_loss")),
        ("unigram baseline loss", r.get("unigram_loss")),
        ("val bits per byte", r.get("val_bpb")),
        ("val perplexity", r.get("val_ppl")),
        ("tokens/s", r.get("tokens_per_s")),
        ("MFU", r.get("mfu")),
        ("seconds", r.get("seconds")),
        ("resumed from step", r.get("resumed_from")),
        ("skipped steps", r.get("skipped_steps")),
        ("rollbacks", r.get("rollbacks")),
    ]
    table = "\n".join(
        ["| metric | value |", "|---|---|"]
        + [f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |" for k, v in rows]
    )
    return f"## Training\n\n{table}\n\n## Sample\n\n```\n{r.get('sample', '')}\n```"


@flow(name="train")
def train_flow(
    params: TrainParams = TrainParams(),
    data_root: Optional[str] = None,
    input_version: str = "latest",
    force: bool = False,
) -> str:
    """Train a GPT on a tokenize version (resuming an unfinished run of it); returns the train version id."""
    run = begin_stage(STAGE, STAGE_VERSION, params, data_root, input_version, force)
    work = work_dir(run.root, run.version)
    logger = get_run_logger()
    if run.reused is not None:
        if work.exists():  # left by a run that committed but died before cleaning up
            try:
                with locked(work):
                    shutil.rmtree(work)
            except RuntimeError as err:  # a forced recompute of this version is running: its files
                logger.info("left %s alone: %s", work, err)
        publish(run.reused, run.root, report_markdown, reused=True)
        return run.version
    try:
        with locked(work):
            result = _train_and_commit(run, params, work, logger)
    except BaseException:
        abort_on_error(run)
        raise
    if FlowRunContext.get() is not None:
        create_table_artifact(
            key="train-metrics",
            table=[{"metric": k, "value": v} for k, v in result.model_dump(mode="json").items() if k != "sample"],
        )
        create_markdown_artifact(key="train-loss-curve", markdown=_plot_markdown(run, result))
    return run.version


def _train_and_commit(run: StageRun, params: TrainParams, work: Path, logger: Any) -> TrainResult:
    """Train in the (locked) work dir, link its files into the version, commit, remove the work dir."""
    assert run.input_manifest is not None
    tok = run.input_manifest
    try:
        _start_or_resume(run, work, params, logger)
        result = train_run(
            params, paths.version_dir(run.root, tok.stage, tok.version), str(work), tok.extras, tok.version
        )
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
        # paths relative to the version dir; hard links: no copy of the checkpoints, and the work dir keeps
        # them until the commit has succeeded
        rel = {k: os.path.relpath(getattr(result, k), work) for k in ("checkpoint", "metrics_path", "plot_path")}
        result = result.model_copy(update=rel)
        shutil.copytree(
            work, run.out_dir, copy_function=os.link, ignore=shutil.ignore_patterns(LOCK), dirs_exist_ok=True
        )
        finish_stage(
            run,
            [ShardInfo(name=rel["checkpoint"], rows=result.tokens_seen, bytes=0)],
            [],
            StageStats(),
            extras={"result": result.model_dump(mode="json")},
            report=report_markdown,
        )
    except BaseException:
        last = ckpt.latest_step(str(work))
        if last is not None:
            logger.warning(
                "train@%s failed; its checkpoints stay in %s and the next run of this version resumes from %s",
                run.version,
                work,
                ckpt.step_dir_name(last),
            )
        else:
            _clear(work)  # nothing to resume from
        raise
    shutil.rmtree(work)
    return result


def _start_or_resume(run: StageRun, work: Path, params: TrainParams, logger: Any) -> None:
    """Log what the run continues from; with resume: false, discard an unfinished run's files first."""
    version = run.version
    if is_complete(run.root, STAGE, version) and (work / RESULT).exists():
        _clear(work)  # force: a finished run's leftovers would only be copied, not recomputed
    previous = ckpt.latest_step(str(work))
    if previous is None:
        logger.info("train@%s: starting from scratch in %s", version, work)
    elif not params.resume:
        logger.warning(
            "train@%s: resume is false: discarding the unfinished run in %s (up to %s)",
            version,
            work,
            ckpt.step_dir_name(previous),
        )
        _clear(work)
    else:
        logger.info("train@%s: resuming from %s in %s", version, ckpt.step_dir_name(previous), work)


def _plot_markdown(run: Any, result: TrainResult) -> str:
    import base64

    png = Path(paths.version_dir(run.root, STAGE, run.version)) / Path(result.plot_path).name
    if not png.is_file():
        return f"loss curve: `{png}` (not found)"
    data = base64.b64encode(png.read_bytes()).decode()
    return f"# train@{run.version} loss curve\n\n![loss curve](data:image/png;base64,{data})\n\n`{png}`"
