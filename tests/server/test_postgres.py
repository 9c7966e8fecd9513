"""A deployment run on a Prefect server backed by PostgreSQL (what docker-compose.yml uses)."""

import subprocess
import time
from urllib.parse import urlparse

import pytest

from tests.server.conftest import TIMINGS, demo_config, deploy_all, pg_bin, start_server, start_worker, tail

pytestmark = pytest.mark.server


def test_deployment_run_on_postgres(processes, postgres_url, tmp_path_factory):
    from flows.pipeline import STAGE_ORDER as STAGES

    server = start_server(processes, tmp_path_factory.mktemp("prefect-postgres"), db_url=postgres_url)
    deploy_all(server)
    worker = start_worker(processes, server, "cpu")
    first = str(next(iter(STAGES)))
    t0 = time.monotonic()
    run_id, code = server.run_deployment_cli("pretrain/default", {"config": demo_config(), "to_stage": first})
    TIMINGS["postgres deployment run"] = time.monotonic() - t0
    run = server.flow_run(run_id)
    assert code == 0 and run["state"]["type"] == "COMPLETED", f"{run['state']}\n{tail(server.worker_log, 100)}"
    assert (server.data_root / first / "latest").is_file()
    # the run really is in PostgreSQL, not in a SQLite file under PREFECT_HOME
    url = urlparse(postgres_url.replace("+asyncpg", ""))
    res = subprocess.run(
        [
            str(pg_bin() / "psql"),
            "-h",
            url.hostname,
            "-p",
            str(url.port),
            "-U",
            url.username,
            "-d",
            url.path.lstrip("/"),
            "-tAc",
            f"select state_type from flow_run where id = '{run_id}'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.stdout.strip() == "COMPLETED", res.stderr
    assert not list(server.home.glob("*.db")), "the server should not have created a SQLite database"
    processes.stop(worker)
    processes.stop(server.proc)
