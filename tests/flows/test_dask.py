"""Shard tasks on a Dask cluster through prefect-dask (issue 13, item 1): `runner: {kind: dask, address: ...}`.

A real `dask scheduler` and two `dask worker` processes (one thread each, each in its own working directory,
the repository on their PYTHONPATH as the installed package would be) on 127.0.0.1; the flow process talks
to them through prefect-dask's DaskTaskRunner, and the workers report their task runs to the test's Prefect
server (its URL travels in the serialized Prefect context of every task).

- the pipeline `--to langid` on a 4-file demo crawl gives the same versions and the same documents in and out
  as the default process runner, and both workers ran shard tasks (the scheduler's task stream names them);
- a worker SIGKILLed while it runs a shard: the scheduler runs the lost shard again on the other worker
  (Prefect re-runs it under the same task run id), and the stage commits a complete version;
- `pretrain run --dask ADDRESS` reaches the config's runner section.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow, task

from flows.config import RunnerConfig
from flows.stage import run_stage, sharded, task_runner
from storage.artifacts import ArtifactWriter
from storage.documents import Document, DocumentWriter, run_document_shard
from storage.manifest import ShardInfo, load_manifest, new_manifest
from storage.params import StageParams
from storage.stats import StageStats
from tests.threads import Run

pytest.importorskip("prefect_dask")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
INGEST, SLOW = "ingest", "langid"  # plain kinds: the slow flow names its upstream


class Cluster:
    """A scheduler and its workers, real processes on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.scheduler_file = tmp / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, args: list[str], cwd: Path, log: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env.pop("PRETRAIN_DATA_ROOT", None)  # the workers know the data root only from the task arguments
        out = open(self.tmp / log, "wb")
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def start(self, workers: int = 2) -> "Cluster":
        self._spawn(
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--no-show",
                "--scheduler-file",
                str(self.scheduler_file),
            ],
            self.tmp,
            "scheduler.log",
        )
        end = time.monotonic() + WAIT_S
        while not self.scheduler_file.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert self.scheduler_file.exists(), (self.tmp / "scheduler.log").read_text()
        for i in range(workers):
            cwd = self.tmp / f"worker-{i}"
            cwd.mkdir()
            self.workers.append(
                self._spawn(
                    [
                        "distributed.cli.dask_worker",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                        "--local-directory",
                        str(cwd),
                        "--scheduler-file",
                        str(self.scheduler_file),
                    ],
                    cwd,
                    f"worker-{i}.log",
                )
            )
        with self.client() as client:
            client.wait_for_workers(workers, timeout=WAIT_S)
            self.address = client.scheduler.address
        return self

    def client(self):
        return distributed.Client(scheduler_file=str(self.scheduler_file), timeout=WAIT_S, set_as_default=False)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log"))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "dask")
    c.tmp.mkdir()
    try:
        yield c.start()
    finally:
        c.stop()


def test_cli_dask_flag_reaches_the_config(cli_run_config):
    from flows import cli

    seen = cli_run_config
    assert cli.main(["run", "--dask", "tcp://10.0.0.5:8786", "--to", "langid"]) == 0
    assert seen["config"].runner == RunnerConfig(kind="dask", address="tcp://10.0.0.5:8786")
    assert seen["config"].workers == 2  # the rest of the config is the default
    assert cli.main(["run", "--to", "langid"]) == 0
    assert seen["config"].runner == RunnerConfig()  # without the flag: the config's runner (process)


def test_task_runner_for_the_runner_config():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.stage import InterruptiblePool

    assert isinstance(task_runner(2), InterruptiblePool)
    assert isinstance(task_runner(2, RunnerConfig()), InterruptiblePool)
    assert isinstance(task_runner(1, RunnerConfig()), ThreadPoolTaskRunner)
    remote = task_runner(2, RunnerConfig(kind="dask", address="tcp://127.0.0.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"
    local = task_runner(3, RunnerConfig(kind="dask"))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}


def test_missing_dask_extra_names_the_extra(monkeypatch):
    for name in ("prefect_dask", "prefect_dask.task_runners"):
        monkeypatch.setitem(sys.modules, name, None)  # import prefect_dask -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[dask\]"'):
        task_runner(2, RunnerConfig(kind="dask"))


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """Four small demo crawls (different seeds): four ingest shards, so both workers get some."""
    from demo.crawl import generate_demo_crawl

    base = tmp_path_factory.mktemp("crawls")
    return [str(generate_demo_crawl(str(base / f"c{i}"), pages=20, seed=i).warc_path) for i in range(4)]


def _run_to_langid(root: Path, runner: dict, files: list[str]):
    from flows.pipeline import PipelineConfig, pipeline_flow

    config = PipelineConfig(workers=2, demo_pages=60, runner=runner, ingest={"inputs": files})
    versions = pipeline_flow(config=config, data_root=str(root), to_stage="langid")
    return {s: load_manifest(str(root), s, v) for s, v in versions.items()}


def test_pipeline_on_dask_equals_the_process_runner(prefect_backend, cluster, demo_files, tmp_path):
    with cluster.client() as client, distributed.get_task_stream(client=client) as stream:
        on_dask = _run_to_langid(tmp_path / "dask-root", {"kind": "dask", "address": cluster.address}, demo_files)
    local = _run_to_langid(tmp_path / "local-root", {"kind": "process"}, demo_files)
    assert list(on_dask) == ["ingest", "langid"]
    for stage, m in on_dask.items():
        ref = local[stage]
        assert m.version == ref.version, stage
        assert (m.stats.docs_in, m.stats.docs_out, dict(m.stats.dropped)) == (
            ref.stats.docs_in,
            ref.stats.docs_out,
            dict(ref.stats.dropped),
        ), stage
        assert [s.rows for s in m.shards] == [s.rows for s in ref.shards], stage
    assert on_dask["ingest"].stats.docs_out > 0 and len(on_dask["langid"].shards) == 4
    shard_tasks = [t for t in stream.data if "shard" in str(t["key"])]
    assert len(shard_tasks) == 8, [t["key"] for t in stream.data]  # 4 ingest + 4 langid shards
    workers = {t["worker"] for t in shard_tasks}
    assert len(workers) == 2, f"shards ran on {workers} only"
    # nothing landed in the workers' working directories: they write only under the data root
    assert not [p for i in range(2) for p in (cluster.tmp / f"worker-{i}").iterdir() if "dask-scratch" not in p.name]


class SlowParams(StageParams):
    sleep_s: float = 2.0
    marker_dir: str = ""


@task
def slow_shard(src: str, out_dir: str, index: int, params: SlowParams):
    """Marks `<marker_dir>/<index>-<pid>` when it starts, sleeps, then copies its shard through."""
    Path(params.marker_dir, f"{index}-{os.getpid()}").touch()
    time.sleep(params.sleep_s)
    return run_document_shard(src, out_dir, index, lambda docs, stats, rejects: docs)


@flow
def slow_flow(params: SlowParams, data_root: str) -> str:
    return run_stage(SLOW, 1, params, sharded(slow_shard), data_root, upstream=INGEST)


def fake_ingest(root: str, shards: int, docs_per_shard: int = 3) -> None:
    w = ArtifactWriter(root, INGEST, "ing1")
    infos = []
    for s in range(shards):
        name = f"part-{s:05d}.parquet"
        with DocumentWriter(f"{w.path}/{name}") as dw:
            for i in range(docs_per_shard):
                dw.write(Document(id=f"{s}-{i}", text=f"text {s} {i}", url=f"http://e/{s}/{i}"))
        infos.append(ShardInfo(name=name, rows=docs_per_shard, bytes=1))
    total = shards * docs_per_shard
    w.commit(new_manifest(INGEST, 1, "ing1", {}, {}, infos, [], StageStats(docs_in=total, docs_out=total)))


def test_killed_worker_shards_run_elsewhere_and_the_stage_commits(prefect_backend, cluster, tmp_path):
    root, markers = tmp_path / "data", tmp_path / "markers"
    markers.mkdir()
    shards = 6
    fake_ingest(str(root), shards)
    victim, survivor = cluster.workers
    runner = task_runner(2, RunnerConfig(kind="dask", address=cluster.address))
    params = SlowParams(sleep_s=1.5, marker_dir=str(markers))
    run = Run(lambda: slow_flow.with_options(task_runner=runner)(params, str(root)))
    run.start()
    end = time.monotonic() + WAIT_S
    while not any(p.name.endswith(f"-{victim.pid}") for p in markers.iterdir()) and time.monotonic() < end:
        time.sleep(0.05)
    lost = [p.name.split("-")[0] for p in markers.iterdir() if p.name.endswith(f"-{victim.pid}")]
    assert lost, f"no shard started on the victim worker\n{cluster.logs()}"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    try:
        version = run.value()
    except BaseException:
        print(cluster.logs())
        raise
    m = load_manifest(str(root), SLOW, version)
    assert [s.name for s in m.shards] == [f"data/part-{i:05d}.parquet" for i in range(shards)]
    assert m.stats.docs_in == m.stats.docs_out == shards * 3
    ran: dict[str, set[int]] = {}
    for p in markers.iterdir():
        index, pid = p.name.split("-")
        ran.setdefault(index, set()).add(int(pid))
    assert sorted(ran, key=int) == [str(i) for i in range(shards)]
    for index in lost:  # the lost shard ran again, on the survivor
        assert ran[index] == {victim.pid, survivor.pid}, ran
    assert survivor.poll() is None


def test_every_shard_task_takes_and_returns_picklable_models():
    """Dask ships a shard task's arguments to a worker and its result back, pickled: every shard task of the
    pipeline takes a pydantic job and returns a pydantic result (no process-local object crosses), and the
    task itself pickles (its function by value; what it calls, by reference: the worker needs the package)."""
    import inspect
    import pickle
    import typing

    import cloudpickle
    from prefect import Task
    from pydantic import BaseModel

    import tasks.decontaminate
    import tasks.dedup
    import tasks.ingest
    import tasks.langid
    import tasks.mix
    import tasks.quality
    import tasks.tokenization
    from storage.documents import ShardResult
    from tasks.lazy_task import LazyTask

    modules = [tasks.ingest, tasks.langid, tasks.quality, tasks.dedup, tasks.decontaminate, tasks.mix]
    modules.append(tasks.tokenization)
    # the stage packages declare tasks with tasks.lazy_task.task: the Prefect Task is built on first use
    found = [obj.task for m in modules for obj in vars(m).values() if isinstance(obj, LazyTask)]
    assert all(isinstance(t, Task) for t in found)
    shard_tasks = [t for t in found if t.fn.__name__.endswith("_shard")]
    assert len(shard_tasks) >= 10, [t.name for t in shard_tasks]
    for t in shard_tasks:
        hints = typing.get_type_hints(t.fn)
        params = list(inspect.signature(t.fn).parameters)
        assert params[:3] == ["src", "out_dir", "index"], t.name
        for name in (params[3], "return"):
            assert isinstance(hints[name], type) and issubclass(hints[name], BaseModel), (t.name, name, hints[name])
        assert cloudpickle.loads(cloudpickle.dumps(t)).fn.__qualname__ == t.fn.__qualname__, t.name
    result = ShardResult(
        index=3,
        stats=StageStats(docs_in=5, docs_out=4, dropped={"too_short": 1}),
        shard=ShardInfo(name="part-00003.parquet", rows=4, bytes=10),
        rejected=ShardInfo(name="rejected/part-00003.parquet", rows=1, bytes=5),
    )
    assert pickle.loads(cloudpickle.dumps(result)) == result


def test_pipeline_to_tokenize_on_dask_with_an_s3_root(prefect_backend, s3_server, cluster, demo_files, tmp_path):
    """Issue 13's end-to-end check: a scheduler, two workers in their own directories and an S3 server on
    loopback; `--to tokenize` on an `s3://` root gives every stage the counts of a local process-pool run,
    and both workers ran shard tasks. (Workers got the AWS settings from the environment they started in.)"""
    import uuid

    import fsspec

    from flows.pipeline import STAGE_ORDER, PipelineConfig, pipeline_flow

    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    small = {"workers": 2, "ingest": {"inputs": demo_files}, "tokenize": {"vocab_size": 600, "seq_len": 64}}

    def run(root: str, runner: dict) -> dict:
        versions = pipeline_flow(config=PipelineConfig(**small, runner=runner), data_root=root, to_stage="tokenize")
        return {s: load_manifest(root, s, v) for s, v in versions.items()}

    with cluster.client() as client, distributed.get_task_stream(client=client) as stream:
        on_s3 = run(f"s3://{bucket}/root", {"kind": "dask", "address": cluster.address})
    local = run(str(tmp_path / "local-root"), {"kind": "process"})
    assert list(on_s3) == STAGE_ORDER[: STAGE_ORDER.index("tokenize") + 1]
    for stage, m in on_s3.items():
        ref = local[stage]
        assert (m.stats.docs_in, m.stats.docs_out, dict(m.stats.dropped)) == (
            ref.stats.docs_in,
            ref.stats.docs_out,
            dict(ref.stats.dropped),
        ), stage
    workers = {t["worker"] for t in stream.data if "shard" in str(t["key"])}
    assert len(workers) == 2, f"shard tasks ran on {workers} only\n{cluster.logs()}"
