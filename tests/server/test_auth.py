"""The Prefect API requires the auth string (issue 11): before, anyone reaching the port could start a run.

The session's server runs with `PREFECT_SERVER_API_AUTH_STRING` (tests/server/conftest.py, as the
prefect-server service of docker-compose.yml); the CLI, the worker and its flow runs use
`PREFECT_API_AUTH_STRING`. Health probes stay open (the compose health checks use them).
"""

import subprocess
import sys

import httpx
import pytest

from tests.server.conftest import AUTH_STRING, REPO

pytestmark = pytest.mark.server


def test_unauthenticated_requests_are_refused(sqlite_server):
    server = sqlite_server
    deployment = server.deployment_id("pretrain/default")  # with the auth string
    wrong = httpx.BasicAuth(AUTH_STRING.split(":", 1)[0], "wrong-password")
    for auth in (None, wrong):
        with httpx.Client(base_url=server.api, timeout=30, auth=auth) as c:
            started = c.post(
                f"/deployments/{deployment}/create_flow_run", json={"parameters": {}, "state": {"type": "SCHEDULED"}}
            )
            assert started.status_code == 401, started.text
            assert c.post("/flow_runs/filter", json={}).status_code == 401
            assert c.get(f"/deployments/{deployment}").status_code == 401
            assert c.get("/health").status_code == 200  # probes need no auth
    with server.http(authenticated=False) as c:
        assert c.post("/deployments/filter", json={}).status_code == 401
    with server.http() as c:
        assert c.post("/deployments/filter", json={}).status_code == 200


def test_cli_works_with_the_auth_string_and_fails_without(sqlite_server):
    server = sqlite_server
    assert "pretrain/default" in " ".join(server.cli("deployment", "ls").stdout.split())
    env = {k: v for k, v in server.client_env().items() if k != "PREFECT_API_AUTH_STRING"}
    res = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "pretrain/default"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0, res.stdout
    assert "401" in res.stdout + res.stderr or "Unauthorized" in res.stdout + res.stderr, res.stdout + res.stderr
