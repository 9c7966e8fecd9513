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
    # the pool workers used the run's server instead of starting their own (each costs ~7 s)
    assert log.count("Starting temporary server") == 1, log[-3000:]
    assert "Stopping temporary server" in log and "Error logging to API" not in log, log[-3000:]
    assert "committed ingest@" in log and "committed langid@" in log
    # per-shard INFO lines of the library loggers reach the console
    assert "tasks.ingest" in log and "40 records" in log, log[-3000:]
    assert (tmp_path / "data" / "langid" / "latest").exists()
