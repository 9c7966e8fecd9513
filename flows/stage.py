"""The shared life cycle of a stage run under Prefect: resolve, version, reuse-or-run, commit, publish.

`run_sharded_stage` is the whole flow body of a one-pass document stage:
  1. resolve the input version (`latest` or explicit) and derive this stage's version id; take that
     version's lock, waiting (bounded, logged) while another run of the same version holds it;
  2. if that version is complete (manifest present) and not forced, log "reused <stage>@<version>",
     point `latest` at it, publish the artifacts again and return;
  3. otherwise map the stage's shard task over the input shards on the flow's task runner, with a
     terminal progress bar and a Prefect progress artifact;
  4. merge shard stats, enforce `max_error_fraction`, write the manifest last, rename into place;
  5. publish `<stage>-stats` (table) and `<stage>-summary` (markdown: version, path, samples, report).

Multi-phase stages (dedup, decontaminate, mix, tokenize, train) use the same pieces directly:
`begin_stage` -> their own tasks -> `finish_stage`. Orchestration knows nothing about documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped
from tqdm import tqdm

from flows.interrupt import ignore_sigint, kill_workers, note_stage
from storage import paths
from storage.documents import read_documents
from storage.manifest import (
    Manifest,
    ShardInfo,
    Stage,
    VersionLock,
    VersionWriter,
    compute_version,
    is_complete,
    load_manifest,
    new_manifest,
    set_latest,
    upstream_of,
)
from storage.params import StageParams
from storage.shards import ShardResult
from storage.stats import StageStats

ReportFn = Callable[[Manifest, str], str]
SHARD_NOTE = "input shard: "


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # outside a flow/task run (plain unit tests): fall back to the module logger
        return logging.getLogger(__name__)


@dataclass
class StageRun:
    """One stage execution being set up: where it reads, what version it makes, where it writes."""

    stage: Stage
    stage_version: int
    root: str
    version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    input_manifest: Manifest | None
    reused: Manifest | None = None
    writer: VersionWriter | None = None
    started: float = field(default_factory=time.perf_counter)
    lock: VersionLock | None = None

    def release(self) -> None:
        """Release the version lock (after commit or abort; idempotent)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def out_dir(self) -> str:
        assert self.writer is not None, f"{self.stage}@{self.version} has no writer (reused)"
        return self.writer.tmp_path

    def input_shard_paths(self) -> list[str]:
        assert self.input_manifest is not None
        m = self.input_manifest
        return [paths.version_dir(self.root, m.stage, m.version) + "/" + s.name for s in m.shards]


def begin_stage(
    stage: Stage,
    stage_version: int,
    params: StageParams,
    data_root: str | None,
    input_version: str = "latest",
    force: bool = False,
    extra_inputs: dict[str, str] | None = None,
) -> StageRun:
    """Resolve inputs and version; return a StageRun that is either reused or ready to write.

    The version's lock (storage.manifest.VersionLock, local data roots only) is taken first: while another
    run of the same version holds it, this one logs that it waits, and where, and then reuses what that run
    committed (or runs it, if that run failed). A StageRun ready to write holds the lock until
    `finish_stage` or `abort_on_error`; a reused one has released it."""
    root = paths.resolve_data_root(data_root)
    up = upstream_of(stage)
    input_manifest = load_manifest(root, up, input_version) if up is not None else None
    inputs = {str(up): input_manifest.version} if input_manifest is not None else {}
    inputs.update(extra_inputs or {})
    vparams = params.version_params()
    version = compute_version(stage, stage_version, vparams, inputs)
    run = StageRun(stage, stage_version, root, version, params.model_dump(mode="json"), inputs, input_manifest)
    note_stage(str(stage))
    if is_complete(root, stage, version) and not force:  # reuse needs no lock and writes nothing
        return _reuse(run)
    run.lock = VersionLock(root, stage, version)
    run.lock.acquire(on_wait=_log().info)
    try:
        if is_complete(root, stage, version) and not force:
            run.release()
            return _reuse(run)
        if force and is_complete(root, stage, version):
            _log().info("force: recomputing %s@%s", stage, version)
        run.writer = VersionWriter(root, stage, version, replace=force)
    except BaseException:
        run.release()
        raise
    _log().info("running %s@%s (inputs %s) -> %s", stage, version, inputs or "raw files", run.writer.final_path)
    return run


def _reuse(run: StageRun) -> StageRun:
    run.reused = load_manifest(run.root, run.stage, run.version)
    set_latest(run.root, run.stage, run.version)
    _log().info("reused %s@%s (complete; %d docs out)", run.stage, run.version, run.reused.stats.docs_out)
    return run


def map_shards(run: StageRun, shard_task: Any, sources: Sequence[str], params: StageParams) -> list[Any]:
    """Map `shard_task(src, out_dir, index, params)` over sources; progress bar + progress artifact.

    Returns the shard task's results (a ShardResult or a stage's subclass of it), in source order."""
    futures = shard_task.map(list(sources), unmapped(run.out_dir), list(range(len(sources))), unmapped(params))
    source_of = {id(f): src for f, src in zip(futures, sources)}
    progress_id = _progress_artifact(run)
    results: list[ShardResult] = []
    docs = 0
    with tqdm(total=len(futures), desc=f"{run.stage} shards", unit="shard") as bar:
        try:
            for fut in as_completed(futures):
                try:
                    res: ShardResult = fut.result()
                except Exception as err:  # name the input: the one-line error the CLI prints needs it
                    err.add_note(f"{SHARD_NOTE}{source_of[id(fut)]}")
                    raise
                results.append(res)
                docs += res.stats.docs_in
                bar.set_postfix(docs=docs, kept=sum(r.stats.docs_out for r in results))
                bar.update(1)
                if progress_id is not None:
                    update_progress_artifact(artifact_id=progress_id, progress=100.0 * len(results) / len(futures))
        except Exception:
            wait(futures)  # let running shards stop writing before the caller removes the temp dir
            raise
        except BaseException:  # Ctrl-C / SIGTERM: end the workers now instead of waiting for their shards
            kill_workers()
            raise
    return sorted(results, key=lambda r: r.index)


class InterruptiblePool(ProcessPoolTaskRunner):
    """Prefect's process pool whose workers ignore Ctrl-C and are killed, not awaited, on an interrupt.

    The stock runner's exit waits for every running shard (`shutdown(wait=True)`), so a Ctrl-C or SIGTERM
    sat there until the shards finished, or forever when a worker was blocked (flows/interrupt.py).
    """

    def __init__(self, max_workers: int | None = None, **kw: Any) -> None:
        super().__init__(max_workers=max_workers, **kw)
        self._initializer = ignore_sigint  # set after construction: duplicate() copies it this way too

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            kill_workers()
        super().__exit__(exc_type, exc_value, traceback)


def task_runner(workers: int) -> Any:
    """Process pool for CPU-bound shards (STYLE 9); a single thread when workers == 1 (tests, debugging)."""
    return InterruptiblePool(max_workers=workers) if workers > 1 else ThreadPoolTaskRunner(max_workers=1)


def _progress_artifact(run: StageRun) -> Any:
    if FlowRunContext.get() is None:
        return None
    return create_progress_artifact(
        progress=0.0, key=f"{run.stage}-progress", description=f"{run.stage}@{run.version}: shards done"
    )


def finish_stage(
    run: StageRun,
    shards: list[ShardInfo],
    rejected: list[ShardInfo],
    stats: StageStats,
    extras: dict[str, Any] | None = None,
    max_error_fraction: float | None = None,
    report: ReportFn | None = None,
) -> Manifest:
    """Check, write the manifest last, commit atomically, publish artifacts."""
    assert run.writer is not None
    stats.seconds = time.perf_counter() - run.started
    where = f"{run.stage}@{run.version}"
    try:
        if max_error_fraction is not None:
            stats.check_error_fraction(max_error_fraction, where)
        manifest = new_manifest(
            run.stage, run.stage_version, run.version, run.params, run.inputs, shards, rejected, stats, extras
        )
        run.writer.commit(manifest)
    except BaseException:
        run.writer.abort()
        raise
    finally:
        run.release()
    _log().info(
        "committed %s: %d docs in, %d out, %s dropped, %.1fs",
        where,
        stats.docs_in,
        stats.docs_out,
        dict(stats.dropped),
        stats.seconds,
    )
    publish(manifest, run.root, report)
    return manifest


def abort_on_error(run: StageRun) -> None:
    """Remove the version's temporary dir and release its lock."""
    try:
        if run.writer is not None:
            run.writer.abort()
    finally:
        run.release()


def run_sharded_stage(
    stage: Stage,
    stage_version: int,
    params: StageParams,
    shard_task: Any,
    data_root: str | None = None,
    input_version: str = "latest",
    force: bool = False,
    sources: Sequence[str] | None = None,
    extra_inputs: dict[str, str] | None = None,
    report: ReportFn | None = None,
    max_error_fraction: float | None = None,
    extras: dict[str, Any] | None = None,
    check: Callable[[list[Any]], None] | None = None,
) -> str:
    """Flow body of a one-pass document stage; returns the output version id.

    `check(results)` runs after every shard and before anything is committed (ingest's error budget, which
    names the worst files); raising aborts the version."""
    run = begin_stage(stage, stage_version, params, data_root, input_version, force, extra_inputs)
    if run.reused is not None:
        publish(run.reused, run.root, report, reused=True)
        return run.version
    try:
        results = map_shards(run, shard_task, sources if sources is not None else run.input_shard_paths(), params)
        if check is not None:
            check(results)
    except BaseException:
        abort_on_error(run)
        raise
    stats = StageStats.merge_all([r.stats for r in results])
    finish_stage(
        run,
        [r.shard for r in results],
        [r.rejected for r in results],
        stats,
        extras=extras,
        max_error_fraction=max_error_fraction,
        report=report,
    )
    return run.version


# ---------------------------------------------------------------- artifacts (Prefect UI views of the manifest)


def sample_documents(
    root: str, manifest: Manifest, n: int = 5, rejected: bool = False, reason: str | None = None
) -> list[dict[str, Any]]:
    """First n (rejected) documents of a version, as dicts; for artifacts and `pretrain inspect`."""
    out: list[dict[str, Any]] = []
    base = paths.version_dir(root, manifest.stage, manifest.version)
    for s in manifest.rejected if rejected else manifest.shards:
        if not s.rows or not s.name.endswith(".parquet"):
            continue
        for d in read_documents(paths.join(base, s.name)):
            if reason is not None and d.meta.get("reason") != reason:
                continue
            out.append({"id": d.id, "url": d.url, "source": d.source, "text": d.text, **d.meta})
            if len(out) >= n:
                return out
    return out


def summary_markdown(manifest: Manifest, root: str, report: ReportFn | None = None, reused: bool = False) -> str:
    path = paths.version_dir(root, manifest.stage, manifest.version)
    s = manifest.stats
    lines = [
        f"# {manifest.stage}@{manifest.version}" + (" (reused)" if reused else ""),
        "",
        f"- directory: `{path}`",
        f"- inputs: {manifest.inputs or 'raw files'}",
        f"- documents: {s.docs_in} in, {s.docs_out} out, {s.docs_dropped} dropped {dict(s.dropped)}",
        f"- created: {manifest.created_at}, code {manifest.code_version}",
        "",
    ]
    if report is not None:
        lines += [report(manifest, root), ""]
    samples = (
        sample_documents(root, manifest) if manifest.shards and manifest.shards[0].name.endswith(".parquet") else []
    )
    if samples:
        lines += ["## Sample documents", ""]
        for d in samples:
            text = " ".join(d["text"][:300].split())
            lines.append(f"- `{d['id']}` {d['url']} [{d['source']}]: {text}...")
    return "\n".join(lines)


def publish(manifest: Manifest, root: str, report: ReportFn | None = None, reused: bool = False) -> None:
    """Publish `<stage>-stats` and `<stage>-summary` artifacts (no-op outside a flow run)."""
    if FlowRunContext.get() is None:
        return
    stage = str(manifest.stage)
    table = manifest.stats.table() + [
        {"metric": "version", "value": manifest.version},
        {"metric": "reused", "value": reused},
    ]
    create_table_artifact(
        key=f"{stage}-stats", table=table, description=f"{stage}@{manifest.version}: documents in/out, drops by reason"
    )
    create_markdown_artifact(
        key=f"{stage}-summary",
        markdown=summary_markdown(manifest, root, report, reused),
        description=f"{stage}@{manifest.version}: where it is, what it kept",
    )
