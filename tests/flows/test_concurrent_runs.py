"""Concurrent runs of one stage version: the second waits for the first and reuses it (issue 11, defect 6).

Every run writes its version in place, `<root>/<stage>/<version>/`, with `_writing.json` until its manifest
is written (storage.artifacts); two identical runs would write into the same directory, so on a local data
root the second waits on the version lock (`<stage>/.lock-<version>`) and then reuses the first one's
result. Runs here are real Prefect flows in two threads (flock locks conflict between open files of one
process too), synchronised by events so that the first is provably still running when the second starts.
The train case is in tests/flows/test_train_flow.py.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from prefect import flow, task

from flows.stage import StageOutput, run_stage, sharded, task_runner
from storage.artifacts import WRITING, ArtifactWriter
from storage.documents import Document, DocumentWriter, run_document_shard
from storage.locks import LOCK_PREFIX, VersionLock, lock_is_held
from storage.manifest import ShardInfo, list_versions, load_manifest, new_manifest
from storage.params import StageParams
from storage.stats import StageStats
from tests.threads import Run

WAIT_S = 60.0
INGEST, LANGID = "ingest", "langid"  # plain kinds: the gated flow names its upstream (no pipeline table needed)
GATED_MIN_LEN = 3  # runs with this param block in their shard until the test releases them


class GateParams(StageParams):
    min_len: int = 3


class Gate:
    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[int] = []


GATE = Gate()


@task
def gated_shard(src: str, out_dir: str, index: int, params: GateParams):
    GATE.calls.append(params.min_len)
    if params.min_len == GATED_MIN_LEN:
        GATE.entered.set()
        assert GATE.release.wait(WAIT_S), "the test never released the gate"

    def process(docs, stats, rejects):
        for d in docs:
            if len(d.text) < params.min_len:
                rejects.add(d, "too_short", {})
            else:
                yield d

    return run_document_shard(src, out_dir, index, process)


@flow(task_runner=task_runner(1))
def gated_flow(params: GateParams, data_root: str) -> str:
    return run_stage(LANGID, 1, params, sharded(gated_shard), data_root, upstream=INGEST)


@pytest.fixture
def gate():
    global GATE
    GATE = Gate()
    yield GATE
    GATE.release.set()


class Lines(logging.Handler):
    """Collects the messages of the Prefect run loggers (where the stage frame logs)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def wait_for(self, text: str, timeout: float = WAIT_S) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in m for m in self.messages):
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def run_lines():
    handler = Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def fake_ingest(root: str) -> None:
    w = ArtifactWriter(root, INGEST, "ing1")
    with DocumentWriter(f"{w.path}/part-00000.parquet") as dw:
        for i in range(6):
            dw.write(Document(id=str(i), text="x" * i, url=f"http://e/{i}"))
    w.commit(
        new_manifest(
            INGEST,
            1,
            "ing1",
            {},
            {},
            [ShardInfo(name="part-00000.parquet", rows=6, bytes=1)],
            [],
            StageStats(docs_in=6, docs_out=6),
        )
    )


def test_identical_run_waits_for_the_first_and_reuses_it(prefect_backend, tmp_path, gate, run_lines):
    root = str(tmp_path)
    fake_ingest(root)
    first = Run(lambda: gated_flow(GateParams(), root))
    first.start()
    assert gate.entered.wait(WAIT_S)
    second = Run(lambda: gated_flow(GateParams(), root))
    second.start()
    waited = run_lines.wait_for("waiting for another run of langid@")
    gate.release.set()
    v1, v2 = first.value(), second.value()
    assert waited, f"the second run did not log that it waits: {run_lines.messages}"
    msg = next(m for m in run_lines.messages if "waiting for another run" in m)
    assert f"pid {os.getpid()}" in msg and f"{root}/langid/{LOCK_PREFIX}{v1}" in msg
    assert v1 == v2 and gate.calls == [GATED_MIN_LEN]  # computed once
    assert any(m.startswith(f"reused langid@{v1}") for m in run_lines.messages)
    (m,) = list_versions(root, LANGID)
    assert m.created_at == load_manifest(root, LANGID, v2).created_at
    assert not any("committed by another run" in x for x in run_lines.messages)
    assert sorted(p.name for p in (tmp_path / "langid").iterdir()) == sorted([v1, "latest"])  # no lock left
    assert not (tmp_path / "langid" / v1 / WRITING).exists()


def test_different_versions_run_in_parallel(prefect_backend, tmp_path, gate):
    root = str(tmp_path)
    fake_ingest(root)
    blocked = Run(lambda: gated_flow(GateParams(min_len=GATED_MIN_LEN), root))
    blocked.start()
    assert gate.entered.wait(WAIT_S)
    other = Run(lambda: gated_flow(GateParams(min_len=4), root))
    other.start()
    v_other = other.value()  # finishes while the first version is still running
    assert blocked.is_alive() and [m.version for m in list_versions(root, LANGID)] == [v_other]
    # the blocked run's version is written in place: its directory is there, incomplete, invisible to readers
    (writing,) = [p for p in (tmp_path / "langid").iterdir() if (p / WRITING).exists()]
    assert json.loads((writing / WRITING).read_text())["inputs"] == {INGEST: "ing1"}
    assert not (writing / "manifest.json").exists()
    gate.release.set()
    assert blocked.value() == writing.name != v_other and len(list_versions(root, LANGID)) == 2
    assert not (writing / WRITING).exists()


def test_lock_wait_is_bounded_and_names_the_holder(tmp_path):
    holder = VersionLock(str(tmp_path), LANGID, "v1")
    holder.acquire()
    messages: list[str] = []
    with pytest.raises(
        TimeoutError,
        match=rf"langid@v1: another run \(pid {os.getpid()} on .*\) still holds "
        rf"{tmp_path}/langid/.lock-v1",
    ):
        VersionLock(str(tmp_path), LANGID, "v1").acquire(timeout_s=0.3, on_wait=messages.append)
    assert len(messages) == 1 and "waiting for another run of langid@v1" in messages[0]
    assert VersionLock(str(tmp_path), LANGID, "v2").try_acquire()  # other versions do not contend
    holder.release()
    assert not (tmp_path / "langid" / ".lock-v1").exists()
    assert VersionLock(str(tmp_path), LANGID, "v1").try_acquire()
    store = VersionLock("memory://bucket", LANGID, "v1")  # object stores: no lock, never waits
    assert store.path is None and store.try_acquire()


def test_lock_is_released_when_its_process_dies(tmp_path):
    code = (
        "import time; from storage.locks import VersionLock; "
        f"lock = VersionLock({str(tmp_path)!r}, 'train', 'v1'); lock.acquire(); print('locked', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        path = str(tmp_path / "train" / ".lock-v1")
        assert lock_is_held(path) and not VersionLock(str(tmp_path), "train", "v1").try_acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not lock_is_held(path)  # the file is left, the lock is gone (gc removes the file)
        assert VersionLock(str(tmp_path), "train", "v1").try_acquire()
    finally:
        proc.kill()
        proc.wait()


def _phases(check):
    def phases(run):
        check(run)
        return StageOutput([], StageStats())

    return phases


def test_abort_releases_the_lock_on_interrupt(tmp_path):
    root = str(tmp_path)
    fake_ingest(root)
    seen = {}

    def interrupted(run):
        seen["lock"], seen["dir"] = str(tmp_path / "langid" / f".lock-{run.version}"), run.out_dir
        assert lock_is_held(seen["lock"]) and os.path.exists(os.path.join(run.out_dir, WRITING))  # in place
        raise KeyboardInterrupt  # what the frame's abort sees on Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        run_stage(LANGID, 1, GateParams(), _phases(interrupted), root, upstream=INGEST)
    assert not lock_is_held(seen["lock"]) and not os.path.exists(seen["lock"])
    assert not os.path.exists(seen["dir"])  # the incomplete version dir is gone too
    v = run_stage(LANGID, 1, GateParams(), _phases(lambda run: None), root, upstream=INGEST)  # not blocked
    assert load_manifest(root, LANGID, v).version == v


def test_a_read_only_data_root_is_still_reused(tmp_path, monkeypatch):
    """Reusing complete versions writes nothing (set_latest), so a read-only data root must keep working."""
    import errno

    import storage.locks as locks_module

    root = str(tmp_path)
    fake_ingest(root)
    v = run_stage(LANGID, 1, GateParams(), _phases(lambda run: None), root, upstream=INGEST)

    def read_only(*args, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(locks_module.os, "makedirs", read_only)

    def never(run):
        raise AssertionError("a complete version must be reused, not run")

    # reused without any lock (creating one would fail here) and without running the phases
    assert run_stage(LANGID, 1, GateParams(), _phases(never), root, upstream=INGEST) == v
