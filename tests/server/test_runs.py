"""Deployment runs against a real Prefect server: run, fail one stage, fix and re-run, UI Retry.

The failing stage is decontaminate (a benchmark file that does not exist) when that stage is wired into
the pipeline, else ingest (an input file that does not exist). Either way the checks are the same: the
run is Failed naming the stage, that stage has no new version, and the re-run (a new run with the
parameter fixed, or a Retry of the same run after the file appears) recomputes no upstream stage:
their manifests keep their `created_at`, the stage logs say "reused", the artifacts say so.
"""

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server.conftest import REPO, demo_config, tail

pytestmark = pytest.mark.server


@dataclass
class FailureCase:
    stage: str
    missing: Path  # the file the bad parameter names (does not exist)
    patch: Callable[[Path], dict[str, Any]]  # config patch naming a file for `stage`
    create: Callable[[Path], None]  # writes a valid file there (the fix)

    def config(self, path: Path) -> dict[str, Any]:
        return demo_config(**self.patch(path))


def failure_case(tmp: Path, data_root: Path) -> FailureCase:
    from flows.pipeline import STAGE_ORDER as STAGES

    if "decontaminate" in STAGES:

        def create(path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [
                {
                    "id": f"q{i}",
                    "question": f"held out question number {i} about the colour of the sky "
                    f"over the northern mountains in early spring {i}",
                }
                for i in range(5)
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))

        return FailureCase(
            "decontaminate",
            tmp / "benchmarks" / "held-out.jsonl",
            lambda p: {
                "decontaminate": {
                    "benchmarks": [{"name": "held-out", "path": str(p), "fields": ["question"], "id_field": "id"}]
                }
            },
            create,
        )

    def create_warc(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        demo = sorted((data_root / "_inputs" / "demo-crawl").rglob("*.warc.gz"))
        assert demo, f"no demo WARC under {data_root}/_inputs"
        shutil.copy(demo[0], path)

    return FailureCase(
        "ingest", tmp / "crawl" / "crawl.warc.gz", lambda p: {"ingest": {"inputs": [str(p)]}}, create_warc
    )


def _upstream(stage: str) -> list[str]:
    from flows.pipeline import STAGE_ORDER as STAGES

    names = [str(s) for s in STAGES]
    return names[: names.index(stage)]


def _stage_artifacts(server, run_id: str) -> dict[str, dict[str, Any]]:
    """key -> latest artifact over the run and its stage subflow runs."""
    runs = [run_id] + [r["id"] for r in server.subflow_runs(run_id)]
    arts = sorted(server.artifacts(runs), key=lambda a: a["created"])
    return {a["key"]: a for a in arts if a.get("key")}


def _table(artifact: dict[str, Any]) -> dict[str, Any]:
    data = artifact["data"]
    rows = json.loads(data) if isinstance(data, str) else data
    return {r["metric"]: r["value"] for r in rows}


def _assert_upstream_reused(server, run_id: str, case: FailureCase, before: dict[str, Any], logs: bool = True):
    from storage.manifest import load_manifest

    root = str(server.data_root)
    arts = _stage_artifacts(server, run_id)
    summary = arts["pretrain-summary"]["data"]
    for stage in _upstream(case.stage):
        m = load_manifest(root, stage)
        assert m.version == before[stage].version and m.created_at == before[stage].created_at, (
            f"{stage} was recomputed: {before[stage].created_at} -> {m.created_at}"
        )
        assert _table(arts[f"{stage}-stats"])["reused"] is True, f"{stage}-stats artifact does not say reused"
        assert f"| {stage} | {m.version} | reused |" in summary, summary[:2000]
    if logs and _upstream(case.stage):
        text = "\n".join(server.logs([run_id] + [r["id"] for r in server.subflow_runs(run_id)]))
        for stage in _upstream(case.stage):
            assert f"reused {stage}@{before[stage].version}" in text
    assert f"| {case.stage} |" in summary and f"| {case.stage} | - |" not in summary


def test_deployment_run_completes_with_artifacts_and_versions(sqlite_server, completed_run):
    from flows.pipeline import STAGE_ORDER as STAGES

    server = sqlite_server
    assert set(completed_run.manifests) == {str(s) for s in STAGES}
    arts = _stage_artifacts(server, completed_run.run_id)
    for stage, m in completed_run.manifests.items():
        assert (server.data_root / stage / m.version / "manifest.json").is_file()
        assert _table(arts[f"{stage}-stats"])["version"] == m.version
        assert f"{stage}@{m.version}" in arts[f"{stage}-summary"]["data"]
    summary = arts["pretrain-summary"]["data"]
    chain = " -> ".join(f"`{s}@{m.version}`" for s, m in completed_run.manifests.items())
    assert chain in summary, summary[:3000]
    assert "![attrition funnel](data:image/png;base64," in summary
    assert all(f"| {s} | {m.version} | computed |" in summary for s, m in completed_run.manifests.items())


def test_deployments_registered_as_in_prefect_yaml(sqlite_server):
    server = sqlite_server
    with server.http() as c:
        deps = c.post("/deployments/filter", json={}).json()
        flows = {f["id"]: f["name"] for f in c.post("/flows/filter", json={}).json()}
    got = {(flows[d["flow_id"]], d["name"]): d for d in deps}
    from prefect.flows import load_flow_from_entrypoint

    for spec in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]:
        flow_name = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]), use_placeholder_flow=False).name
        d = got[(flow_name, spec["name"])]
        assert d["work_pool_name"] == spec["work_pool"]["name"] and d["entrypoint"] == spec["entrypoint"]
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert d["parameter_openapi_schema"]["properties"], f"{flow_name}/{spec['name']} has no parameter form"
        for s in d.get("schedules") or []:
            assert s["active"] is False, f"{flow_name}/{spec['name']}: schedule is not paused"
    assert "config_path" in got[("pretrain", "default")]["parameter_openapi_schema"]["properties"]


def test_compose_health_checks_pass_against_the_real_server_and_worker(sqlite_server, completed_run):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    server_check = compose["services"]["prefect-server"]["healthcheck"]["test"]
    worker_check = compose["services"]["worker-cpu"]["healthcheck"]["test"]
    port = sqlite_server.url.rsplit(":", 1)[1]
    for check, fix in (
        (server_check, ("localhost:4200", f"127.0.0.1:{port}")),
        (worker_check, ("localhost:8080", f"127.0.0.1:{sqlite_server.worker_health_port}")),
    ):
        assert check[0] == "CMD"
        cmd = [c.replace(*fix) for c in check[1:]]
        cmd[0] = "python3" if cmd[0] == "python" else cmd[0]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"{cmd}: {res.stderr}"


@dataclass
class FailedRun:
    case: FailureCase
    run_id: str
    state: dict[str, Any]  # as it was when the run ended (the Retry test changes it later)
    summary: str
    versions_before: list[str]  # complete versions of the failing stage before the run
    versions_after: list[str]
    temp_dirs_after: list[Path]


@pytest.fixture(scope="module")
def failed_run(sqlite_server, completed_run, tmp_path_factory) -> FailedRun:
    """One run of pretrain/default whose stage fails on a missing file (shared by the rerun and Retry tests)."""
    from storage.manifest import list_versions

    server = sqlite_server
    case = failure_case(tmp_path_factory.mktemp("failure"), server.data_root)
    root = str(server.data_root)
    before = [m.version for m in list_versions(root, case.stage)]
    run_id = server.create_run("pretrain/default", {"config": case.config(case.missing), "to_stage": case.stage})
    run = server.wait_final(run_id)
    summary = _stage_artifacts(server, run_id)["pretrain-summary"]["data"]
    return FailedRun(
        case,
        run_id,
        run["state"],
        summary,
        before,
        [m.version for m in list_versions(root, case.stage)],
        list((server.data_root / case.stage).glob(".tmp-*")),
    )


def test_failed_stage_then_fixed_rerun_reuses_upstream(sqlite_server, completed_run, failed_run, tmp_path):
    from storage.manifest import list_versions

    server, case, before = sqlite_server, failed_run.case, dict(completed_run.manifests)
    state = failed_run.state
    assert state["type"] == "FAILED", state
    assert f"stage '{case.stage}' failed" in state["message"], state["message"]
    assert str(case.missing) in state["message"], "the error should name the missing file"
    assert failed_run.versions_after == failed_run.versions_before, "a failed stage must not leave a version"
    assert not failed_run.temp_dirs_after, "failed stage left a temp dir"
    assert f"FAILED at stage `{case.stage}`" in failed_run.summary
    for stage in _upstream(case.stage):
        assert f"| {stage} | {before[stage].version} | reused |" in failed_run.summary

    fixed_path = tmp_path / "fixed" / case.missing.name  # the parameter fixed: a file that exists
    case.create(fixed_path)
    n_before = len(list_versions(str(server.data_root), case.stage))
    fixed_id = server.create_run("pretrain/default", {"config": case.config(fixed_path), "to_stage": case.stage})
    fixed = server.wait_final(fixed_id)
    assert fixed["state"]["type"] == "COMPLETED", f"{fixed['state']}\n{tail(server.worker_log, 80)}"
    _assert_upstream_reused(server, fixed_id, case, before)
    assert len(list_versions(str(server.data_root), case.stage)) == n_before + 1, "the fixed stage made no version"


def test_ui_retry_reenters_the_flow_and_reuses_upstream(sqlite_server, completed_run, failed_run):
    from reports.pipeline import parse_time
    from storage.manifest import load_manifest

    server, case, before = sqlite_server, failed_run.case, dict(completed_run.manifests)
    assert failed_run.state["type"] == "FAILED"
    case.create(case.missing)  # the operator fixes the world (the file appears), then presses Retry in the UI
    # one more item, so this file's content differs from the fixed run's copy: versions hash content, not paths
    # (the same file elsewhere is the same input and would be reused, not computed by the retry)
    assert case.stage == "decontaminate", case.stage
    with open(case.missing, "a") as f:
        f.write(json.dumps({"id": "q-retry", "question": "a question added before the retry, about rivers"}) + "\n")
    t_retry = time.time()
    with server.http() as c:
        r = c.post(
            f"/flow_runs/{failed_run.run_id}/set_state",
            json={
                "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
                "force": True,
            },
        )
        assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
    run = server.wait_final(failed_run.run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{tail(server.worker_log, 80)}"
    assert run["run_count"] == 2, "Retry should re-enter the same flow run"
    _assert_upstream_reused(server, failed_run.run_id, case, before)
    made = load_manifest(str(server.data_root), case.stage)
    assert parse_time(made.created_at) > t_retry, f"{case.stage} should have been computed by the retry"
