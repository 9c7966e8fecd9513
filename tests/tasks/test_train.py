"""Training: schedule, baseline, end-to-end tiny run, exact resume, stability guards, DDP, golden loss.

Data: a synthetic "language" (a sparse random Markov chain over a 256-token vocabulary, documents of
random length packed with <eos> by the shard writer), so the tiny model can beat the unigram baseline
in a few dozen CPU steps. Regenerate the golden losses with `python tests/tasks/test_train.py`.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from storage import checkpoints as ckpt
from storage.token_shards import TokenShards, TokenShardWriter, pack_documents
from tasks.train import FaultHooks, TrainJob, TrainParams, lr_at, train, unigram_baseline_loss
from tasks.train.params import check_processes, grad_accumulation

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden_tiny_loss.json"
VOCAB, SEQ_LEN, EOS = 256, 64, 0


def markov_docs(n_docs: int, seed: int, branch: int = 3) -> list[list[int]]:
    """Documents from a fixed sparse Markov chain (same chain for every seed)."""
    grammar = np.random.default_rng(0)
    successors = grammar.integers(1, VOCAB, size=(VOCAB, branch))
    cum = np.cumsum(grammar.dirichlet(np.ones(branch), size=VOCAB), axis=1)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 120, size=n_docs)
    state = rng.integers(1, VOCAB, size=n_docs)
    cols = [state]
    for _ in range(lengths.max() - 1):
        choice = (rng.random(n_docs)[:, None] > cum[state]).sum(axis=1).clip(max=branch - 1)
        state = successors[state, choice]
        cols.append(state)
    walk = np.stack(cols, axis=1)
    return [walk[i, : lengths[i]].tolist() for i in range(n_docs)]


def write_split(directory: Path, n_docs: int, seed: int) -> int:
    packed = list(pack_documents(markov_docs(n_docs, seed), SEQ_LEN, EOS))
    with TokenShardWriter(str(directory / "tokens-00000.arrow"), SEQ_LEN, VOCAB, eos_id=EOS) as w:
        for i in range(0, len(packed), 64):
            chunk = packed[i : i + 64]
            w.write_sequences(np.stack([r for r, _ in chunk]), [o for _, o in chunk])
    return w.rows


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokenize")
    write_split(root / "train", 600, seed=1)
    write_split(root / "val", 60, seed=2)
    return root


def params(**kw) -> TrainParams:
    base = {
        "model": "tiny",
        "micro_batch_size": 8,
        "tokens_per_step": 512,
        "max_steps": 20,
        "warmup_steps": 4,
        "lr": 3e-3,
        "eval_interval": 5,
        "ckpt_interval": 5,
        "eval_tokens": 2048,
        "log_interval": 1,
        "device": "cpu",
        "sample_tokens": 16,
        "seed": 3,
    }
    return TrainParams(**{**base, **kw})


def step_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    p = params(max_steps=100, warmup_steps=10, lr=1e-3)
    assert lr_at(0, p) == pytest.approx(1e-4)
    assert lr_at(9, p) == pytest.approx(1e-3)
    assert lr_at(55, p) == pytest.approx(0.55e-3)  # halfway through the decay
    assert lr_at(100, p) == pytest.approx(1e-4)
    assert all(lr_at(s, p) >= lr_at(s + 1, p) for s in range(10, 100))


def test_params_are_validated():
    with pytest.raises(ValidationError, match="multiple of eval_interval"):
        TrainParams(eval_interval=30, ckpt_interval=100)
    with pytest.raises(ValidationError):
        TrainParams(learning_rate=1e-3)
    with pytest.raises(ValidationError):
        TrainParams(lr=0)
    job = TrainJob(shards_dir="a", out_dir="b", bytes_per_token=3.5)
    assert TrainJob.model_validate_json(job.model_dump_json()) == job


def test_unigram_baseline_loss(tmp_path):
    rows = np.array([[1, 1, 1, 2, 2, 2, 3, 3, 3]] * 4)  # 12 of each token 1..3 in train
    for split in ("train", "val"):
        with TokenShardWriter(str(tmp_path / split / "tokens-00000.arrow"), 8, 4) as w:
            w.write_sequences(rows, [[0]] * 4)
    loss = unigram_baseline_loss(TokenShards(str(tmp_path / "train")), TokenShards(str(tmp_path / "val")))
    # add-one smoothing: p(1..3) = 13 / 40; val targets are rows[:, 1:]
    assert loss == pytest.approx(-math.log(13 / 40))


def test_tiny_run_beats_unigram_and_writes_outputs(shards, tmp_path):
    out = tmp_path / "run"
    p = params(max_steps=30, eval_interval=10, ckpt_interval=10, keep_last=1, milestone_interval=20)
    r = train(
        p,
        shards,
        out,
        bytes_per_token=3.0,
        decode=lambda ids: "|".join(map(str, ids)),
        tokenize_version="tok123",
        tokenizer_sha256="abc",
    )
    assert r.val_loss < 0.6 * r.unigram_loss, (r.val_loss, r.unigram_loss)
    assert r.val_bpb == pytest.approx(r.val_loss / math.log(2) / 3.0)
    assert r.val_ppl == pytest.approx(math.exp(r.val_loss))
    assert r.steps == 30 and r.tokens_seen == 30 * 512 and r.mfu is None and r.tokens_per_s > 0
    assert (r.skipped_steps, r.rollbacks) == (0, 0)
    for name in ("metrics.jsonl", "loss.png", "sample.txt", "result.json"):
        assert (out / name).stat().st_size > 0, name
    # result.json names its files relative to the run's directory (issue 15): a staged run's work directory is
    # gone after the commit, and absolute paths break when the data root moves
    written = json.loads((out / "result.json").read_text())
    assert (written["checkpoint"], written["metrics_path"], written["plot_path"]) == (
        "step-000030",
        "metrics.jsonl",
        "loss.png",
    )
    assert (r.checkpoint, r.metrics_path, r.plot_path) == ("step-000030", "metrics.jsonl", "loss.png")
    assert r.sample.count("|") == 8 + 16 - 1  # 8 prompt tokens + 16 sampled
    # keep_last=1, the best by val loss (the last here) and milestone 20
    assert ckpt.list_checkpoints(str(out)) == [20, 30]
    meta = ckpt.load_meta(str(out), 30)
    assert meta["tokenize_version"] == "tok123" and meta["val_loss"] == pytest.approx(r.val_loss)
    assert meta["seq_pos"] == 30 * 8 and meta["model_config"]["vocab_size"] == VOCAB
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(rows[0])
    assert [x["step"] for x in rows if "val_bpb" in x] == [10, 20, 30]
    # a finished run resumes to the same result; the seeded sample is reproduced
    again = train(p, shards, out, bytes_per_token=3.0, decode=lambda ids: "|".join(map(str, ids)))
    assert again.sample == r.sample and again.val_loss == pytest.approx(r.val_loss, abs=1e-9)


def test_resume_reaches_the_same_losses(shards, tmp_path):
    p = params(max_steps=10, ckpt_interval=5, eval_interval=5)
    full = train(p, shards, tmp_path / "full", bytes_per_token=3.0)

    def crash(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt("simulated preemption")

    with pytest.raises(KeyboardInterrupt):
        train(p, shards, tmp_path / "cut", bytes_per_token=3.0, hooks=FaultHooks(after_step=crash))
    assert ckpt.latest_step(str(tmp_path / "cut")) == 5
    half_written = tmp_path / "cut" / "step-000007"  # killed while saving: no meta.json
    half_written.mkdir()
    (half_written / "model.pt").write_bytes(b"partial")
    assert ckpt.latest_step(str(tmp_path / "cut")) == 5
    with pytest.raises(ValueError, match="resume is false"):
        train(p.model_copy(update={"resume": False}), shards, tmp_path / "cut", bytes_per_token=3.0)
    resumed = train(p, shards, tmp_path / "cut", bytes_per_token=3.0)
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 11))  # rows of the crashed steps 6-7 were replaced
    for step in range(1, 11):
        assert b[step] == a[step], step  # bitwise: same data, same state, same kernels
    assert resumed.val_loss == pytest.approx(full.val_loss, abs=1e-6)


def test_non_finite_gradient_step_is_skipped(shards, tmp_path):
    def nan_at_step_5(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step == 5 else loss  # step is 0-based here

    r = train(
        params(max_steps=8, ckpt_interval=4, eval_interval=4),
        shards,
        tmp_path,
        bytes_per_token=3.0,
        hooks=FaultHooks(corrupt_loss=nan_at_step_5),
    )
    assert r.skipped_steps == 1 and r.rollbacks == 0 and math.isfinite(r.val_loss)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skips = [e for e in events if e.get("event") == "grad_skip"]
    assert len(skips) == 1 and skips[0]["step"] == 6 and not math.isfinite(skips[0]["grad_norm"])


def test_loss_spike_rolls_back_and_skips_the_batches(shards, tmp_path):
    per_step = 512 // SEQ_LEN
    bad = (12 * per_step, 15 * per_step)  # the batches of steps 13, 14, 15

    def garbage(positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
        hit = (positions >= bad[0]) & (positions < bad[1])
        rows = rows.copy()
        # uniform random targets: no model gets below ln(256) = 5.55 nats on them
        rows[hit] = np.random.default_rng(int(positions[0])).integers(0, VOCAB, size=rows[hit].shape)
        return rows

    p = params(
        max_steps=18, ckpt_interval=10, eval_interval=5, spike_factor=1.2, spike_patience=3, spike_window=5, lr=1e-2
    )
    r = train(p, shards, tmp_path, bytes_per_token=3.0, hooks=FaultHooks(corrupt_rows=garbage))
    assert (r.rollbacks, r.skipped_batches) == (1, 3), r
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rollback = [e for e in events if e.get("event") == "rollback"]
    assert rollback[0]["step"] == 15 and rollback[0]["to_step"] == 10
    assert [tuple(x) for x in rollback[0]["skip_ranges"]] == [(s * per_step, (s + 1) * per_step) for s in (12, 13, 14)]
    assert r.steps == 18 and r.tokens_seen == 18 * 512
    assert ckpt.load_meta(str(tmp_path), 18)["seq_pos"] == (18 + 3) * per_step  # skipped data is not reused
    assert r.val_loss < 0.7 * r.unigram_loss


def test_document_masking_trains(shards, tmp_path):
    r = train(
        params(max_steps=6, ckpt_interval=5, eval_interval=5, doc_mask=True), shards, tmp_path, bytes_per_token=3.0
    )
    assert math.isfinite(r.val_loss) and r.val_loss < r.unigram_loss


def golden_run(shards_dir: Path, out: Path) -> list[float]:
    p = params(max_steps=10, ckpt_interval=5, eval_interval=5, seed=11, tokens_per_step=1024)  # accumulation 2
    train(p, shards_dir, out, bytes_per_token=3.0)
    losses = step_losses(out)
    return [losses[s] for s in sorted(losses)]


def test_golden_tiny_loss(shards, tmp_path):
    expected = json.loads(GOLDEN.read_text())
    assert golden_run(shards, tmp_path) == pytest.approx(expected["losses"], abs=2e-3)


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(shards, tmp_path):
    p = params(max_steps=4, ckpt_interval=2, eval_interval=2, micro_batch_size=8, tokens_per_step=1024)
    single = train(p, shards, tmp_path / "single", bytes_per_token=3.0)  # accumulation 2
    job = TrainJob(params=p, shards_dir=str(shards), out_dir=str(tmp_path / "ddp"), bytes_per_token=3.0)
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "tasks.train",
            str(job_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    a, b = step_losses(tmp_path / "single"), step_losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    assert result["val_loss"] == pytest.approx(single.val_loss, abs=1e-4)
    assert result["tokens_seen"] == single.tokens_seen
    # rank 0 writes what an in-process run writes, once
    listing = {e.name for e in (tmp_path / "single").iterdir()}
    assert {e.name for e in (tmp_path / "ddp").iterdir()} == listing >= {"metrics.jsonl", "loss.png", "sample.txt"}
    assert ckpt.list_checkpoints(str(tmp_path / "ddp")) == ckpt.list_checkpoints(str(tmp_path / "single")) == [2, 4]
    assert ckpt.load_meta(str(tmp_path / "ddp"), 4)["world_size"] == 2
    assert len(ckpt.load_object(str(tmp_path / "ddp"), 4, "rng")) == 2  # every rank's RNG state
    rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len(set(rows))  # no row written twice
    assert "[rank 0] tasks.train" in proc.stderr and "[rank 1] tasks.train INFO" not in proc.stderr


def test_process_count_must_not_change_the_batch():
    """`gpus` is not part of the version id: N processes must train on the batch of one."""
    p = params(micro_batch_size=4, tokens_per_step=1024)  # 4 x 64 tokens: 4 micro-batches in one process
    assert p.model_copy(update={"gpus": 4}).version_params() == p.version_params()
    assert [grad_accumulation(p, SEQ_LEN, n) for n in (1, 2, 4)] == [4, 2, 1]
    for n in (1, 2, 4):
        check_processes(p, SEQ_LEN, n)
    with pytest.raises(ValueError, match=r"tokens_per_step=1024 is 16 sequences .* but 12 in 3; make .* = 768"):
        check_processes(p, SEQ_LEN, 3)
    with pytest.raises(ValueError, match="but 32 in 8"):
        check_processes(p, SEQ_LEN, 8)
    with pytest.raises(ValidationError):
        TrainParams(gpus=0)


if __name__ == "__main__":  # regenerate the golden losses
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root / "train", 600, seed=1)
        write_split(root / "val", 60, seed=2)
        losses = golden_run(root, root / "out")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(
        json.dumps(
            {
                "preset": "tiny",
                "vocab_size": VOCAB,
                "seq_len": SEQ_LEN,
                "device": "cpu",
                "dtype": "float32",
                "losses": losses,
            },
            indent=2,
        )
        + "\n"
    )
    print(GOLDEN, losses)
