"""Test session setup: an isolated Prefect home and a session-scoped Prefect test server.

PREFECT_HOME and the server settings are set before Prefect is imported (PREFECT_NOTES section 3):
the test DB, result storage and profiles live in a temp dir; the task-run recorder is off (no SQLite
lock stalls) and flow heartbeats are disabled, so a flow run costs ~0.15 s instead of ~1.1 s.
"""

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,storage,models,flows")
os.environ.pop("PRETRAIN_DATA_ROOT", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_backend():
    """A Prefect test server for the whole session (started on first use, ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def torch_one_thread():
    """Spinning OpenMP threads make tiny CPU models 10x slower on a busy machine (torch imported here only)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("PRETRAIN_DATA_ROOT", str(root))
    return root


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real-data tests are optional)")
    return SHARED_DATA


@pytest.fixture
def make_version():
    """Write a complete version of `stage` holding `docs` (lists of Documents, one list per shard).

    Usage: `make_version(root, "quality", [[doc, ...], [doc, ...]], extra=[pa.field(...)], version="q1")`.
    Returns the version id. Lets a stage's tests start from a hand-made upstream without running it.
    """
    from storage.artifacts import ArtifactWriter
    from storage.documents import DocumentWriter
    from storage.manifest import ShardInfo, new_manifest
    from storage.stats import StageStats

    def make(root, stage, shards, extra=None, version="fixture1", inputs=None):
        w = ArtifactWriter(str(root), str(stage), version)
        infos, total = [], 0
        for i, docs in enumerate(shards):
            name = f"part-{i:05d}.parquet"
            with DocumentWriter(f"{w.path}/{name}", extra=extra) as dw:
                for d in docs:
                    dw.write(d)
            infos.append(ShardInfo(name=name, rows=len(docs), bytes=1))
            total += len(docs)
        w.commit(
            new_manifest(str(stage), 1, version, {}, inputs or {}, infos, [], StageStats(docs_in=total, docs_out=total))
        )
        return version

    return make


@pytest.fixture(scope="session")
def demo_ground_truth(tmp_path_factory):
    """The 60-page demo crawl (WARC path, ground-truth rows), generated once per session (~2 s CPU)."""
    import json

    from demo.crawl import generate_demo_crawl

    result = generate_demo_crawl(str(tmp_path_factory.mktemp("demo60")), pages=60)
    rows = [json.loads(line) for line in open(result.ground_truth_path, encoding="utf-8")]
    return result.warc_path, rows


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server as a real process on 127.0.0.1 for the session (skips when moto is not installed:
    `pip install -e ".[dev]"`); yields its endpoint URL."""
    import importlib.util
    import subprocess
    import sys
    import time
    import urllib.request

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        pytest.skip('moto[server] and s3fs are not installed: pip install -e ".[dev]"')
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {proc.returncode}") from None
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server did not answer on {endpoint} within 30 s")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_server(s3_endpoint, monkeypatch):
    """The session's moto S3 server, with this test's AWS settings (standard env vars) pointing at it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return s3_endpoint


@pytest.fixture
def cli_run_config(monkeypatch):
    """`pretrain run` as far as the config it hands the pipeline: no server (PREFECT_API_URL set, the server
    context a no-op), `pipeline_flow` replaced by a recorder. Returns a dict whose "config" is the last one."""
    import contextlib

    from flows import cli

    seen: dict = {}

    def fake_pipeline_flow(config, **kw):
        seen["config"] = config
        return {}

    monkeypatch.setattr("flows.pipeline.pipeline_flow", fake_pipeline_flow)
    # the server context yields its `ready()` wait: a no-op here
    monkeypatch.setattr(cli, "_shared_ephemeral_server", lambda server=None: contextlib.nullcontext(lambda: None))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no temporary server is started
    monkeypatch.setattr(cli.paths, "apply_prefect_env_defaults", lambda: None)  # no os.environ changes
    return seen
