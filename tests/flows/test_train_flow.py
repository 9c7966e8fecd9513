"""train flow under a Prefect test server: `pretrain plan`, `model: auto`, cross-run resume in place.

A partial run is `<root>/train/<version>/` without `manifest.json` (its `_writing.json` says resumable):
it does not exist to readers, and the next run of the same version resumes from its checkpoints.

The tokenize version is written by hand (token shards of a synthetic Markov-chain language, as in
tests/tasks/test_train.py), so no earlier stage runs. Training is the tiny preset for a few CPU steps.
"""

import contextvars
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import flows.train as train_module
import storage.locks
from flows.cli import main
from flows.pipeline import Stage
from flows.stage import task_runner
from flows.train import GPU_TAG, train_flow, train_run
from storage import checkpoints as ckpt
from storage.artifacts import WRITING, ArtifactWriter
from storage.gc import gc
from storage.locks import VersionLock
from storage.manifest import MANIFEST, ShardInfo, is_complete, list_versions, load_manifest, new_manifest
from storage.stats import StageStats
from storage.token_shards import TokenShardWriter, pack_documents
from tasks.train import FaultHooks, TrainParams
from tasks.train.launch import TorchrunError
from tasks.train.plan import GPU_PEAK_BF16, train_tokens
from tasks.train.report import loss_curve_markdown, metrics_table, report

VOCAB, SEQ_LEN, EOS, TOK = 256, 64, 0, "tok1"


def markov_docs(n_docs: int, seed: int) -> list[list[int]]:
    """Random walks on a fixed sparse transition graph (3 successors per token)."""
    successors = np.random.default_rng(0).integers(1, VOCAB, size=(VOCAB, 3))
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        state, doc = int(rng.integers(1, VOCAB)), []
        for _ in range(int(rng.integers(8, 120))):
            doc.append(state)
            state = int(successors[state, rng.integers(0, 3)])
        docs.append(doc)
    return docs


def make_tokenize_version(root, n_train: int = 400, n_val: int = 40) -> dict[str, int]:
    w = ArtifactWriter(str(root), Stage.TOKENIZE, TOK)
    sequences, shards = {}, []
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        packed = list(pack_documents(markov_docs(n, seed), SEQ_LEN, EOS))
        name = f"{split}/tokens-00000.arrow"
        with TokenShardWriter(f"{w.path}/{name}", SEQ_LEN, VOCAB, eos_id=EOS) as tw:
            tw.write_sequences(np.stack([r for r, _ in packed]), [o for _, o in packed])
        sequences[split] = len(packed)
        shards.append(ShardInfo(name=name, rows=len(packed), bytes=1))
    extras = {"vocab_size": VOCAB, "seq_len": SEQ_LEN, "bytes_per_token": 3.0, "eos_id": EOS, "sequences": sequences}
    w.commit(new_manifest(Stage.TOKENIZE, 1, TOK, {}, {"mix": "m1"}, shards, [], StageStats(), extras))
    return sequences


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw) -> TrainParams:
    base = {
        "model": "tiny",
        "micro_batch_size": 8,
        "tokens_per_step": 512,
        "max_steps": 10,
        "warmup_steps": 2,
        "eval_interval": 5,
        "ckpt_interval": 5,
        "eval_tokens": 1024,
        "log_interval": 1,
        "device": "cpu",
        "sample_tokens": 4,
        "seed": 3,
    }
    return TrainParams(**{**base, **kw})


def run_train(root, p: TrainParams, force: bool = False) -> str:
    return train_flow.with_options(task_runner=task_runner(1))(params=p, data_root=str(root), force=force)


def step_losses(path) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


# ---------------------------------------------------------------- pretrain plan


def test_plan_cli_from_the_tokenize_version(data_root, capsys):
    seqs = make_tokenize_version(data_root)
    assert main(["plan", "--data-root", str(data_root), "--gpu", "A100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    tokens = seqs["train"] * (SEQ_LEN + 1)
    assert f"data: {tokens:,} unique tokens (train split of tokenize@{TOK})" in out
    assert f"N = {tokens / 20:.3g} params, D = {tokens:.3g} tokens, C = {6 * tokens / 20 * tokens:.3g} FLOPs" in out
    assert f"inference-optimal (150 tokens/param): N = {tokens / 150:.3g} params" in out
    assert "A100 at 312 TFLOP/s" in out and f"vocab {VOCAB:,}, seq_len {SEQ_LEN}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert {"tiny", "small", "gpt2-124m"} <= set(rows)
    assert float(rows["tiny"][3]) > 4  # epochs column: tiny's 20 N tokens repeat this small data set
    assert "warning: tiny:" in out and "> 4 epochs" in out
    assert "model: auto picks tiny" in out
    capsys.readouterr()
    assert main(["plan", "--data-root", str(data_root), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["tokens"] == tokens and p["gpu"] == "H100" and p["vocab_size"] == VOCAB
    assert main(["plan", "--data-root", str(data_root), "--version", "0123456789ab"]) == 1  # well-formed, absent
    assert "0123456789ab" in capsys.readouterr().err


def test_plan_cli_budget_and_wall_clock(tmp_path, capsys):
    root = str(tmp_path / "empty")
    assert main(["plan", "--data-root", root, "--gpu-hours", "10", "--gpu", "A100", "--mfu", "0.5", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    compute = 10 * 3600 * GPU_PEAK_BF16["A100"] * 0.5
    assert p["tokens"] is None and p["compute_flops"] == pytest.approx(compute)
    assert p["chinchilla"]["params"] == pytest.approx(math.sqrt(compute / 120))
    for e in p["presets"]:  # the budget is spent whatever the preset: 10 h on one GPU
        assert e["gpu_hours"] == pytest.approx(10) and e["wall_hours"] == pytest.approx(10)
    assert main(["plan", "--data-root", root, "--compute", "1e21", "--tokens", "2e9", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "data: 2,000,000,000 unique tokens (--tokens)" in out and "budget: 1e+21 FLOPs" in out
    assert "8 x H100" in out and "wall-clock" in out


def test_plan_cli_errors_say_what_to_do(tmp_path, capsys):
    root = str(tmp_path / "empty")
    assert main(["plan", "--data-root", root]) == 1
    err = capsys.readouterr().err
    assert "pretrain run --to tokenize" in err and "--tokens N" in err
    assert main(["plan", "--data-root", root, "--tokens", "1e9", "--gpu", "TPUv5"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'TPUv5'" in err and "'H100'" in err and "'A100'" in err
    assert main(["plan", "--data-root", root, "--tokens", "-5"]) == 2
    assert "tokens=-5.0 must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--data-root", root, "--compute", "1e20", "--gpu-hours", "5"])
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- model: auto


def test_model_auto_picks_the_planned_preset(prefect_backend, data_root, caplog):
    make_tokenize_version(data_root)
    with caplog.at_level(logging.INFO, logger="tasks.train"):
        v = run_train(data_root, params(model="auto", max_steps=5, ckpt_interval=5))
    assert "model: auto -> tiny" in caplog.text
    r = load_manifest(str(data_root), Stage.TRAIN, v).extras["result"]
    assert (r["model"], r["requested_model"]) == ("tiny", "auto")
    assert r["epochs"] == pytest.approx(5 * 512 / (train_tokens(load_manifest(str(data_root), Stage.TOKENIZE))))
    m = load_manifest(str(data_root), Stage.TRAIN, v)
    text = report(m, str(data_root))
    assert "| model | tiny (auto) |" in text and "| steps | 5 |" in text and "## Sample" in text
    assert {"metric": "model", "value": "tiny"} in metrics_table(m)
    assert not [row for row in metrics_table(m) if row["metric"] == "sample"]
    assert loss_curve_markdown(m, str(data_root)).startswith(f"# train@{v} loss curve\n\n![loss curve](data:image/png")


# ---------------------------------------------------------------- cross-run resume


def crashing_train(real_train, at_step: int):
    def crash_after(*args, **kw):
        def crash(step: int) -> None:
            if step == at_step:
                raise RuntimeError(f"simulated failure at step {at_step}")

        return real_train(*args, **kw, hooks=FaultHooks(after_step=crash))

    return crash_after


def partial_run(root) -> str:
    """The version of the one partial (manifest-less) train run under root."""
    (d,) = [d for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]
    assert not (d / MANIFEST).exists()
    assert json.loads((d / WRITING).read_text())["resumable"] is True
    return d.name


def test_failed_run_resumes_in_its_version_dir(prefect_backend, tmp_path, monkeypatch, caplog):
    p = params()
    full_root, root = tmp_path / "full", tmp_path / "cut"
    make_tokenize_version(full_root)
    make_tokenize_version(root)
    full_version = run_train(full_root, p)
    full = load_manifest(str(full_root), Stage.TRAIN, full_version)

    real_train = train_module.train
    monkeypatch.setattr(train_module, "train", crashing_train(real_train, 7))
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_train(root, p)
    monkeypatch.setattr(train_module, "train", real_train)
    assert list_versions(str(root), Stage.TRAIN) == [] and not is_complete(str(root), Stage.TRAIN, full_version)
    with pytest.raises(FileNotFoundError):
        load_manifest(str(root), Stage.TRAIN, full_version)  # a partial run does not exist to readers
    out = root / "train" / full_version  # same params and input: same version, same directory
    assert partial_run(root) == full_version
    assert ckpt.list_checkpoints(str(out)) == [5]
    assert not [d for d in (root / "train").iterdir() if d.name.startswith((".tmp-", ".work-"))]
    # gc leaves the unfinished run alone, even when it is old
    gc(str(root), keep=1, stale_after_s=0)
    assert ckpt.list_checkpoints(str(out)) == [5] and (out / WRITING).exists()

    with caplog.at_level(logging.INFO, logger="tasks.train"):
        v = run_train(root, p)
    assert v == full_version
    assert "resumed from step-000005" in caplog.text
    m = load_manifest(str(root), Stage.TRAIN, v)
    r, rf = m.extras["result"], full.extras["result"]
    assert r["resumed_from"] == 5 and rf["resumed_from"] is None
    assert r["steps"] == 10 and r["train_loss"] == rf["train_loss"]
    assert r["val_loss"] == pytest.approx(rf["val_loss"], abs=1e-7)
    assert step_losses(out / "metrics.jsonl") == step_losses(full_root / "train" / v / "metrics.jsonl")
    assert {"step": 5, "event": "resume"} in [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert ckpt.latest_step(str(out)) == 10 and r["checkpoint"] == "step-000010"
    assert (r["metrics_path"], r["plot_path"]) == ("metrics.jsonl", "loss.png")
    assert [s.name for s in m.shards] == ["step-000010"]
    assert not (out / WRITING).exists() and not (root / "train" / f".lock-{v}").exists()  # committed, unlocked
    # result.json points at files that exist after the commit
    written = json.loads((out / "result.json").read_text())
    for key in ("checkpoint", "metrics_path", "plot_path"):
        assert (out / written[key]).exists(), (key, written[key])


def test_resume_false_starts_over_and_force_retrains(prefect_backend, data_root, monkeypatch, caplog):
    make_tokenize_version(data_root)
    real_train = train_module.train
    monkeypatch.setattr(train_module, "train", crashing_train(real_train, 5))
    with pytest.raises(RuntimeError):
        run_train(data_root, params())
    monkeypatch.setattr(train_module, "train", real_train)
    version = partial_run(data_root)
    out = data_root / "train" / version
    assert ckpt.list_checkpoints(str(out)) == [5]
    # another run of this version holds its lock: this one waits (here: gives up at once), files untouched
    monkeypatch.setattr(storage.locks, "LOCK_WAIT_S", 0.2)
    holder = VersionLock(str(data_root), Stage.TRAIN, version)
    assert holder.try_acquire()
    try:
        with pytest.raises(TimeoutError, match="another run"):
            run_train(data_root, params())
    finally:
        holder.release()
    assert ckpt.list_checkpoints(str(out)) == [5] and partial_run(data_root) == version
    with caplog.at_level(logging.WARNING):
        v = run_train(data_root, params(resume=False))  # resume is not part of the version id
    assert v == version and "resume is false: discarding the unfinished run" in caplog.text
    assert load_manifest(str(data_root), Stage.TRAIN, v).extras["result"]["resumed_from"] is None
    assert ckpt.list_checkpoints(str(out)) == [5, 10] and not (out / WRITING).exists()
    # a complete version is reused: nothing is trained again
    calls = []
    monkeypatch.setattr(train_module, "train", lambda *a, **kw: calls.append(1) or real_train(*a, **kw))
    assert run_train(data_root, params()) == v and calls == []
    # force on a committed version retrains from scratch: its checkpoints are not resumed from
    before = load_manifest(str(data_root), Stage.TRAIN, v)
    assert run_train(data_root, params(), force=True) == v and calls == [1]
    after = load_manifest(str(data_root), Stage.TRAIN, v)
    assert after.created_at != before.created_at and after.extras["result"]["resumed_from"] is None
    assert after.extras["result"]["train_loss"] == before.extras["result"]["train_loss"]


def test_a_run_that_dies_before_its_first_checkpoint_leaves_nothing(prefect_backend, data_root, monkeypatch):
    make_tokenize_version(data_root)
    monkeypatch.setattr(train_module, "train", crashing_train(train_module.train, 2))
    with pytest.raises(RuntimeError):
        run_train(data_root, params())
    assert not [d for d in (data_root / "train").iterdir() if not d.name.startswith(".lock-")]


def test_a_killed_runs_leftovers_without_a_checkpoint_are_discarded(prefect_backend, data_root, caplog):
    """A run killed before its first valid checkpoint leaves files but nothing to resume from."""
    make_tokenize_version(data_root)
    p = params(max_steps=5, ckpt_interval=5)
    v = run_train(data_root, p)
    out = data_root / "train" / v
    shutil.rmtree(out)  # as if that run had been killed mid-way: a half checkpoint and stray metrics
    ArtifactWriter(str(data_root), Stage.TRAIN, v, resumable=True)
    (out / "step-000005").mkdir()
    (out / "step-000005" / "model.pt").write_bytes(b"half")
    (out / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    with caplog.at_level(logging.INFO):
        assert run_train(data_root, p) == v
    assert "starting from scratch" in caplog.text
    m = load_manifest(str(data_root), Stage.TRAIN, v)
    assert m.extras["result"]["resumed_from"] is None and ckpt.list_checkpoints(str(out)) == [5]
    assert '"step": 99' not in (out / "metrics.jsonl").read_text()


# ---------------------------------------------------------------- two identical runs at once


def test_identical_concurrent_runs_wait_and_reuse(prefect_backend, tmp_path, monkeypatch):
    """The second of two identical runs exited 1 with "`.work-<version>` is in use by another run" (issue 11,
    defect 6); now it waits for the first on the version lock and reuses its version (never writing the
    version's directory the first one trains in)."""
    make_tokenize_version(tmp_path)
    p = params(max_steps=4, ckpt_interval=4, eval_interval=4)
    real_train, entered, release, calls = train_module.train, threading.Event(), threading.Event(), []

    def gated_train(*args, **kw):  # holds the first run in training until the second has started
        calls.append(1)
        entered.set()
        assert release.wait(60)
        return real_train(*args, **kw)

    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    monkeypatch.setattr(train_module, "train", gated_train)
    results: dict[str, object] = {}

    def start(name: str) -> threading.Thread:
        def body() -> None:
            try:
                results[name] = run_train(tmp_path, p)
            except BaseException as err:  # checked below
                results[name] = err

        t = threading.Thread(target=contextvars.copy_context().run, args=(body,), daemon=True)
        t.start()
        return t

    threads = []
    try:
        threads.append(start("first"))
        assert entered.wait(60)
        threads.append(start("second"))
        deadline = time.monotonic() + 60
        while not any("waiting for another run of train@" in m for m in messages) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        release.set()
        for t in threads:
            t.join(60)
        logging.getLogger("prefect.flow_runs").removeHandler(handler)
    assert results["first"] == results["second"], results
    v = results["first"]
    assert any(m.startswith(f"waiting for another run of train@{v}") and "pid" in m for m in messages), messages
    assert any(m.startswith(f"reused train@{v}") for m in messages) and len(calls) == 1
    (m,) = list_versions(str(tmp_path), Stage.TRAIN)
    assert m.extras["result"]["steps"] == 4
    assert not [d.name for d in (tmp_path / "train").iterdir() if d.name.startswith((".work-", ".tmp-", ".lock-"))]
    assert not (tmp_path / "train" / v / WRITING).exists()


# ---------------------------------------------------------------- several processes (torchrun)


def torchrun_pids() -> list[int]:
    """This process's torchrun children (found in /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"torch.distributed.run" in cmd:
            pids.append(int(stat.parent.name))
    return pids


def test_the_train_task_carries_the_gpu_tag():
    """`prefect concurrency-limit create gpu 1` then keeps one training run at a time."""
    assert GPU_TAG == "gpu" and GPU_TAG in train_run.tags


@pytest.mark.slow
def test_a_gpu_concurrency_limit_of_one_runs_one_training_at_a_time(prefect_backend, tmp_path, monkeypatch):
    """On the Prefect server: with `prefect concurrency-limit create gpu 1` (the V1 API, which Prefect 3 keeps
    as the global limit `tag:gpu`), two training runs started together on different data roots train one
    after the other; each holds the slot at least a second, so without the limit they would overlap."""
    from prefect.client.orchestration import get_client

    from tests.threads import Run

    spans: dict[str, tuple[float, float]] = {}
    real_train = train_module.train

    def timed_train(params, shards_dir, out_dir, *args, **kw):
        t0 = time.monotonic()
        try:
            time.sleep(1.0)
            return real_train(params, shards_dir, out_dir, *args, **kw)
        finally:
            spans[out_dir] = (t0, time.monotonic())

    monkeypatch.setattr(train_module, "train", timed_train)
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        make_tokenize_version(root)
    p = params(max_steps=4, eval_interval=2, ckpt_interval=2)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)
        try:
            runs = [Run(lambda root=root: run_train(root, p)) for root in roots]
            for run in runs:
                run.start()
            versions = [run.value(300) for run in runs]
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)
    assert len(set(versions)) == 1 and len(spans) == 2
    first, second = sorted(spans.values())
    assert first[1] <= second[0], f"the two training runs overlapped: {spans}"


@pytest.mark.slow
def test_two_gloo_processes_commit_the_in_process_version(prefect_backend, tmp_path, caplog):
    """gpus=2 on CPU: torchrun with 2 gloo processes, committed like an in-process run, same losses."""
    p1 = params(micro_batch_size=4, max_steps=6, eval_interval=3, ckpt_interval=3)  # 8 sequences per step
    p2 = p1.model_copy(update={"gpus": 2})
    assert p2.version_params() == p1.version_params()  # gpus is not part of the version id
    one, two = tmp_path / "one", tmp_path / "two"
    make_tokenize_version(one)
    make_tokenize_version(two)
    t0 = time.perf_counter()
    v1 = run_train(one, p1)
    t1 = time.perf_counter()
    with caplog.at_level(logging.INFO):
        v2 = run_train(two, p2)
    t2 = time.perf_counter()
    print(f"in-process {t1 - t0:.1f}s, torchrun x2 {t2 - t1:.1f}s")
    assert v1 == v2
    assert "launching 2 training processes" in caplog.text and "[rank 0]" in caplog.text
    assert "[rank 1] tasks.train INFO" not in caplog.text  # rank 1 logs warnings only
    r1 = load_manifest(str(one), Stage.TRAIN, v1).extras["result"]
    m2 = load_manifest(str(two), Stage.TRAIN, v2)
    r2 = m2.extras["result"]
    print("val loss in-process", r1["val_loss"], "torchrun x2", r2["val_loss"])
    assert r2["steps"] == 6 and r2["tokens_seen"] == r1["tokens_seen"] == 6 * 512
    assert math.isfinite(r2["val_loss"]) and r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-4)
    losses1 = step_losses(one / "train" / v1 / "metrics.jsonl")
    losses2 = step_losses(two / "train" / v2 / "metrics.jsonl")
    assert sorted(losses1) == sorted(losses2) == list(range(1, 7))
    assert [losses2[s] for s in losses2] == pytest.approx([losses1[s] for s in losses2], rel=1e-4)
    out = two / "train" / v2
    assert (r2["checkpoint"], r2["metrics_path"], r2["plot_path"]) == ("step-000006", "metrics.jsonl", "loss.png")
    assert [s.name for s in m2.shards] == ["step-000006"] and ckpt.list_checkpoints(str(out)) == [3, 6]
    assert ckpt.load_meta(str(out), 6)["world_size"] == 2
    assert sorted(e.name for e in out.iterdir()) == sorted(e.name for e in (one / "train" / v1).iterdir())
    assert not (out / "_work").exists() and not (out / WRITING).exists()


@pytest.mark.slow
def test_a_killed_torchrun_run_resumes_and_a_failing_one_commits_nothing(prefect_backend, data_root, tmp_path):
    p = params(micro_batch_size=4, max_steps=20, eval_interval=5, ckpt_interval=5, gpus=2)
    make_tokenize_version(data_root)
    # a batch that 2 processes cannot split evenly is refused before anything is launched
    with pytest.raises(ValueError, match="2 training processes would change the batch"):
        run_train(data_root, p.model_copy(update={"micro_batch_size": 8}))
    # torchrun killed (SIGKILL) after its first checkpoint: the flow fails, the checkpoints stay
    first = data_root / "train"
    stop = threading.Event()

    def kill_after_first_checkpoint() -> None:
        while not stop.is_set():
            if list(first.glob("*/step-000005/meta.json")):
                for pid in torchrun_pids():
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    try:
        with pytest.raises(TorchrunError, match=r"exited with code -9 \(killed by SIGKILL\)"):
            run_train(data_root, p)
    finally:
        stop.set()
        killer.join(10)
    version = partial_run(data_root)
    out = data_root / "train" / version
    cut_at = ckpt.latest_step(str(out))
    assert cut_at is not None and 5 <= cut_at < 20 and (out / "_work" / "job.json").exists()
    time.sleep(1)  # the workers got SIGTERM when torchrun died (PR_SET_PDEATHSIG)
    assert not torchrun_pids()
    v = run_train(data_root, p)
    assert v == version
    r = load_manifest(str(data_root), Stage.TRAIN, v).extras["result"]
    assert r["resumed_from"] == cut_at and r["steps"] == 20 and math.isfinite(r["val_loss"])
    ref_root = tmp_path / "ref"
    make_tokenize_version(ref_root)
    ref = load_manifest(str(ref_root), Stage.TRAIN, run_train(ref_root, p.model_copy(update={"gpus": 1})))
    assert r["val_loss"] == pytest.approx(ref.extras["result"]["val_loss"], rel=1e-4)

    # workers that fail (a val shard they cannot read): the flow fails naming the exit code, commits nothing
    bad = tmp_path / "bad"
    make_tokenize_version(bad)
    (bad / "tokenize" / TOK / "val" / "tokens-00000.arrow").write_bytes(b"not an arrow file")
    with pytest.raises(TorchrunError, match=r"exited with code 1: pyarrow.lib.ArrowInvalid: Not an Arrow file; "):
        run_train(bad, p)
    assert list_versions(str(bad), Stage.TRAIN) == []
    assert not [d for d in (bad / "train").iterdir() if not d.name.startswith(".lock-")]
