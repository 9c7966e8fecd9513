"""A Ctrl-C that reaches a pool worker while it starts is ignored, not a traceback and a broken pool.

Found by CI (2026-12-05): `pretrain run` interrupted one second into dedup printed `Traceback` under
`dedup shards: 0%`: a spawned worker got the terminal's SIGINT during interpreter start-up, before its
initializer (`ignore_sigint`) ran. Workers now start with SIGINT blocked (`block_sigint` on the threads
that spawn them) and unblock it only after ignoring it. Here every starting worker is sent SIGINT every
millisecond from the moment it exists; the shards must still complete.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from prefect import flow, task

from flows.stage import InterruptiblePool


@task
def _square(x: int) -> int:
    return x * x


def _spawned_children() -> list[int]:
    me, found = str(os.getpid()), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == me and b"spawn_main" in cmd:
            found.append(int(d.name))
    return found


def test_workers_ignore_a_sigint_that_arrives_while_they_start(prefect_backend):
    stop = threading.Event()
    sent = []

    def spam() -> None:
        while not stop.is_set():
            for pid in _spawned_children():
                try:
                    os.kill(pid, signal.SIGINT)
                    sent.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)

    @flow(task_runner=InterruptiblePool(max_workers=2))
    def squares() -> list[int]:
        return [f.result() for f in _square.map(list(range(4)))]

    spammer = threading.Thread(target=spam, daemon=True)
    spammer.start()
    try:
        assert squares() == [0, 1, 4, 9]
    finally:
        stop.set()
        spammer.join()
    assert len(set(sent)) >= 1 and len(sent) > 10, "no worker was signalled; the test did not test anything"


@task
def _pid(x: int) -> int:
    return os.getpid()


@task
def _die(x: int) -> int:
    os._exit(3)


def _pids_of_a_stage() -> set[int]:
    @flow(task_runner=InterruptiblePool(max_workers=2))
    def stage() -> set[int]:
        return {f.result() for f in _pid.map(list(range(6)))}

    return stage()


def test_stages_share_one_pool_inside_shared_process_pools(prefect_backend):
    """`pretrain run` keeps one process pool for all stages (workers spawned and modules imported once); a pool a
    killed worker broke is replaced by the next stage; outside the block every stage has its own pool."""
    from prefect.exceptions import PrefectException

    from flows.stage import shared_process_pools

    with shared_process_pools():
        first, second = _pids_of_a_stage(), _pids_of_a_stage()
        assert first == second and len(first) >= 1

        @flow(task_runner=InterruptiblePool(max_workers=2))
        def broken() -> None:
            _die.submit(0).result()

        with pytest.raises((PrefectException, Exception)):
            broken()
        third = _pids_of_a_stage()
        assert not third & first, "a broken pool was used again"
    alive = [p for p in first | third if Path(f"/proc/{p}").exists()]
    assert alive == [], "the shared pools outlived their block"
    assert not _pids_of_a_stage() & _pids_of_a_stage()


def test_prewarmed_pool_is_the_one_the_first_stage_uses(prefect_backend):
    """`shared_process_pools(prewarm=2, modules)` starts the workers at once, each importing the modules, and the
    first stage's shards run on those very workers (issue 14: the first shard starts on a warm worker)."""
    import multiprocessing

    from flows.stage import shared_process_pools

    with shared_process_pools(prewarm=2, modules=["tasks.langid"]):
        started = {p.pid for p in multiprocessing.active_children()}
        assert len(started) >= 2, "prewarm did not start the workers"
        assert _pids_of_a_stage() <= started
