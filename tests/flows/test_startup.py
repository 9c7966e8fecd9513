"""Start-up of `pretrain run` (issue 14: from the command to the first shard task): the temporary server is
started before the CLI is imported, processes import with a lazy garbage collector and then work with the
normal one, and a run on its own temporary server skips what only a lasting server needs."""

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows import startup

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PRETRAIN_DATA_ROOT=str(tmp_path / "data"))
    return env


# records what was imported when the server started and whether it was stopped, then runs `pretrain ARGS`
ENTRY = textwrap.dedent(
    """
    import sys
    import flows.server as s
    start, stop = s.TemporaryServer.start, s.TemporaryServer.stop
    def recorded_start(self):
        print("server started; cli imported:", "flows.cli" in sys.modules, "click imported:", "click" in sys.modules)
        return start(self)
    def recorded_stop(self):
        if self.process is not None:
            print("server stopped")
        return stop(self)
    s.TemporaryServer.start, s.TemporaryServer.stop = recorded_start, recorded_stop
    from flows.__main__ import main
    sys.argv = ["pretrain", *sys.argv[1:]]
    sys.exit(main())
    """
)


def test_pretrain_starts_the_server_before_the_cli_imports_and_stops_it_after_a_usage_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", ENTRY, "run", "--to", "nope"],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "server started; cli imported: False click imported: False" in out.stdout
    assert out.stdout.count("server started") == 1 and "server stopped" in out.stdout
    assert "to_stage=nope: stage not available" in out.stderr


@pytest.mark.parametrize("args", [["config", "show"], ["run", "--help"]])
def test_pretrain_starts_no_server_for_other_commands(tmp_path, args):
    out = subprocess.run(
        [sys.executable, "-c", ENTRY, *args], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "server started" not in out.stdout


def test_no_early_server_when_an_api_url_is_set(monkeypatch):
    from flows import server

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    server.start_early(["run"])
    assert server.take_early() is None


# a console script's shape: the worker imports it as __mp_main__, which imports flows.__main__
WORKER_MAIN = textwrap.dedent(
    """
    import gc
    from flows.__main__ import main  # noqa: F401
    AT_IMPORT = gc.get_threshold()

    def probe():
        import sys
        return sys.modules["__mp_main__"].AT_IMPORT, gc.get_threshold(), gc.isenabled()

    if __name__ == "__main__":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from flows.stage import _init_pool_worker

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context, initializer=_init_pool_worker) as pool:
            print("worker", pool.submit(probe).result())
        print("parent", gc.get_threshold(), gc.isenabled())
    """
)


def test_pool_workers_import_with_a_lazy_collector_and_work_with_the_normal_one(tmp_path):
    script = tmp_path / "pretrain_like.py"
    script.write_text(WORKER_MAIN)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    normal = gc.get_threshold()
    assert f"worker ({startup.LAZY}, {normal}, True)" in out.stdout, out.stdout
    assert f"parent {normal} True" in out.stdout  # importing flows.__main__ changes nothing in the parent


def test_collector_paused_resumes_early_or_at_the_end_even_on_error():
    assert gc.isenabled()
    with startup.collector_paused() as resume:
        assert not gc.isenabled()
        resume()
        assert gc.isenabled() and gc.get_threshold() == startup.NORMAL
    with pytest.raises(RuntimeError), startup.collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:  # a caller that had it off gets it off back
        with startup.collector_paused() as resume:
            resume()
            assert not gc.isenabled()
    finally:
        gc.enable()


class _Server:
    """What `_shared_ephemeral_server` uses of flows.server.TemporaryServer."""

    api_url = "http://127.0.0.1:9/api"
    ready = False

    def wait_ready(self, timeout_s: float) -> None:
        pass

    def stop(self) -> None:
        pass


def test_a_run_on_its_temporary_server_skips_heartbeats_and_the_version_check(monkeypatch):
    """The server is this installation's Prefect and lives only for the run: no client asks it for its
    version, and flows send no heartbeats (crashed-run automations need a lasting server); the settings and
    the environment are restored afterwards."""
    from prefect.settings import get_current_settings

    from flows import cli
    from flows.interrupt import MARKER

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED", "true")
    monkeypatch.setattr(cli, "_needs_temporary_server", lambda: True)
    before = get_current_settings()
    server = _Server()
    with cli._shared_ephemeral_server(server) as ready:
        ready()
        now = get_current_settings()
        assert str(now.api.url) == server.api_url and os.environ["PREFECT_API_URL"] == server.api_url
        assert now.flows.heartbeat_frequency is None
        assert now.client.server_version_check_enabled is False
        assert os.environ["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "false"  # pool workers inherit it
    MARKER.cleanups.remove(server.stop)
    after = get_current_settings()
    assert after.flows.heartbeat_frequency == before.flows.heartbeat_frequency
    assert os.environ["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] == "true"
    assert "PREFECT_API_URL" not in os.environ
    monkeypatch.undo()  # the exit rebuilt Prefect's process-wide settings from this test's environment
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def test_the_temporary_server_answers_and_moves_off_a_taken_port(tmp_path, monkeypatch):
    """`python -m flows.server PORT` (Prefect's app under uvicorn) exits with uvicorn's code 3 on a taken
    port, and `wait_ready` starts it again on a free one."""
    import socket

    from flows.server import TemporaryServer

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = TemporaryServer()
        server.port = taken.getsockname()[1]
        server.start()
        try:
            server.wait_ready(120)
            assert server.ready and server.port != taken.getsockname()[1]
        finally:
            server.stop()
    assert server.process is None
