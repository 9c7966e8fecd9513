"""The deployment definitions load: every prefect.yaml entrypoint imports, is a flow, and its parameters
validate; every stage flow has a deployment; docker-compose.yml has the services, health checks, database
URL and shared data volume the README promises (`docker compose config` too where the plugin exists).

The real `prefect deploy` + worker + UI checks are in tests/server/ (marker `server`).
"""

import importlib
import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SECRET_WORDS = re.compile(r"(password|secret|api_key|apikey|token|credential)s?\s*:", re.I)


def _deployments():
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def _load(entrypoint, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # entrypoints are relative to the repo root, as for `prefect deploy`
    # no placeholder: Prefect otherwise swaps in an untyped stand-in flow when the module fails to import
    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def test_prefect_yaml_has_pipeline_and_unique_names():
    deps = _deployments()
    entry = {(d["entrypoint"], d["name"]) for d in deps}
    assert ("flows/pipeline.py:pipeline_flow", "default") in entry
    assert len(entry) == len(deps), "two deployments with the same entrypoint and name"


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: f"{d['entrypoint']}:{d['name']}")
def test_entrypoint_is_a_flow_with_a_typed_form_and_valid_parameters(dep, monkeypatch):
    from prefect import Flow
    from prefect.utilities.callables import parameter_schema

    path = dep["entrypoint"].split(":")[0]
    assert (REPO / path).is_file(), f"{dep['entrypoint']}: no such file"
    flow = _load(dep["entrypoint"], monkeypatch)
    assert isinstance(flow, Flow), f"{dep['entrypoint']} is not a Prefect flow"
    params = dep.get("parameters") or {}
    unknown = set(params) - set(inspect.signature(flow.fn).parameters)
    assert not unknown, f"{dep['entrypoint']}: parameters {unknown} are not arguments of the flow"
    flow.validate_parameters(params)  # raises ParameterTypeError on a bad value
    if "config_path" in params:
        from flows.config import load_config

        load_config(REPO / params["config_path"])
    schema = parameter_schema(flow).model_dump()
    for name, prop in schema["properties"].items():
        # a typed field renders as a form input; an untyped one as a raw JSON box
        assert {"type", "$ref", "allOf", "anyOf", "enum"} & set(prop), f"{dep['entrypoint']}: {name} has no type"
    pool = dep["work_pool"]["name"]
    assert pool == ("gpu" if flow.name in ("train", "eval") else "cpu"), f"{flow.name} deployed to pool {pool}"


def test_pipeline_form_offers_config_path_and_stage_choices(monkeypatch):
    from prefect.utilities.callables import parameter_schema

    flow = _load("flows/pipeline.py:pipeline_flow", monkeypatch)
    schema = parameter_schema(flow).model_dump()
    props = schema["properties"]
    assert {"config", "config_path", "only", "from_stage", "to_stage", "force", "data_root"} <= set(props)
    assert "YAML" in props["config_path"].get("description", ""), "Args docstring should describe the field"
    stage_enum = schema["definitions"]["Stage"]["enum"]
    assert stage_enum[0] == "ingest" and "train" in stage_enum
    assert "PipelineConfig" in schema["definitions"]


def test_every_stage_flow_has_a_deployment(monkeypatch):
    from prefect import Flow

    monkeypatch.chdir(REPO)
    entrypoints = {d["entrypoint"] for d in _deployments()}
    missing = []
    for path in sorted((REPO / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        for name, obj in vars(module).items():
            defined_here = isinstance(obj, Flow) and obj.fn.__module__ == module.__name__
            if defined_here and f"flows/{path.name}:{name}" not in entrypoints:
                missing.append(f"flows/{path.name}:{name}")
    assert not missing, (
        f"stage flows without a deployment: {missing}; add an entry to deployments/prefect.yaml "
        f"(copy the ingest one; train goes to `work_pool: *gpu_pool`)"
    )


def test_schedules_are_paused_and_yaml_has_no_secrets():
    deps = _deployments()
    schedules = [s for d in deps for s in d.get("schedules") or []]
    assert schedules, "a schedule example (weekly) is expected"
    assert all(s.get("active") is False for s in schedules), "schedules must be paused by default"
    text = PREFECT_YAML.read_text()
    assert not SECRET_WORDS.search(text), "no credentials in prefect.yaml; workers take them from the environment"
    assert "pull:" not in text.replace("`pull:`", ""), (
        "no pull section: prefect deploy must store the repo root as the working directory"
    )


# ---------------------------------------------------------------- docker-compose


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def _interpolate(value, env):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (enough for this file)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"docker-compose.yml needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value.replace("$$", "\0")).replace("\0", "$")


# what an operator puts into .env for the secrets .env.example leaves empty
SECRETS = {"POSTGRES_PASSWORD": "3f9c2a7b1d8e4f60a5b2", "PREFECT_AUTH_STRING": "pretrain:8d1e6b0c4a2f9e7d3c5b"}


@pytest.fixture
def compose():
    raw = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the x-* anchors and `<<` merges
    return _interpolate(raw, {**_env_example(), **SECRETS})


def _env(service) -> dict[str, str]:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_compose_every_variable_is_documented_in_env_example():
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert used <= set(_env_example()), f"add {used - set(_env_example())} to .env.example"


def test_compose_services_health_checks_and_database(compose):
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker-cpu", "worker-gpu"} <= set(services)
    for name in ("postgres", "prefect-server", "worker-cpu", "worker-gpu"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    url = _env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://[^:]+:[^@]+@postgres:5432/\w+", url), url
    pg = _env(services["postgres"])
    assert url.endswith("/" + pg["POSTGRES_DB"]) and f"//{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in url
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert all(p.startswith("127.0.0.1:") for p in services["prefect-server"]["ports"]), "UI bound to localhost"
    for name in ("worker-cpu", "worker-gpu"):
        assert _env(services[name])["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_compose_workers_share_one_data_volume_at_the_same_path(compose):
    services = compose["services"]
    mounts = {}
    for name in ("worker-cpu", "worker-gpu", "deploy"):
        vols = [v for v in services[name]["volumes"] if v.split(":")[0] in compose["volumes"]]
        assert len(vols) == 1, f"{name}: expected one named data volume, got {services[name]['volumes']}"
        mounts[name] = vols[0]
        assert vols[0].split(":")[1] == _env(services[name])["PRETRAIN_DATA_ROOT"], (
            f"{name}: PRETRAIN_DATA_ROOT is not the mounted data path"
        )
    assert len(set(mounts.values())) == 1, f"workers mount different data volumes/paths: {mounts}"


def test_compose_workers_pools_gpu_and_one_image(compose):
    services = compose["services"]
    pools = yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["work_pools"]
    cpu_cmd, gpu_cmd = services["worker-cpu"]["command"], services["worker-gpu"]["command"]
    assert cpu_cmd[cpu_cmd.index("--pool") + 1] == pools["cpu"]["name"]
    assert gpu_cmd[gpu_cmd.index("--pool") + 1] == pools["gpu"]["name"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    images = {services[s]["image"] for s in ("prefect-server", "worker-cpu", "worker-gpu", "deploy")}
    assert len(images) == 1, f"server and workers must share one image (same Prefect version): {images}"
    dockerfile = REPO / services["worker-cpu"]["build"]["dockerfile"]
    assert dockerfile.is_file() and services["worker-cpu"]["build"]["context"] == "."
    assert "deployments/prefect.yaml" in " ".join(services["deploy"]["command"])
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().split()
    assert ".venv/" in ignore and ".git/" in ignore


def test_compose_dask_scheduler_and_worker_share_the_image_and_data_volume(compose):
    services = compose["services"]
    sched, worker = services["dask-scheduler"], services["dask-worker"]
    assert sched["image"] == worker["image"] == services["worker-cpu"]["image"], "one image for every service"
    assert sched["build"] == services["worker-cpu"]["build"]
    assert sched["command"][:2] == ["dask", "scheduler"] and sched["command"][sched["command"].index("--port") + 1] == (
        "8786"
    )
    assert "ports" not in sched, "Dask has no auth: the scheduler must not be published on the host"
    assert sched["healthcheck"]["test"] and "8786" in " ".join(sched["healthcheck"]["test"])
    cmd = worker["command"]
    assert cmd[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"], cmd
    assert cmd[cmd.index("--nthreads") + 1] == "1", "CPU-bound Python shards: one thread per worker process"
    assert worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    # the same named volume at the same path as the Prefect workers, and the same data root
    assert worker["volumes"] == services["worker-cpu"]["volumes"]
    assert _env(worker)["PRETRAIN_DATA_ROOT"] == _env(services["worker-cpu"])["PRETRAIN_DATA_ROOT"]
    # shard tasks report their runs to the API: the worker is an authenticated client
    assert _env(worker)["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    # the image installs the dask extra whatever EXTRAS says
    dockerfile = (REPO / "deployments" / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*\.\[([^\]]+)\]", dockerfile)
    assert installs and all(x.startswith("dask") for x in installs), installs
    text = COMPOSE.read_text()
    assert '"address": "tcp://dask-scheduler:8786"' in text, "the compose file shows how a run uses the cluster"


def test_compose_config_validates_with_the_docker_cli():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above cover the file")
    cmd = [docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **SECRETS})
    assert res.returncode == 0, res.stderr
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=bare)
    assert res.returncode != 0 and "PREFECT_AUTH_STRING" in res.stderr + res.stdout, "empty secrets must be refused"


# ---------------------------------------------------------------- security (issue 11)


def test_env_example_has_no_usable_secret_and_compose_requires_them():
    env = _env_example()
    assert env["POSTGRES_PASSWORD"] == "" and env["PREFECT_AUTH_STRING"] == "", "no default secrets in .env.example"
    raw = yaml.safe_load(COMPOSE.read_text())
    for name in SECRETS:
        with pytest.raises(AssertionError, match=f"docker-compose.yml needs {name}"):
            _interpolate(raw, {**_env_example(), **{k: v for k, v in SECRETS.items() if k != name}})
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{(POSTGRES_PASSWORD|PREFECT_AUTH_STRING)(:[?-]|\})", text)
    assert uses and all(op == ":?" for _, op in uses), f"every use of a secret must be required (${{X:?...}}): {uses}"


def test_compose_api_auth_in_the_server_and_every_client(compose):
    services = compose["services"]
    auth = SECRETS["PREFECT_AUTH_STRING"]
    assert _env(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"] == auth
    clients = [name for name, svc in services.items() if "PREFECT_API_URL" in _env(svc)]
    assert {"deploy", "worker-cpu", "worker-gpu"} <= set(clients)
    for name in clients:
        assert _env(services[name]).get("PREFECT_API_AUTH_STRING") == auth, f"{name} talks to the API without auth"


def _dockerfile_user() -> str:
    users = re.findall(r"(?m)^USER\s+(\S+)", (REPO / "deployments" / "Dockerfile").read_text())
    assert users, "deployments/Dockerfile sets no USER: its containers run as root"
    return users[-1]


def test_containers_run_as_a_non_root_user_owning_the_data_volume(compose):
    user = _dockerfile_user()
    assert user.split(":")[0] not in ("root", "0"), user
    text = (REPO / "deployments" / "Dockerfile").read_text()
    assert re.search(r"chown [^\n]*/data", text) and text.index("chown") < text.index('VOLUME ["/data"]'), (
        "/data must belong to the user before VOLUME, so a new named volume takes that ownership"
    )
    assert 'ENTRYPOINT ["bash", "/app/deployments/entrypoint.sh"]' in text
    for name, svc in compose["services"].items():
        assert str(svc.get("user", user)).split(":")[0] not in ("root", "0"), f"{name} runs as root"


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"PREFECT_API_AUTH_STRING": ""}, "PREFECT_API_AUTH_STRING is empty"),
        ({"PREFECT_SERVER_API_AUTH_STRING": "change-me"}, "PREFECT_SERVER_API_AUTH_STRING is a placeholder"),
        (
            {"PREFECT_API_AUTH_STRING": "pretrain:change-me"},
            "PREFECT_API_AUTH_STRING \\(its password\\) is a placeholder",
        ),
        ({"PREFECT_API_AUTH_STRING": "no-user-part-here"}, "must be user:password"),
        ({"PREFECT_API_AUTH_STRING": "pretrain:short"}, "at least 12 characters"),
        ({"POSTGRES_PASSWORD": "change-me"}, "POSTGRES_PASSWORD is a placeholder"),
        ({"POSTGRES_PASSWORD": ""}, "POSTGRES_PASSWORD is empty"),
        ({**SECRETS, "PREFECT_API_AUTH_STRING": SECRETS["PREFECT_AUTH_STRING"]}, None),
        ({}, None),
    ],
)
def test_entrypoint_refuses_empty_and_placeholder_secrets(env, refused):
    res = subprocess.run(
        ["bash", str(REPO / "deployments" / "entrypoint.sh"), "echo", "started"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if refused is None:
        assert res.returncode == 0 and res.stdout == "started\n", res.stderr
    else:
        assert res.returncode == 78 and res.stdout == "" and re.search(refused, res.stderr), res.stderr
