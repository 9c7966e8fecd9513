"""train flow under a Prefect test server: `pretrain plan`, `model: auto`, cross-run resume from the work dir.

The tokenize version is written by hand (token shards of a synthetic Markov-chain language, as in
tests/tasks/test_train.py), so no earlier stage runs. Training is the tiny preset for a few CPU steps.
"""

import contextvars
import json
import logging
import math
import shutil
import threading
import time

import numpy as np
import pytest

import flows.train as train_module
from flows.cli import main
from flows.pipeline import Stage
from flows.stage import task_runner
from flows.train import LOCK, locked, train_flow, work_dir
from storage import checkpoints as ckpt
from storage.artifacts import ArtifactWriter
from storage.gc import gc
from storage.manifest import ShardInfo, is_complete, list_versions, load_manifest, new_manifest
from storage.stats import StageStats
from storage.token_shards import TokenShardWriter, pack_documents
from tasks.train import FaultHooks, TrainParams
from tasks.train.plan import GPU_PEAK_BF16

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
    assert r["epochs"] == pytest.approx(
        5 * 512 / (train_module.train_tokens(load_manifest(str(data_root), Stage.TOKENIZE)))
    )
    assert "| model | tiny (auto) |" in train_module.report_markdown(
        load_manifest(str(data_root), Stage.TRAIN, v), str(data_root)
    )


# ---------------------------------------------------------------- cross-run resume


def test_failed_run_resumes_from_its_work_dir(prefect_backend, tmp_path, monkeypatch, caplog):
    p = params()
    full_root, root = tmp_path / "full", tmp_path / "cut"
    make_tokenize_version(full_root)
    make_tokenize_version(root)
    full_version = run_train(full_root, p)
    full = load_manifest(str(full_root), Stage.TRAIN, full_version)

    real_train = train_module.train

    def crash_after_step_7(*args, **kw):
        def crash(step: int) -> None:
            if step == 7:
                raise RuntimeError("simulated failure at step 7")

        return real_train(*args, **kw, hooks=FaultHooks(after_step=crash))

    monkeypatch.setattr(train_module, "train", crash_after_step_7)
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_train(root, p)
    monkeypatch.setattr(train_module, "train", real_train)
    assert list_versions(str(root), Stage.TRAIN) == [] and not is_complete(str(root), Stage.TRAIN, full_version)
    work = work_dir(str(root), full_version)  # same params and input: same version, same work dir
    assert ckpt.list_checkpoints(str(work)) == [5]
    assert not [d for d in (root / "train").iterdir() if d.name.startswith(".tmp-")]  # temp dir aborted
    # gc leaves the unfinished run alone, even when it is old
    gc(str(root), keep=1, stale_after_s=0)
    assert ckpt.list_checkpoints(str(work)) == [5]

    with caplog.at_level(logging.INFO, logger="tasks.train"):
        v = run_train(root, p)
    assert v == full_version
    assert "resumed from step-000005" in caplog.text
    m = load_manifest(str(root), Stage.TRAIN, v)
    r, rf = m.extras["result"], full.extras["result"]
    assert r["resumed_from"] == 5 and rf["resumed_from"] is None
    assert r["steps"] == 10 and r["train_loss"] == rf["train_loss"]
    assert r["val_loss"] == pytest.approx(rf["val_loss"], abs=1e-7)
    out = root / "train" / v
    assert step_losses(out / "metrics.jsonl") == step_losses(full_root / "train" / v / "metrics.jsonl")
    assert {"step": 5, "event": "resume"} in [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert ckpt.latest_step(str(out)) == 10 and r["checkpoint"] == "step-000010"
    assert not work.exists() and not (out / LOCK).exists()  # committed, work dir removed


def test_resume_false_starts_over_and_leftovers_are_cleaned(prefect_backend, data_root, monkeypatch):
    make_tokenize_version(data_root)
    real_train = train_module.train

    def crash_after_step_5(*args, **kw):
        def crash(step: int) -> None:
            if step == 5:
                raise RuntimeError("simulated failure")

        return real_train(*args, **kw, hooks=FaultHooks(after_step=crash))

    monkeypatch.setattr(train_module, "train", crash_after_step_5)
    with pytest.raises(RuntimeError):
        run_train(data_root, params())
    monkeypatch.setattr(train_module, "train", real_train)
    version = next(
        d.name.removeprefix(".work-") for d in (data_root / "train").iterdir() if d.name.startswith(".work-")
    )
    work = work_dir(str(data_root), version)
    # another run of this version holds the work dir: refused, files untouched
    with locked(work), pytest.raises(RuntimeError, match="in use by another run"):
        run_train(data_root, params())
    assert ckpt.list_checkpoints(str(work)) == [5]
    v = run_train(data_root, params(resume=False))  # resume is not part of the version id
    assert v == version and not work.exists()
    assert load_manifest(str(data_root), Stage.TRAIN, v).extras["result"]["resumed_from"] is None
    # a committed version's stale work dir (crash after commit) is removed by the next (reusing) run
    work.mkdir()
    (work / "result.json").write_text("{}")
    assert run_train(data_root, params()) == v and not work.exists()
    # force on a committed version retrains: a finished run's leftovers are not just copied back
    shutil.copytree(data_root / "train" / v, work)
    before = load_manifest(str(data_root), Stage.TRAIN, v)
    assert run_train(data_root, params(), force=True) == v and not work.exists()
    after = load_manifest(str(data_root), Stage.TRAIN, v)
    assert after.created_at != before.created_at and after.extras["result"]["resumed_from"] is None


# ---------------------------------------------------------------- two identical runs at once


def test_identical_concurrent_runs_wait_and_reuse(prefect_backend, tmp_path, monkeypatch):
    """The second of two identical runs exited 1 with "`.work-<version>` is in use by another run" (issue 11,
    defect 6); now it waits for the first on the version lock and reuses its version."""
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
