"""The one stage frame: resolve -> version -> reuse, or run the phases -> commit or abort -> publish.

`run_stage(stage, stage_version, params, phases, ...)` is the whole life cycle of a stage run; a stage
flow keeps only its phases (`phases(run) -> StageOutput`):
  1. resolve the input version (`latest` or explicit) of the stage's upstream (the row before it in the
     pipeline table, flows/pipeline.py) and derive this stage's version id from its params, that input
     and `extra_inputs`; take the version's lock (local data roots), waiting (logged) while another run
     of the same version holds it;
  2. if that version is complete and not forced: log "reused <stage>@<version>", point `latest` at it,
     publish its artifacts again, return;
  3. otherwise open its `ArtifactWriter` (storage.artifacts: files under the final path, manifest last)
     and run the phases; shard maps go through `map_shards` on the flow's task runner (progress bar,
     flows/progress.py, and Prefect progress artifact); `sharded(task)` is the phases of a one-pass document stage;
  4. merge stats, enforce `max_error_fraction`, commit (manifest last) or, on any error, abort;
  5. publish `<stage>-stats` (table), `<stage>-summary` (markdown: version, path, samples, the stage's
     report) and the stage's extra artifacts.
Orchestration knows nothing about documents; stages know nothing about executors.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import as_completed, wait
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from flows.interrupt import block_sigint, ignore_sigint, kill_workers, note_stage
from flows.progress import stage_progress
from reports import version_summary
from storage import paths
from storage.artifacts import ArtifactWriter, ensure_artifact
from storage.dataset_card import dataset_card
from storage.documents import ShardResult
from storage.errors import SHARD_NOTE
from storage.files import write_atomic
from storage.manifest import Manifest, ShardInfo, compute_version, load_manifest, set_latest
from storage.params import StageParams
from storage.stats import StageStats

if TYPE_CHECKING:
    from flows.config import RunnerConfig

ReportFn = Callable[[Manifest, str], str]
PublishFn = Callable[[Manifest, str], None]
Phases = Callable[["StageRun"], "StageOutput"]
UPSTREAM = "pipeline"  # run_stage's default: the stage's upstream is the row before it in the pipeline table


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # outside a flow/task run (plain unit tests): fall back to the module logger
        return logging.getLogger(__name__)


@dataclass
class StageOutput:
    """What a stage's phases made: the manifest's shards, rejected shards, stats and extras."""

    shards: list[ShardInfo]
    stats: StageStats
    rejected: list[ShardInfo] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Sequence[ShardResult], extras: dict[str, Any] | None = None) -> StageOutput:
        """The output of document shards (kept + rejected shard of each, stats merged)."""
        return cls(
            shards=[r.shard for r in results],
            rejected=[r.rejected for r in results],
            stats=StageStats.merge_all([r.stats for r in results]),
            extras=dict(extras or {}),
        )


@dataclass
class StageRun:
    """One stage execution: where it reads, what version it makes, where it writes."""

    stage: str
    stage_version: int
    root: str
    version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    input_manifest: Manifest | None
    params_model: StageParams | None = None
    writer: ArtifactWriter | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def out_dir(self) -> str:
        """The version's directory, written in place (storage.artifacts)."""
        assert self.writer is not None, f"{self.stage}@{self.version} has no writer (not running)"
        return self.writer.path

    def input_shard_paths(self) -> list[str]:
        assert self.input_manifest is not None
        m = self.input_manifest
        return [paths.join(paths.version_dir(self.root, m.stage, m.version), s.name) for s in m.shards]

    def note_input(self, kind: str, version: str) -> None:
        """Record an artifact the phases built or chose (a score cache, a tokenizer) in the lineage: it goes
        into the manifest's `inputs` (gc keeps it with this version) but not into the version id, which
        already covers everything it was derived from."""
        self.inputs[kind] = version
        if self.writer is not None:
            self.writer.note_input(kind, version)


def upstream_stage(stage: str) -> str | None:
    # imported here: the pipeline table imports every stage flow, and those import this module
    from flows.pipeline import upstream_of

    return upstream_of(stage)


def resolve_stage(
    stage: str,
    stage_version: int,
    params: StageParams,
    data_root: str | None,
    input_version: str = "latest",
    extra_inputs: dict[str, str] | None = None,
    upstream: str | None = UPSTREAM,
) -> StageRun:
    """Load the input version's manifest and derive this stage's version id (takes nothing, writes nothing)."""
    root = paths.resolve_data_root(data_root)
    up = upstream_stage(stage) if upstream == UPSTREAM else upstream
    input_manifest = load_manifest(root, up, input_version) if up is not None else None
    inputs = {up: input_manifest.version} if up is not None and input_manifest is not None else {}
    inputs.update(extra_inputs or {})
    version = compute_version(stage, stage_version, params.version_params(), inputs)
    return StageRun(stage, stage_version, root, version, params.model_dump(mode="json"), inputs, input_manifest, params)


def stage_manifest(run: StageRun, out: StageOutput, max_error_fraction: float | None = None) -> Manifest:
    """The manifest of a finished run, after its error budget is checked (committed by the caller)."""
    assert run.writer is not None
    out.stats.seconds = time.perf_counter() - run.started
    if max_error_fraction is not None:
        out.stats.check_error_fraction(max_error_fraction, f"{run.stage}@{run.version}")
    card = dataset_card(
        run.stage,
        run.version,
        run.inputs,
        [s.name for s in [*out.shards, *out.rejected]] + _anneal_names(out.extras),
        out.stats.docs_out,
        dict(out.stats.dropped),
    )
    if card is not None:  # a document version: its README.md makes it load in one line (storage.dataset_card)
        write_atomic(run.writer.fs, paths.join(run.writer.path, "README.md"), card.encode())
    return run.writer.manifest(run.stage_version, run.params, out.shards, out.stats, out.rejected, out.extras)


def _anneal_names(extras: dict[str, Any]) -> list[str]:
    return [str(s["name"]) for s in extras.get("anneal_shards", []) if isinstance(s, dict) and "name" in s]


def run_stage(
    stage: str,
    stage_version: int,
    params: StageParams,
    phases: Phases,
    data_root: str | None = None,
    input_version: str = "latest",
    force: bool = False,
    extra_inputs: dict[str, str] | None = None,
    upstream: str | None = UPSTREAM,
    report: ReportFn | None = None,
    publish_more: PublishFn | None = None,
    max_error_fraction: float | None = None,
    resumable: bool = False,
) -> str:
    """The stage frame (module docstring); returns the output version id.

    `upstream`: the artifact kind the stage reads (None: raw files); by default the row before `stage`
    in the pipeline table. `publish_more(manifest, root)` publishes a stage's extra Prefect artifacts.
    `resumable`: a failed run leaves its files for the next run of the version to resume from (training)."""
    run = resolve_stage(stage, stage_version, params, data_root, input_version, extra_inputs, upstream)
    note_stage(stage)

    def build(writer: ArtifactWriter) -> Manifest:
        run.writer, run.started = writer, time.perf_counter()
        if force and writer.replaced:
            _log().info("force: recomputing %s@%s", stage, run.version)
        _log().info("running %s@%s (inputs %s) -> %s", stage, run.version, run.inputs or "raw files", writer.path)
        return stage_manifest(run, phases(run), max_error_fraction)

    manifest, reused = ensure_artifact(
        run.root, stage, run.version, build, run.inputs, force, resumable, on_wait=_log().info
    )
    if reused:
        set_latest(run.root, stage, run.version)
        _log().info("reused %s@%s (complete; %d docs out)", stage, run.version, manifest.stats.docs_out)
    else:
        s = manifest.stats
        _log().info(
            "committed %s@%s: %d docs in, %d out, %s dropped, %.1fs",
            stage,
            run.version,
            s.docs_in,
            s.docs_out,
            dict(s.dropped),
            s.seconds,
        )
    publish(manifest, run.root, report, reused=reused, more=publish_more)
    return run.version


def sharded(
    shard_task: Any,
    sources: Sequence[str] | None = None,
    job: Any = None,
    check: Callable[[list[Any]], None] | None = None,
    extras: dict[str, Any] | None = None,
) -> Phases:
    """The phases of a one-pass document stage: map `shard_task` over `sources` (default: the input
    version's shards) with `job` (default: the params); `check(results)` runs before anything is
    committed (ingest's error budget, which names the worst files)."""

    def phases(run: StageRun) -> StageOutput:
        srcs = list(sources) if sources is not None else run.input_shard_paths()
        results = map_shards(run, shard_task, srcs, job if job is not None else _params_of(run))
        if check is not None:
            check(results)
        return StageOutput.of(results, extras)

    return phases


def _params_of(run: StageRun) -> Any:
    assert run.params_model is not None
    return run.params_model


def map_shards(
    run: StageRun, shard_task: Any, sources: Sequence[str], job: Any, out_dir: str | None = None
) -> list[Any]:
    """Map `shard_task(src, out_dir, index, job)` over sources (out_dir: the version's, or a side artifact's
    the phases write); progress bar (flows/progress.py: a bar in a live display, else one summary line) +
    progress artifact. Returns the results (each with an `index`, e.g.
    ShardResult), in source order."""
    target = out_dir if out_dir is not None else run.out_dir
    futures = shard_task.map(list(sources), unmapped(target), list(range(len(sources))), unmapped(job))
    source_of = {id(f): src for f, src in zip(futures, sources)}
    progress_id = _progress_artifact(run)
    results: list[Any] = []
    docs = kept = 0
    with stage_progress(run.stage, len(futures), unit="shard") as bar:
        try:
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as err:  # name the input: the one-line error the CLI prints needs it
                    err.add_note(f"{SHARD_NOTE}{source_of[id(fut)]}")
                    raise
                results.append(res)
                if isinstance(getattr(res, "stats", None), StageStats):
                    docs, kept = docs + res.stats.docs_in, kept + res.stats.docs_out
                    bar.advance(1, docs=docs, kept=kept)
                else:
                    bar.advance(1)
                if progress_id is not None:
                    update_progress_artifact(artifact_id=progress_id, progress=100.0 * len(results) / len(futures))
        except Exception:
            wait(futures)  # let running shards stop writing before the frame removes what they wrote
            raise
        except BaseException:  # Ctrl-C / SIGTERM: end the workers now instead of waiting for their shards
            kill_workers()
            raise
    return sorted(results, key=lambda r: r.index)


class _Shared:
    """The process pool kept between stages inside `shared_process_pools()` (one per worker count)."""

    enabled = False
    pools: dict[int, tuple[Any, Any, Any]] = {}  # max_workers -> (executor, message queue, forwarding thread)
    in_worker = False  # this process is one of an InterruptiblePool's workers (`_init_pool_worker`)


def _init_pool_worker() -> None:
    """InterruptiblePool's worker initializer: Ctrl-C is left to the parent (`ignore_sigint`), and the process
    knows it is a pool worker: Prefect rebuilds every task run's context in the worker, entering a copy of
    the flow's task runner each time (`hydrated_context`), which then starts no pool of its own (a queue, a
    forwarding thread and two executors, torn down after the task) unless the task submits tasks. Its
    garbage collector goes back to the normal settings: a worker of `pretrain` imported Prefect collecting
    lazily (flows/__main__.py)."""
    from flows.startup import normal_collector

    ignore_sigint()
    normal_collector()
    _Shared.in_worker = True


@contextlib.contextmanager
def shared_process_pools(prewarm: int = 0, modules: Sequence[str] = ()) -> Iterator[None]:
    """Inside this block every stage's `InterruptiblePool` of the same size uses one process pool: its workers
    are spawned, import the stage modules and load their models once per run instead of once per stage
    (measured: ~2 s of start-up and ~2 s of shutdown per stage flow on 2 cores, bench/pipeline.py). `pretrain
    run` runs the pipeline in it. Workers keep what they cached (models keyed by path); a pool that broke
    (a worker killed) is replaced by the next stage; the pools are shut down when the block ends.

    `prewarm` > 1: start that pool's workers now and have each import `modules` (Prefect's task engine is
    always among them), so the first stage's shards start on warm workers while the command is still
    starting the Prefect server and creating the flow runs (issue 14: from `pretrain run` to the first shard
    task). Workers inherit the environment at their start: set PREFECT_API_URL before entering."""
    _Shared.enabled = True
    try:
        if prewarm > 1:
            _prewarm(prewarm, ["prefect.task_engine", *modules])
        yield
    finally:
        _Shared.enabled = False
        discard_shared_pools()


def discard_shared_pools() -> None:
    """Shut down the shared pools now (their workers were started with an environment that is no longer right,
    e.g. the Prefect API URL); the next stage starts a new pool."""
    pools = list(_Shared.pools.values())
    _Shared.pools.clear()
    for executor, queue, thread in pools:
        executor.shutdown(wait=True, cancel_futures=True)
        _stop_forwarding(queue, thread)


def _import_modules(modules: Sequence[str]) -> int:
    """Pool warm-up job: import `modules` in a worker, and the installed Prefect collections (the first task
    run's context loads them to look up its result store's block type: prefect-dask imports distributed,
    ~0.5 s on the first shard's path otherwise), with the cyclic GC off; what was imported is then frozen
    (never scanned again in this worker's life). Returns the worker's pid."""
    import gc
    import importlib
    import os

    from prefect.plugins import load_prefect_collections

    gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
        load_prefect_collections()
        gc.freeze()
    finally:
        gc.enable()
    return os.getpid()


def _prewarm(workers: int, modules: Sequence[str]) -> None:
    """Create the shared pool of `workers` and start every worker on an import job (not awaited)."""
    pool = InterruptiblePool(max_workers=workers)
    pool.__enter__()  # registers the pool in _Shared.pools; the first stage borrows it
    executor = _Shared.pools[workers][0]
    pool.__exit__(None, None, None)  # gives it back to _Shared (kept: a borrowed pool is not shut down)

    def submit() -> None:
        block_sigint()  # the workers start from this thread: with SIGINT blocked (flows/interrupt.py)
        for _ in range(workers):
            executor.submit(_import_modules, list(modules))

    starter = threading.Thread(target=submit, name="pool-prewarm", daemon=True)
    starter.start()
    starter.join()


def _stop_forwarding(queue: Any, thread: Any) -> None:
    from prefect.task_runners import _PROCESS_POOL_MESSAGE_QUEUE_SHUTDOWN

    with contextlib.suppress(ValueError, OSError):
        queue.put_nowait(_PROCESS_POOL_MESSAGE_QUEUE_SHUTDOWN)
    thread.join(timeout=5)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        queue.close()
        queue.join_thread()


class InterruptiblePool(ProcessPoolTaskRunner):
    """Prefect's process pool whose workers ignore Ctrl-C and are killed, not awaited, on an interrupt, and
    which inside `shared_process_pools()` is kept for the next stage instead of being shut down.

    The stock runner's exit waits for every running shard (`shutdown(wait=True)`), so a Ctrl-C or SIGTERM
    sat there until the shards finished, or forever when a worker was blocked (flows/interrupt.py).
    """

    def __init__(self, max_workers: int | None = None, **kw: Any) -> None:
        super().__init__(max_workers=max_workers, **kw)
        self._initializer = _init_pool_worker  # set after construction: duplicate() copies it this way too
        self._borrowed = False
        self._deferred = False

    def __enter__(self) -> InterruptiblePool:
        if _Shared.in_worker:  # a task run's context in one of our workers: a pool only if a task submits
            TaskRunner.__enter__(self)
            self._deferred = True
            return self
        return self._start()

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self._deferred:
            self._deferred, self._started = False, False  # TaskRunner.__enter__ sets it again
            self._start()
        return super().submit(*args, **kwargs)

    def _start(self) -> InterruptiblePool:
        shared = _Shared.pools.get(self._max_workers) if _Shared.enabled else None
        if shared is not None and getattr(shared[0], "_broken", False):  # a worker died: start a new pool
            _Shared.pools.pop(self._max_workers)
            shared[0].shutdown(wait=False, cancel_futures=True)
            _stop_forwarding(shared[1], shared[2])
            shared = None
        if shared is not None:
            TaskRunner.__enter__(self)
            self._executor, self._subprocess_message_queue, self._message_forwarding_thread = shared
            self._borrowed = True
        else:
            super().__enter__()
            if self._resolver_executor is not None:
                self._resolver_executor.shutdown(wait=False)
            if _Shared.enabled:
                _Shared.pools[self._max_workers] = (
                    self._executor,
                    self._subprocess_message_queue,
                    self._message_forwarding_thread,
                )
                self._borrowed = True
        # workers are spawned by submit() on these resolver threads: start them with SIGINT blocked
        self._resolver_executor = ThreadPoolExecutor(max_workers=self._max_workers, initializer=block_sigint)
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        if interrupted:
            kill_workers()
            _Shared.pools.pop(self._max_workers, None)
        if self._borrowed and not interrupted:  # leave the pool to the next stage (shared_process_pools)
            if self._resolver_executor is not None:
                self._resolver_executor.shutdown(cancel_futures=True, wait=True)
                self._resolver_executor = None
            self._executor = self._subprocess_message_queue = self._message_forwarding_thread = None
            self._borrowed = False
            TaskRunner.__exit__(self, exc_type, exc_value, traceback)
            return
        self._borrowed = False
        super().__exit__(exc_type, exc_value, traceback)


DASK_EXTRA = 'pip install -e ".[dask]"'


def task_runner(workers: int, runner: RunnerConfig | None = None) -> Any:
    """The task runner of a stage's shard tasks for the config's `runner` section (flows/config.py).

    kind process (the default): a process pool of `workers` for CPU-bound shards (STYLE 9), a single thread
    when workers == 1 (tests, debugging). kind dask: prefect-dask's `DaskTaskRunner` on the scheduler at
    `runner.address`, or on a temporary `distributed.LocalCluster` of `workers` one-thread processes (one per
    stage flow: a few seconds to start). Shard tasks then run in the Dask workers' processes (any machine):
    they get everything as arguments (paths under the data root, params) and return picklable pydantic
    results. A worker lost mid-shard is handled by Dask: the scheduler runs the shard again on another worker
    (up to `distributed.scheduler.allowed-failures` times) and Prefect re-runs the task under the same task
    run id; no Prefect task retries are needed for it (tests/flows/test_dask.py)."""
    if runner is None or runner.kind == "process":
        return InterruptiblePool(max_workers=workers) if workers > 1 else ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as err:
        raise ImportError(
            f"runner kind 'dask' needs prefect-dask and distributed, the `dask` extra: {DASK_EXTRA} ({err})"
        ) from err
    if runner.address:
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True},
    )


def _progress_artifact(run: StageRun) -> Any:
    if FlowRunContext.get() is None:
        return None
    return create_progress_artifact(
        progress=0.0, key=f"{run.stage}-progress", description=f"{run.stage}@{run.version}: shards done"
    )


def publish(
    manifest: Manifest, root: str, report: ReportFn | None = None, reused: bool = False, more: PublishFn | None = None
) -> None:
    """Publish `<kind>-stats` and `<kind>-summary` artifacts, then the stage's own (no-op outside a flow run).
    Artifact keys allow no underscore: `quality_classifier` publishes as `quality-classifier-*`."""
    if FlowRunContext.get() is None:
        return
    key = str(manifest.stage).replace("_", "-")
    table = manifest.stats.table() + [
        {"metric": "version", "value": manifest.version},
        {"metric": "reused", "value": reused},
    ]
    create_table_artifact(
        key=f"{key}-stats", table=table, description=f"{manifest.stage}@{manifest.version}: in/out, drops by reason"
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=version_summary(manifest, root, report, reused),
        description=f"{manifest.stage}@{manifest.version}: where it is, what it kept",
    )
    if more is not None:
        more(manifest, root)
