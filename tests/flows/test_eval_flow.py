"""eval flow under a Prefect test server: the tokenize version's val documents (bits per byte and the generated
continuation task), a task file and a held-out file scored for the final checkpoint and a milestone; results in
the manifest, `results.json`, `pretrain inspect eval` and `pretrain compare`; bad config names its key.

A mix version of this repository's prose is written by hand, then the real tokenize and train flows run (a
400-piece vocabulary, the tiny preset for 20 CPU steps), so the lineage is the pipeline's own.
"""

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from flows.cli import main
from flows.eval import eval_flow
from flows.stage import task_runner
from flows.tokenization import tokenization_flow
from flows.train import train_flow
from storage.documents import Document
from storage.manifest import load_manifest
from tasks.eval import VAL_TEXT, EvalParams
from tasks.eval.heldout import CONTINUATION_TASK
from tasks.eval.report import table
from tasks.tokenization import TokenizeParams
from tasks.train import TrainParams
from tests.tiny import tiny_train_params

ROOT = Path(__file__).resolve().parents[2]
# the training text: fixed sentences in a seeded order (repository files changed with every docs edit, and
# with them how many plain-word continuation spans the val split held: the 4-way chance below)
SENTENCES = [
    "The pipeline reads a crawl and writes one versioned directory per stage.",
    "Each stage keeps the documents it accepts and records why it dropped the others.",
    "A failed run can be started again and the finished stages are reused.",
    "The language stage keeps pages whose language score passes the threshold.",
    "Quality filters drop pages with too few words or too many repeated lines.",
    "Near duplicates are found with minhash signatures and locality sensitive hashing.",
    "Benchmark questions are removed when a page shares a long phrase with them.",
    "The mix stage samples domains so that each one reaches its target weight.",
    "A tokenizer is trained on a sample and the token sequences are packed into shards.",
    "The small model learns to predict the next token and reports its loss.",
    "Evaluation measures bits per byte on held out text and accuracy on choices.",
    "Engineers open the output of any stage to see what was kept and what was dropped.",
]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def chunks(n_words: int = 90) -> list[str]:
    rng = random.Random(0)
    words = " ".join(rng.choice(SENTENCES) for _ in range(1500)).split(" ")
    return [" ".join(words[i : i + n_words]) for i in range(0, len(words) - n_words, n_words)]


def train_params(**kw) -> TrainParams:
    return tiny_train_params(**{"max_steps": 20, "warmup_steps": 2, "eval_interval": 10, "ckpt_interval": 10, **kw})


@pytest.fixture
def trained(prefect_backend, data_root, make_version) -> str:
    docs = [Document(id=f"d{i}", text=t, meta={"repeat": 0}) for i, t in enumerate(chunks())]
    make_version(data_root, "mix", [docs], extra=[pa.field("repeat", pa.int32())], version="mix1")
    tokenization_flow.with_options(task_runner=task_runner(1))(
        params=TokenizeParams(vocab_size=400, seq_len=64, val_fraction=0.2), data_root=str(data_root)
    )
    return train_flow(params=train_params(), data_root=str(data_root))


def write_task(path: Path) -> Path:
    rows = [
        {"query": "The stage frame writes the manifest", "choices": ["last.", "banana."], "gold": 0},
        {"query": "Each stage output is a versioned", "choices": ["purple.", "directory."], "gold": 1},
        {"query": "def forward(self", "choices": [", x):", " zebra"], "gold": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_scores_the_final_checkpoint_and_a_milestone(trained, data_root, tmp_path, capsys):
    task = write_task(tmp_path / "arc_easy.jsonl")
    held = tmp_path / "held.txt"
    held.write_text((ROOT / "storage" / "checkpoints.py").read_text())
    params = EvalParams(
        tasks=[{"path": str(task)}],
        heldout=[{"path": str(held), "name": "code"}],
        val_documents=40,
        val_continuation_items=20,
        steps=[10],
        batch_size=4,
        device="cpu",
    )
    version = eval_flow(params=params, data_root=str(data_root))
    m = load_manifest(str(data_root), "eval", version)
    assert m.inputs["train"] == trained and m.extras["train_version"] == trained and len(m.inputs["files"]) == 12
    steps = [(c["step"], c["final"]) for c in m.extras["checkpoints"]]
    assert steps == [(10, False), (20, True)]
    final = m.extras["checkpoints"][-1]
    assert set(final["tasks"]) == {"arc_easy", CONTINUATION_TASK} and set(final["bpb"]) == {"code", VAL_TEXT}
    assert final["tasks"]["arc_easy"]["n"] == 3 and final["tasks"]["arc_easy"]["chance"] == 0.5
    cont = final["tasks"][CONTINUATION_TASK]
    assert cont["chance"] == 0.25 and 0 < cont["n"] <= 20 and 0.0 <= cont["acc"] <= 1.0
    assert 0 < final["bpb"][VAL_TEXT]["bpb"] < 10 and final["core"] is not None
    assert m.stats.counters["items.arc_easy"] == 3 and m.stats.counters[f"items.{CONTINUATION_TASK}"] == cont["n"]
    assert m.stats.docs_in == m.stats.docs_out == 0  # items are not documents (the run summary shows `-`)
    rows = table(m)  # the `eval-scores` artifact: 2 steps x (2 tasks + 2 texts + CORE), uniform columns
    assert len(rows) == 10 and len({tuple(r) for r in rows}) == 1
    results = json.loads((data_root / "eval" / version / "results.json").read_text())
    assert results == m.extras["checkpoints"]
    # the trained model predicts its own held-out text better at step 20 than at step 10
    first = m.extras["checkpoints"][0]
    assert final["bpb"][VAL_TEXT]["bpb"] < first["bpb"][VAL_TEXT]["bpb"]
    # batch size and device are not part of the version: the same scores, reused
    assert eval_flow(params=params.model_copy(update={"batch_size": 16}), data_root=str(data_root)) == version
    # an edited task file at the same path is scored again (its content id is an input)
    task.write_text(task.read_text().replace("banana", "cherry"))
    edited = eval_flow(params=params, data_root=str(data_root))
    assert edited != version and load_manifest(str(data_root), "eval", edited).inputs["files"] != m.inputs["files"]
    task.write_text(task.read_text().replace("cherry", "banana"))
    assert eval_flow(params=params, data_root=str(data_root)) == version
    capsys.readouterr()
    assert main(["inspect", "eval", "--version", version, "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "step 10" in out and "step 20 (final)" in out and "CORE" in out and "bits/byte" in out

    # a second recipe: another train seed
    other = train_flow(params=train_params(seed=7), data_root=str(data_root))
    other_eval = eval_flow(params=params.model_copy(update={"steps": []}), data_root=str(data_root))
    assert main(["compare", version, other, "--data-root", str(data_root)]) == 0  # an eval and a train version
    out = capsys.readouterr().out
    assert f"A: eval@{version} (train@{trained})" in out and f"B: eval@{other_eval} (train@{other})" in out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "seed: 1337 -> 7" in lines["train"] and "steps: [10] -> []" in lines["eval"]
    assert "same" in lines["tokenize"] and "same" in lines["mix"]
    assert "| acc" in out and "B - A" in out
    print(out)
    assert main(["compare", version, "0123456789ab", "--data-root", str(data_root)]) == 1


def test_missing_files_and_steps_name_their_key(trained, data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eval\.tasks\[0\]\.path"):
        eval_flow(params=EvalParams(tasks=[{"path": str(tmp_path / "nope.jsonl")}]), data_root=str(data_root))
    with pytest.raises(FileNotFoundError, match=r"eval\.heldout\[0\]\.path: .*nope\.txt does not exist"):
        eval_flow(params=EvalParams(heldout=[{"path": str(tmp_path / "nope.txt")}]), data_root=str(data_root))
    with pytest.raises(ValueError, match=r"eval\.steps: .* kept checkpoints \[10, 20\], not \[15\]"):
        eval_flow(params=EvalParams(steps=[15]), data_root=str(data_root))
    with pytest.raises(ValueError, match="nothing to score"):
        EvalParams(val_documents=0, val_continuation_items=0)
    assert not (data_root / "eval").exists() or not any((data_root / "eval").glob("*/manifest.json"))
