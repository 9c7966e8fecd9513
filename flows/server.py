"""The temporary Prefect server of `pretrain run`, started before the run's imports so that it is not on the
critical path.

Without `PREFECT_API_URL` Prefect starts an ephemeral API server when a flow first runs (SubprocessASGIServer:
importing `prefect.server.api.server` alone takes ~3.5 s here, then ~4 s for uvicorn to answer), and only then
does the first task run. `TemporaryServer.start()` launches the same app (Prefect's `create_app` under uvicorn,
as Prefect 3.9's ephemeral server does) without importing the server package, at the top of `pretrain run`;
the command imports the pipeline and lists its inputs while the server starts on the other core, and
`wait_ready()` is called just before the pipeline flow. The process runs in its own session (the terminal's
Ctrl-C must not kill it before the interrupted run is reported) and dies with this process
(`PR_SET_PDEATHSIG`, flows/interrupt.py).

The server is the longest part of the start-up (issue 14: from `pretrain run` to the first shard task), so
its process (`python -m flows.server PORT`, `serve()`) imports and builds the app with the cyclic garbage
collector off (the import makes millions of objects and nothing to collect: ~0.6 s less on 2 cores), then
freezes what it made and turns the collector back on once the app has started. It skips the block-type
registration at start (it imports every installed Prefect collection, prefect-dask and distributed among
them, ~0.5 s, to register block types that a pipeline run never saves) and its telemetry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

PORT_IN_USE = 3  # uvicorn's exit code when the port is taken (Prefect retries on another port too)
IDLE_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "TRIGGERS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryServer:
    """A Prefect API server on 127.0.0.1 in a subprocess: `start()` returns at once, `wait_ready()` blocks."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[Any] | None = None
        self.started_at = 0.0
        self.ready = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.address}/api"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "flows.server", str(self.port)]

    def start(self) -> TemporaryServer:
        from flows.interrupt import die_with_parent

        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            # a server that lives for one run needs no deployment scheduling, late-run or worker-heartbeat
            # sweeps, pause expirations, automations or database vacuuming (it shares PREFECT_HOME's database:
            # the scheduler would even start other deployments' runs); ~0.4 s less start-up on 2 cores.
            # Task run recording, the event persister, cancellation cleanup and the repossessor (expired
            # concurrency leases of a killed run, e.g. the gpu limit) stay on.
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in IDLE_SERVICES},
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "[]",
            # no block-type registration at start (its memo check alone imports every Prefect collection) and
            # no telemetry: a run saves no block, and the server lives for one run
            "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
            "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self._command(), env=env, preexec_fn=die_with_parent)
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until `/health` answers 200 (a taken port: restart on another one)."""
        assert self.process is not None, "start() first"
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            code = self.process.poll()
            if code == PORT_IN_USE:
                self.port = _free_port()
                self.start()
                continue
            if code is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {code} before it answered")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as r:
                    if r.status == 200:
                        self.ready = True
                        took = time.monotonic() - self.started_at
                        print(f"temporary Prefect server on {self.address} (up in {took:.1f} s)", file=sys.stderr)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer on {self.api_url} within {timeout_s:g} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.ready:
            print(f"stopping the temporary Prefect server on {self.address}", file=sys.stderr, flush=True)
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


_early: TemporaryServer | None = None  # started by start_early(), taken over by `pretrain run`


def start_early(argv: list[str]) -> None:
    """Start the temporary server now when `argv` is a `run` command that will need one (no PREFECT_API_URL in
    the environment; an API URL in a Prefect profile is only known after importing Prefect: `run` then stops
    it unused). Called first thing by `pretrain` (flows/__main__.py)."""
    global _early
    if _early is None and argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):
        if not os.environ.get("PREFECT_API_URL"):
            _early = TemporaryServer().start()


def take_early() -> TemporaryServer | None:
    """The server start_early() started, now owned by the caller (None when there is none)."""
    global _early
    server, _early = _early, None
    return server


def stop_early() -> None:
    """Stop a server that start_early() started and no command took over."""
    server = take_early()
    if server is not None:
        server.stop()


def serve(port: int) -> None:
    """The server process: Prefect's API app (`create_app`, the UI off) under uvicorn on 127.0.0.1:`port`,
    imported and built with the cyclic GC off; once the app's start-up (migrations, services) is done, what
    was made is frozen (`gc.freeze`: never scanned again) and the collector turned back on. A taken port
    exits with uvicorn's code 3 (PORT_IN_USE)."""
    import gc
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    gc.disable()
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app()
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with started(app) as state:
            gc.freeze()
            gc.enable()
            yield state

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
