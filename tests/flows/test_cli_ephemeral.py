"""`pretrain run` the way the README's first command runs it: no PREFECT_API_URL, so one temporary Prefect
server for the whole run, shared with the process-pool workers, stopped at exit without a log-retry wait."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_without_a_server_starts_one_temporary_server(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("workers: 2\ndemo_pages: 40\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PRETRAIN_DATA_ROOT=str(tmp_path / "data"))
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(cfg), "--to", "langid"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    # the pool workers used the run's server instead of starting their own (Prefect's "Starting temporary
    # server"; each costs ~7 s); ours (flows/server.py) was started before the imports and stopped at exit
    assert log.count("Starting temporary server") == 0, log[-3000:]
    assert log.count("temporary Prefect server on http://127.0.0.1:") - log.count("stopping the temporary") == 1, log[
        -3000:
    ]
    assert "stopping the temporary Prefect server" in log and "Error logging to API" not in log, log[-3000:]
    assert "committed ingest@" in log and "committed langid@" in log
    # per-shard INFO lines of the library loggers reach the console
    assert "tasks.ingest" in log and "40 records" in log, log[-3000:]
    assert (tmp_path / "data" / "langid" / "latest").exists()


def test_the_server_starts_before_the_pipeline_is_imported(tmp_path):
    """The temporary server comes up while `run` imports the stages (issue 14: it must not sit on the
    critical path): it is started before `flows.pipeline` is imported, and a bad stage name still fails
    with the allowed names, after which the server is stopped."""
    code = (
        "import sys\n"
        "import flows.server as s\n"
        "real = s.TemporaryServer.start\n"
        "def start(self):\n"
        "    print('pipeline imported at server start:', 'flows.pipeline' in sys.modules, flush=True)\n"
        "    return real(self)\n"
        "s.TemporaryServer.start = start\n"
        "from flows.cli import main\n"
        "sys.exit(main(['run', '--to', 'nope']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PRETRAIN_DATA_ROOT=str(tmp_path / "data"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pipeline imported at server start: False" in out.stdout
    assert "to_stage=nope: stage not available; choose one of ['ingest'" in out.stderr
