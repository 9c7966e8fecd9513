"""Real-server fixtures: a `prefect server start` on 127.0.0.1 (SQLite or a throw-away PostgreSQL cluster),
work pools and deployments made with the real CLI, a process worker, and cleanup of every process.

The server requires HTTP basic auth (`PREFECT_SERVER_API_AUTH_STRING`, as in docker-compose.yml); every
client we start (CLI, worker, its flow runs) gets the same string as `PREFECT_API_AUTH_STRING`, the
test's own HTTP client sends it, and browsers get it the way the UI's login form stores it.

Every process started here carries the environment variable `PRETRAIN_TEST_PROCESS=<session token>`;
children inherit it (flow-run subprocesses, the postmaster forked by pg_ctl). Teardown stops each
process group we started (SIGTERM, then SIGKILL after a grace period) and then kills, by pid, any
process still carrying the token, so nothing survives the session even if a group was left.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# shared by every copy of this module (pytest imports conftest; test modules import it again)
TOKEN = os.environ.setdefault("PRETRAIN_TEST_SESSION_TOKEN", uuid.uuid4().hex)
MARK = "PRETRAIN_TEST_PROCESS"
# user:password of this session's servers (the same in every copy of this module, like TOKEN)
AUTH_STRING = os.environ.setdefault("PRETRAIN_TEST_API_AUTH_STRING", f"pretrain:{uuid.uuid4().hex}")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TIMINGS: dict[str, float] = {}  # printed at the end of the session (pytest_terminal_summary)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("real-server timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))


class RetryingTransport(httpx.HTTPTransport):
    """Retries 503/429 like Prefect's own client does (SQLite answers 503 while the database is locked)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(8):
            response = super().handle_request(request)
            if response.status_code not in (429, 503) or attempt == 7:
                return response
            response.close()
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect/pipeline settings (the test harness sets some), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PRETRAIN_"))}
    env.update(
        {
            MARK: TOKEN,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            # the venv's `prefect` first (the compose deploy command calls it by name)
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    env.update(extra)
    return env


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


class Processes:
    """Processes started by this session, each in its own process group."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
        sweep()


def marked_pids() -> list[int]:
    """Pids of live processes whose environment carries this session's token (our descendants)."""
    needle = f"{MARK}={TOKEN}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def sweep() -> None:
    for pid in marked_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def processes():
    procs = Processes()
    yield procs
    procs.stop_all()
    time.sleep(0.5)
    left = marked_pids()
    assert not left, f"processes left after teardown: {left}"


@dataclass
class PrefectServer:
    url: str
    home: Path
    log: Path
    proc: subprocess.Popen
    data_root: Path
    log_dir: Path
    started_in: float
    worker_log: Optional[Path] = None
    worker_health_port: Optional[int] = None
    # files that runs' parameters name (benchmark files) live under the session's temp dir: an allowed root
    allowed_roots: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def client_env(self, **extra: str) -> dict[str, str]:
        return base_env(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api,
            PREFECT_API_AUTH_STRING=AUTH_STRING,
            PRETRAIN_DATA_ROOT=str(self.data_root),
            PRETRAIN_ALLOWED_ROOTS=str(self.allowed_roots or ""),
            PREFECT_LOGGING_EXTRA_LOGGERS="tasks,storage,models,flows",
            **extra,
        )

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Run `prefect <args>` (or `bash -c` when args[0] == 'bash') from the repo root against this server."""
        cmd = list(args) if args[0] == "bash" else [sys.executable, "-m", "prefect", *args]
        res = subprocess.run(cmd, cwd=REPO, env=self.client_env(), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}\nserver log:\n{tail(self.log)}"
            )
        return res

    def http(self, authenticated: bool = True) -> httpx.Client:
        user, password = AUTH_STRING.split(":", 1)
        return httpx.Client(
            base_url=self.api,
            timeout=30,
            transport=RetryingTransport(),
            auth=httpx.BasicAuth(user, password) if authenticated else None,
        )

    def flow_run(self, run_id: str) -> dict[str, Any]:
        with self.http() as c:
            r = c.get(f"/flow_runs/{run_id}")
            r.raise_for_status()
            return r.json()

    def wait_final(self, run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run = self.flow_run(run_id)
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"] and run["state"]["type"] in TERMINAL:
                return run
            time.sleep(0.5)
        raise AssertionError(
            f"flow run {run_id} still {run['state']['type']} after {timeout}s\n"
            f"worker log:\n{tail(self.worker_log) if self.worker_log else ''}"
        )

    def subflow_runs(self, run_id: str) -> list[dict[str, Any]]:
        with self.http() as c:
            r = c.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
            r.raise_for_status()
            return r.json()

    def artifacts(self, run_ids: list[str]) -> list[dict[str, Any]]:
        with self.http() as c:
            r = c.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": run_ids}}, "limit": 200})
            r.raise_for_status()
            return r.json()

    def logs(self, run_ids: list[str]) -> list[str]:
        out: list[str] = []
        with self.http() as c:
            offset = 0
            while True:
                r = c.post(
                    "/logs/filter",
                    json={
                        "logs": {"flow_run_id": {"any_": run_ids}},
                        "limit": 200,
                        "offset": offset,
                        "sort": "TIMESTAMP_ASC",
                    },
                )
                r.raise_for_status()
                page = [x["message"] for x in r.json()]
                out += page
                if len(page) < 200:
                    return out
                offset += 200

    def deployment_id(self, name: str) -> str:
        with self.http() as c:
            r = c.get(f"/deployments/name/{name}")
            r.raise_for_status()
            return str(r.json()["id"])

    def create_run(self, deployment: str, parameters: dict[str, Any]) -> str:
        """What the UI's run form does: POST /deployments/<id>/create_flow_run."""
        with self.http() as c:
            r = c.post(
                f"/deployments/{self.deployment_id(deployment)}/create_flow_run",
                json={"parameters": parameters, "state": {"type": "SCHEDULED"}},
            )
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

    def run_deployment_cli(self, deployment: str, parameters: dict[str, Any], timeout: int = 300) -> tuple[str, int]:
        """`prefect deployment run <dep> --params ... --watch`; returns (flow run id, exit code)."""
        res = self.cli(
            "deployment",
            "run",
            deployment,
            "--params",
            json.dumps(parameters),
            "--watch",
            "--watch-interval",
            "1",
            "--watch-timeout",
            str(timeout),
            timeout=timeout + 60,
            check=False,
        )
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout)
        assert m, f"no flow run id in `prefect deployment run` output:\n{res.stdout}\n{res.stderr}"
        return m.group(1), res.returncode


def start_server(processes: Processes, base: Path, db_url: Optional[str] = None, timeout: float = 120) -> PrefectServer:
    port = free_port()
    home = base / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    log = base / "logs" / "server.log"
    # the UI's API address defaults to port 4200 whatever --port says; point it at this server
    env = base_env(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_AUTH_STRING=AUTH_STRING,
    )
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    t0 = time.monotonic()
    proc = processes.start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).text == "true":
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"prefect server not healthy after {timeout}s:\n{tail(log)}")
        time.sleep(0.3)
    TIMINGS[f"server start ({'postgres' if db_url else 'sqlite'})"] = time.monotonic() - t0
    return PrefectServer(
        url=url,
        home=home,
        log=log,
        proc=proc,
        data_root=base / "data",
        log_dir=base / "logs",
        started_in=time.monotonic() - t0,
        allowed_roots=base.parent,
    )


def ui_login_script() -> str:
    """JavaScript doing what the UI's login form does with the auth string (localStorage `prefect-password`)."""
    return f"window.localStorage.setItem('prefect-password', '{base64.b64encode(AUTH_STRING.encode()).decode()}')"


def seed_ui_login(chromium: str, url: str, profile: Path) -> None:
    """Log a Chromium profile in to the UI at `url`'s origin, once, so that `chromium --user-data-dir=profile`
    renders the pages instead of the login form (the API requires the auth string)."""
    marker = profile / ".pretrain-ui-login"
    if marker.exists():
        return
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is needed to log the browser in")
    origin = re.match(r"https?://[^/]+", url)
    assert origin, url
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = context.new_page()
            page.goto(f"{origin.group(0)}/api/health")  # same origin as the UI; needs no auth
            page.evaluate(ui_login_script())
        finally:
            context.close()
    marker.write_text("")


def compose_deploy_command() -> str:
    """The `deploy` service's shell command from docker-compose.yml (pools + `prefect deploy --all`)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    cmd = compose["services"]["deploy"]["command"]
    assert cmd[:2] == ["bash", "-c"], cmd
    return cmd[2].replace("$$", "$")


def deploy_all(server: PrefectServer) -> subprocess.CompletedProcess:
    """Create the pools and deploy every deployment exactly as docker-compose's deploy service does."""
    return server.cli("bash", "-c", compose_deploy_command(), timeout=300)


def start_worker(processes: Processes, server: PrefectServer, pool: str = "cpu") -> subprocess.Popen:
    health = free_port()
    log = server.log_dir / f"worker-{pool}.log"
    env = server.client_env(
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_WORKER_WEBSERVER_PORT=str(health),
        PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
    )
    proc = processes.start(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            f"test-{pool}",
            "--with-healthcheck",
        ],
        env,
        log,
    )
    server.extra.setdefault("worker_logs", {})[pool] = log
    if pool == "cpu" or server.worker_log is None:  # the cpu worker runs the pipeline: its log and health port
        server.worker_log, server.worker_health_port = log, health
    return proc


# ---------------------------------------------------------------- PostgreSQL (a throw-away cluster)


def pg_bin() -> Optional[Path]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url(processes):
    """A PostgreSQL cluster in a temp dir on a free port (initdb + pg_ctl), removed at teardown."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed; run .ci/server-deps.sh")
    data = Path(tempfile.mkdtemp(prefix="pretrain-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    env = base_env()

    def pg(*cmd: str, timeout: float = 120) -> None:
        res = subprocess.run([*as_user, *cmd], env=env, capture_output=True, text=True, timeout=timeout, cwd=data)
        assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"

    pg(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync")
    pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(data / "db"),
        "-l",
        str(data / "postgres.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
        "start",
    )
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect")
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "-w", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=data,
        )
        shutil.rmtree(data, ignore_errors=True)


# ---------------------------------------------------------------- the SQLite server, its worker and a first run

# Small, quick pipeline config for the server runs: few pages, shards in one thread, tiny training.
# Stage overrides apply only to stages (and fields) that exist, so new stages need no edit here.
DEMO = {"workers": 1, "demo_pages": 60}
STAGE_OVERRIDES: dict[str, dict[str, Any]] = {
    # torch.compile costs ~2 min of CPU before the first step; 10 small steps prove the stage runs
    "train": {
        "compile": False,
        "max_steps": 10,
        "warmup_steps": 2,
        "micro_batch_size": 8,
        "tokens_per_step": 2048,
        "eval_interval": 5,
        "ckpt_interval": 10,
        "log_interval": 5,
        "eval_tokens": 2048,
        "sample_tokens": 8,
    },
}


def demo_config(**patch: Any) -> dict[str, Any]:
    """DEMO + the overrides of the stages PipelineConfig has + `patch` (merged one level deep)."""
    from flows.pipeline import PipelineConfig

    cfg: dict[str, Any] = dict(DEMO)
    fields = PipelineConfig.model_fields
    for stage, over in STAGE_OVERRIDES.items():
        if stage in fields:
            sub = fields[stage].annotation
            known = getattr(sub, "model_fields", {})
            cfg[stage] = {k: v for k, v in over.items() if k in known}
    for key, value in patch.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    PipelineConfig.model_validate(cfg)  # fail here, not in the worker, on a config typo
    return cfg


@pytest.fixture(scope="session")
def sqlite_server(processes, tmp_path_factory):
    """A real `prefect server start` (SQLite), pools + deployments from the compose deploy command, a cpu
    worker, and a gpu worker (the pipeline starts its train stage as the `train/default` deployment there)."""
    server = start_server(processes, tmp_path_factory.mktemp("prefect-sqlite"))
    t0 = time.monotonic()
    deploy_all(server)
    TIMINGS["pools + deploy --all"] = time.monotonic() - t0
    start_worker(processes, server, "gpu")
    start_worker(processes, server, "cpu")
    return server


@dataclass
class CompletedRun:
    run_id: str
    seconds: float
    manifests: dict[str, Any]  # stage -> Manifest of its latest version after the run


@pytest.fixture(scope="session")
def completed_run(sqlite_server) -> CompletedRun:
    """`prefect deployment run pretrain/default --params ... --watch` on the demo config, Completed."""
    from flows.pipeline import STAGE_ORDER as STAGES
    from storage.manifest import load_manifest

    t0 = time.monotonic()
    run_id, code = sqlite_server.run_deployment_cli("pretrain/default", {"config": demo_config()})
    seconds = TIMINGS["first deployment run (cli --watch)"] = time.monotonic() - t0
    run = sqlite_server.flow_run(run_id)
    assert code == 0 and run["state"]["type"] == "COMPLETED", (
        f"run {run_id}: exit {code}, state {run['state']}\nworker log:\n{tail(sqlite_server.worker_log, 120)}"
        f"\ngpu worker log:\n{tail(sqlite_server.extra['worker_logs']['gpu'], 60)}"
    )
    root = str(sqlite_server.data_root)
    return CompletedRun(run_id, seconds, {str(s): load_manifest(root, s) for s in STAGES})
