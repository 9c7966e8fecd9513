"""Ctrl-C and SIGTERM for `pretrain run`: stop within seconds, leave no process behind, say how to resume.

Without care, an interrupted run hangs: the terminal's SIGINT reaches every process of the group, so
the temporary Prefect server dies first (the engine then retries its API calls for minutes), and the
stage's process pool waits in `shutdown(wait=True)` for shards that never finish. Here:

- the temporary server runs in its own session (the terminal's Ctrl-C does not reach it; it is
  stopped by us, after the interrupted run has been marked Crashed) and dies with its parent
  (`PR_SET_PDEATHSIG`), so even a `kill -9` of the CLI leaves no server behind;
- pool workers ignore SIGINT (`ignore_sigint`, their initializer): the parent decides, and on any
  interrupt `kill_workers` ends them at once, so the pool does not wait for running shards (their
  output lives in the version's temp dir, which the aborting stage removes);
- `guard_run` installs SIGINT/SIGTERM handlers for the CLI: the first signal raises
  KeyboardInterrupt in the main thread (Prefect reports the flow runs Crashed on the way out) and
  arms a watchdog that force-exits after `GRACE_S` should anything still block; a second signal
  exits at once. `Interrupted.message()` is the one line the CLI prints last.
The stage being run is recorded by the stage frame (`note_stage`), so the message names it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

GRACE_S = 8.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_PR_SET_PDEATHSIG = 1


@dataclass
class RunMarker:
    """What the current process is doing, for the interruption message."""

    stage: str | None = None
    signum: int | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    flow_runs: list[str] = field(default_factory=list)

    def message(self) -> str:
        name = signal.Signals(self.signum).name if self.signum else "interrupt"
        where = f"stage '{self.stage}'" if self.stage else "start-up (no stage had started)"
        return (
            f"interrupted by {name} during {where}: stopped, its partial output discarded; run the same "
            f"command again to resume from {self.stage or 'the start'} (completed stages are reused)"
        )


MARKER = RunMarker()


def note_stage(stage: str | None) -> None:
    """Record the stage now running and the Prefect flow run it runs in (called by the stage frame and the
    pipeline flow)."""
    from prefect.context import FlowRunContext

    if stage is not None:
        MARKER.stage = stage
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None and str(ctx.flow_run.id) not in MARKER.flow_runs:
        MARKER.flow_runs.append(str(ctx.flow_run.id))


def cancel_flow_runs() -> list[str]:
    """After an interrupt: every recorded flow run that is not yet Crashed or Cancelled is set Cancelled.

    The engine reports an interrupt as Crashed when the KeyboardInterrupt reaches it as such; raised
    inside a library call (pydantic serialisation, say) it arrives wrapped and the run would read
    Failed. Returns the ids it changed; best effort (the API may be gone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    changed = []
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        for run_id in MARKER.flow_runs:
            state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
            if state is None or state.type not in (StateType.CRASHED, StateType.CANCELLED):
                client.set_flow_run_state(run_id, Cancelled(message=MARKER.message()), force=True)
                changed.append(run_id)
    return changed


def block_sigint() -> None:
    """Thread initializer for the threads that start pool workers (`InterruptiblePool`): SIGINT blocked.

    A spawned worker inherits its starting thread's signal mask, so a Ctrl-C in the second or so between
    its start and `ignore_sigint` (interpreter start-up, imports) stays pending instead of raising
    KeyboardInterrupt there, which printed a traceback and broke the pool (the CI failure of 2026-12-05:
    `Traceback` under `dedup shards: 0%`). The main thread keeps SIGINT unblocked, so the CLI's handler
    still runs at once."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def ignore_sigint() -> None:
    """Process-pool initializer: workers leave Ctrl-C to the parent, which ends them; their console shows
    no tracebacks unless --debug (flows/console.py). Ignoring first and unblocking second discards a
    Ctrl-C that arrived while the worker started (`block_sigint`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from flows.console import quiet_console_tracebacks

    quiet_console_tracebacks()


def die_with_parent() -> None:
    """`preexec_fn` for helper processes: own session (no terminal Ctrl-C), SIGTERM when the parent dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_workers() -> int:
    """SIGKILL every multiprocessing child of this process (pool workers); returns how many."""
    children = multiprocessing.active_children()
    for p in children:
        with contextlib.suppress(ProcessLookupError, OSError, TypeError):  # pid None: not started
            os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    for p in children:
        p.join(timeout=2)
    return len(children)


def _watchdog(signum: int) -> None:
    """Runs GRACE_S after the first signal: if the process is still here, end it regardless."""
    kill_workers()
    for cleanup in reversed(MARKER.cleanups):
        with contextlib.suppress(Exception):
            cleanup()
    print(f"error: {MARKER.message()} (forced exit after {GRACE_S:g} s)", file=sys.stderr, flush=True)
    os._exit(EXIT_CODES.get(signal.Signals(signum), 1))


def _handler(signum: int, frame: FrameType | None) -> None:
    if MARKER.signum is not None:  # second signal: the user insists
        kill_workers()
        os._exit(EXIT_CODES.get(signal.Signals(signum), 1))
    MARKER.signum = signum
    kill_workers()
    timer = threading.Timer(GRACE_S, _watchdog, args=(signum,))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def guard_run() -> Iterator[RunMarker]:
    """SIGINT/SIGTERM handlers for the duration of a CLI run (main thread only)."""
    MARKER.stage, MARKER.signum = None, None
    MARKER.flow_runs.clear()
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield MARKER
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        MARKER.cleanups.clear()


def exit_code() -> int:
    return EXIT_CODES.get(signal.Signals(MARKER.signum), 1) if MARKER.signum else 130
