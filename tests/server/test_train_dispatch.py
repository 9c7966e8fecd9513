"""The pipeline's train stage as its own deployment run: inside a deployment run of `pretrain/default` (cpu
pool), `call_stage` starts `train/default` (gpu pool; the fixtures start a worker for each pool), waits for
it, and takes its version; a train run that does not complete fails the pipeline naming its state and run."""

from typing import Any

import pytest

from tests.server.conftest import demo_config, tail

pytestmark = pytest.mark.server


def _train_runs(server, run_id: str) -> list[dict[str, Any]]:
    """The `train` flow runs under the pipeline run `run_id`."""
    with server.http() as c:
        flows = {f["id"]: f["name"] for f in c.post("/flows/filter", json={}).json()}
    return [r for r in server.subflow_runs(run_id) if flows[r["flow_id"]] == "train"]


def test_pipeline_deployment_runs_train_as_the_train_deployment(sqlite_server, completed_run):
    server = sqlite_server
    assert server.flow_run(completed_run.run_id)["state"]["type"] == "COMPLETED"
    runs = _train_runs(server, completed_run.run_id)
    assert len(runs) == 1, runs
    train = runs[0]
    assert train["deployment_id"] == server.deployment_id("train/default"), "train ran in-process, not deployed"
    assert train["work_pool_name"] == "gpu" and train["state"]["type"] == "COMPLETED", train
    assert train["parameters"]["input_version"] == completed_run.manifests["tokenize"].version
    made = completed_run.manifests["train"]
    assert (server.data_root / "train" / made.version / "manifest.json").is_file()
    assert made.inputs["tokenize"] == completed_run.manifests["tokenize"].version


def test_failed_train_deployment_run_fails_the_pipeline_naming_it(sqlite_server, completed_run):
    server = sqlite_server
    # more CUDA devices than any test machine has: the train run fails before training
    config = demo_config(train={"device": "cuda", "gpus": 64})
    run_id = server.create_run("pretrain/default", {"config": config, "only": "train"})
    run = server.wait_final(run_id)
    state = run["state"]
    assert state["type"] == "FAILED", f"{state}\n{tail(server.worker_log, 80)}"
    (train,) = _train_runs(server, run_id)
    assert train["state"]["type"] == "FAILED"
    assert "stage 'train' failed" in state["message"], state["message"]
    assert "train/default" in state["message"] and str(train["id"]) in state["message"], state["message"]
    assert train["name"] in state["message"] and "Failed" in state["message"], state["message"]
