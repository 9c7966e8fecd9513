"""The eval stage's inputs and params (tasks/eval/__init__.py, tasks/eval/heldout.py): held-out files in every
format, the generated continuation task, config errors that name their key, and the real eval sets and
WikiText-2 from ../shared/data scored end to end by a small random model (skipped where that folder is absent)."""

import gzip
import json
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.gpt import GPT, GPTConfig
from models.tokenizer import load_tokenizer, train_tokenizer
from storage.stats import StageStats
from tasks.eval import EvalParams, fit_items, score_checkpoint
from tasks.eval.heldout import CONTINUATION_TASK, continuation_task, read_texts
from tasks.eval.tasks import load_task

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WORDS = "river stone light garden market paper window silver number engine forest letter music winter".split()


def doc(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_continuation_items_hold_the_right_span_and_are_seeded():
    texts = [doc(s) for s in range(3)]  # 2 spans of 56 words each
    task = continuation_task(texts, 100, seed=1)
    assert task.name == CONTINUATION_TASK and len(task.items) == 6 and task.chance == 0.25
    for k, item in enumerate(task.items):
        words = texts[k // 2].split()[56 * (k % 2) :]
        assert item.contexts == [" ".join(words[:48])] * 4
        assert item.continuations[item.gold] == " " + " ".join(words[48:56])
        assert len(set(item.continuations)) == 4
    assert continuation_task(texts, 100, seed=1).items == task.items
    assert continuation_task(texts, 100, seed=2).items != task.items
    assert len(continuation_task(texts, 2, seed=1).items) == 2
    # two spans: 2-way items; code-like words never make a choice span
    two = continuation_task([doc(0, 112)], 10, seed=0)
    assert [len(i.continuations) for i in two.items] == [2, 2] and two.chance == 0.5
    assert not continuation_task([doc(0, 48) + " x[0]=1; " * 8 + doc(1)], 10, 0).items[0].continuations[0].count("[")


def test_heldout_files_in_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("one document\n\nstill the same one\n")
    assert read_texts(str(tmp_path / "a.txt"), "k") == ["one document\n\nstill the same one\n"]
    rows = [{"text": "first"}, {"text": "  "}, {"text": "second"}, {"text": "third"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_texts(str(tmp_path / "b.jsonl"), "k", limit=2) == ["first", "second"]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert read_texts(str(tmp_path / "c.jsonl.gz"), "k") == ["zipped"]
    with pytest.raises(FileNotFoundError, match=r"eval\.heldout\[3\]\.path: held-out file .*nope\.txt"):
        read_texts(str(tmp_path / "nope.txt"), "eval.heldout[3].path")
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(ValueError, match="held-out files are .txt"):
        read_texts(str(tmp_path / "d.csv"), "k")
    (tmp_path / "e.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:1: expected a JSON object with a `text` string"):
        read_texts(str(tmp_path / "e.jsonl"), "k")


def test_params_refuse_what_cannot_run():
    with pytest.raises(ValidationError, match="nothing to score"):
        EvalParams(val_documents=0, val_continuation_items=0)
    with pytest.raises(ValidationError, match="val_continuation_items must be <= eval.val_documents"):
        EvalParams(val_documents=10)
    with pytest.raises(ValidationError, match=r"eval\.heldout: names \['tokenize_val'\] repeat"):
        EvalParams(heldout=[{"path": "a/tokenize_val.txt"}])
    with pytest.raises(ValidationError, match=r"eval\.tasks: names \['arc_easy'\] repeat"):
        EvalParams(tasks=[{"path": "a/arc_easy.jsonl"}, {"path": "b/arc_easy.jsonl.gz"}])
    with pytest.raises(ValidationError):
        EvalParams(tasks=[{"path": "x.jsonl", "limt": 3}])  # typo: extra keys are refused
    ok = EvalParams(tasks=[{"path": "a/arc_easy.jsonl"}, {"path": "b/arc_easy.jsonl", "name": "arc2"}])
    assert "batch_size" not in ok.version_params() and "device" not in ok.version_params()


@pytest.mark.skipif(not (DATA / "evals").is_dir(), reason="../shared/data is not here")
@pytest.mark.usefixtures("torch_one_thread")
def test_real_eval_sets_and_wikitext_score_near_chance(tmp_path):
    wiki = (DATA / "quality" / "wikitext2" / "valid.txt").read_text()[:20_000]
    path = tmp_path / "t.model"
    train_tokenizer(wiki.splitlines(), path, vocab_size=500)
    tok = load_tokenizer(path)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, seq_len=128, n_layer=2, n_head=2, n_embd=64)).eval()
    local, fixtures = DATA / "evals" / "llm_foundry_local_data", DATA / "evals" / "llm_foundry_test_fixtures"
    files = [local / f"{n}.jsonl" for n in ("arc_easy", "arc_challenge", "piqa", "winogrande", "copa", "boolq")]
    files += [local / "lambada_openai.jsonl", fixtures / "hellaswag_small.jsonl", fixtures / "mmlu_small.jsonl"]
    stats = StageStats()
    tasks = [fit_items(load_task(f, limit=8), tok, 128, stats) for f in files]
    assert sum(stats.counters.values()) == 8 * 7 + 4 * 2  # items.<task> + items_too_long.<task>
    params = EvalParams(val_documents=0, val_continuation_items=0, heldout=[{"path": "x.txt"}], batch_size=16)
    r = score_checkpoint(model, tok, tasks, {"wikitext2": [wiki[:5000]]}, params, torch.device("cpu"))
    assert set(r["tasks"]) == {t.name for t in tasks} and r["tasks"]["lambada_openai"]["chance"] == 0.0
    assert all(0.0 <= s["acc"] <= 1.0 and 0 < s["n"] <= 8 for s in r["tasks"].values())
    # a random model: several bits per byte, CORE near 0 (chance)
    assert r["bpb"]["wikitext2"]["bpb"] > 2 and -0.6 < r["core"] < 0.6
