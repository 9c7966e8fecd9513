"""Prefect's fixed cost per shard task (issue 14: the same 1,000 real pages in 64 files took twice as long as
in 4): what a task run repeats in a pool worker is cut where it does nothing for the run."""

import ssl
from types import SimpleNamespace

import pytest
from prefect.task_runners import ProcessPoolTaskRunner

from flows import stage
from flows.stage import InterruptiblePool


def test_a_task_runs_context_in_a_worker_starts_no_pool_until_a_task_submits(monkeypatch):
    """Prefect enters a copy of the flow's task runner for every task run it hydrates in a worker: there it
    starts nothing (no queue, thread or executor to tear down after the task) unless the task submits."""
    monkeypatch.setattr(stage._Shared, "in_worker", True)
    started, executor = [], SimpleNamespace(shutdown=lambda **kw: None)

    def fake_start(self):
        started.append(self)
        self._executor = executor
        return self

    monkeypatch.setattr(InterruptiblePool, "_start", fake_start)
    monkeypatch.setattr(ProcessPoolTaskRunner, "submit", lambda self, *a, **k: self._executor)
    with InterruptiblePool(max_workers=2).duplicate() as pool:
        assert pool._executor is None and pool._subprocess_message_queue is None and started == []
        assert pool.submit("task", {}) is executor and started == [pool]
        assert pool.submit("task", {}) is executor and started == [pool]  # started once


def test_the_pool_initializer_marks_its_workers(monkeypatch):
    monkeypatch.setattr(stage._Shared, "in_worker", False)
    monkeypatch.setattr(stage, "ignore_sigint", lambda: None)
    assert InterruptiblePool(max_workers=2).duplicate()._initializer is stage._init_pool_worker
    stage._init_pool_worker()
    assert stage._Shared.in_worker


def test_the_temporary_servers_clients_load_one_ca_certificate(monkeypatch):
    """Plain HTTP on 127.0.0.1: the TLS context every Prefect client builds is never used, so it loads one
    certificate instead of certifi's bundle; the file goes with the server, and a user's own setting wins."""
    import os

    from prefect.settings import get_current_settings

    from flows import cli
    from flows.interrupt import MARKER

    class Server:
        api_url, ready = "http://127.0.0.1:9/api", False

        def wait_ready(self, timeout_s):
            pass

        def stop(self):
            pass

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_SSL_CERT_FILE", raising=False)
    monkeypatch.setattr(cli, "_needs_temporary_server", lambda: True)
    server = Server()
    with cli._shared_ephemeral_server(server):
        path = os.environ["PREFECT_API_SSL_CERT_FILE"]
        assert str(get_current_settings().api.ssl_cert_file) == path
        text = open(path, encoding="ascii").read()
        assert text.count("BEGIN CERTIFICATE") == 1
        ssl.create_default_context(cafile=path)  # a valid CA file
    MARKER.cleanups.remove(server.stop)
    assert not os.path.exists(path) and "PREFECT_API_SSL_CERT_FILE" not in os.environ
    import certifi
    from prefect.context import refresh_global_settings_context

    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", certifi.where())
    with cli._shared_ephemeral_server(server):
        assert os.environ["PREFECT_API_SSL_CERT_FILE"] == certifi.where()
    MARKER.cleanups.remove(server.stop)
    monkeypatch.undo()  # the exit rebuilt Prefect's process-wide settings from this test's environment
    refresh_global_settings_context()


class _Stop(BaseException):
    pass


def test_the_prewarmed_workers_import_the_first_stages_flow_module(cli_run_config, monkeypatch, tmp_path):
    """A task run's context names its flow: a worker imports the flow's module when it unpickles its first
    task, so the prewarm job imports it before (with the stage package), while the server starts."""
    import flows.stage as st
    from flows import cli

    seen = {}

    def record(prewarm, modules):
        seen.update(prewarm=prewarm, modules=list(modules))
        raise _Stop

    monkeypatch.setattr(st, "shared_process_pools", record)
    config = tmp_path / "c.yaml"
    config.write_text("workers: 2\n")
    with pytest.raises(_Stop):
        cli.main(["run", "--to", "langid", "--config", str(config), "--data-root", str(tmp_path / "data")])
    assert seen == {"prewarm": 2, "modules": ["tasks.ingest", "flows.ingest"]}
