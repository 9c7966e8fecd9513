"""Decontaminate presets, directory/glob paths, whole-item matching of short items, every owner named, recall."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from storage import paths
from storage.documents import Document
from storage.stats import StageStats
from tasks.decontaminate import CUTS_FIELD, DecontaminateParams, ensure_index, index_version, process
from tasks.decontaminate import benchmarks as bm
from tasks.decontaminate.ngram_index import load_index
from tasks.text import ngram_hashes, rolling_ngram_hashes, window_hashes, word_hashes, words
from tests.tasks.test_decontaminate import Sink

PAGE_HEAD = " ".join(f"head{i}" for i in range(40))
PAGE_TAIL = " ".join(f"tail{i}" for i in range(40))
SHORT_Q = "Which planet in our solar system has the most moons?"  # 10 words
CHOICES = ["Earth", "Mars", "Saturn", "Venus"]


@pytest.fixture(autouse=True)
def allowed_roots(tmp_path, monkeypatch):
    """These tests keep benchmark files in tmp_path: make it an allowed root (storage.paths.allowed_roots)."""
    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, str(tmp_path))


def run(params, root, texts):
    index = load_index(ensure_index(params, str(root), index_version(params))["dir"])
    stats = StageStats()
    sink = Sink(stats)
    kept = list(process([Document(id=f"d{i}", text=t) for i, t in enumerate(texts)], params, stats, sink, index))
    return kept, sink.rows, stats


def page(text):
    return f"{PAGE_HEAD}\n{text}\n{PAGE_TAIL}"


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one(tmp_path, fmt, rows, name="b.jsonl", **kw):
    return bm.BenchmarkFile(name="b", path=jsonl(tmp_path / name, rows), format=fmt, **kw)


# ---------------------------------------------------------------- presets


def test_public_layouts_index_question_plus_correct_answer(tmp_path):
    (tmp_path / "astronomy_test.csv").write_text(f'"{SHORT_Q}",Earth,Mars,Saturn,Venus,C\n')
    mmlu = list(bm.file_items(bm.BenchmarkFile(name="m", path=str(tmp_path / "astronomy_test.csv"), format="mmlu")))
    assert mmlu == [bm.BenchmarkItem("0", f"{SHORT_Q}\nSaturn", (SHORT_Q, "\n".join([SHORT_Q, *CHOICES])))]
    hs = one(
        tmp_path,
        "hellaswag",
        [
            {
                "ind": 24,
                "ctx": "A man is sitting on a roof. he",
                "label": "3",
                "endings": ["is using wrap", "is ripping level", "is holding a rubik", "starts pulling up roofing"],
            }
        ],
    )
    assert next(bm.file_items(hs))[:2] == ("24", "A man is sitting on a roof. he\nstarts pulling up roofing")
    arc = one(
        tmp_path,
        "arc",
        [
            {
                "id": "Mercury_7",
                "answerKey": "B",
                "question": {
                    "stem": SHORT_Q,
                    "choices": [{"text": c, "label": lab} for c, lab in zip(CHOICES, "ABCD")],
                },
            }
        ],
    )
    assert next(bm.file_items(arc))[:2] == ("Mercury_7", f"{SHORT_Q}\nMars")
    gsm = one(tmp_path, "gsm8k", [{"question": "Q?", "answer": "2+2=<<2+2=4>>4\n#### 4"}])
    assert next(bm.file_items(gsm)).texts() == ("Q?\n2+2=<<2+2=4>>4\n#### 4", "Q?\n4", "Q?")
    he = one(
        tmp_path,
        "humaneval",
        [{"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n"}],
    )
    assert next(bm.file_items(he)).texts() == ("def f():\n  return 1", "def f():")
    hf_mmlu = one(tmp_path, "mmlu", [{"question": SHORT_Q, "choices": CHOICES, "answer": 2, "subject": "astronomy"}])
    assert next(bm.file_items(hf_mmlu)).text == f"{SHORT_Q}\nSaturn"


def test_llm_foundry_layouts_read_options_from_the_query_and_drop_labels(tmp_path):
    mmlu = one(
        tmp_path,
        "mmlu",
        [
            {
                "query": f"Question: {SHORT_Q}\n(A) Earth (B) Mars (C) Saturn (D) Venus\n",
                "choices": ["A", "B", "C", "D"],
                "gold": 2,
            }
        ],
    )
    assert next(bm.file_items(mmlu)).text == f"{SHORT_Q}\nSaturn"
    csqa = one(
        tmp_path,
        "arc",
        [{"query": f"Question: {SHORT_Q}\nChoices:\nA. Earth\nB. Mars\nAnswer:", "choices": ["A", "B"], "gold": 1}],
    )
    assert next(bm.file_items(csqa)).texts()[:2] == (f"{SHORT_Q}\nMars", SHORT_Q)
    hella = one(
        tmp_path,
        "hellaswag",
        [
            {
                "query": "Roof shingle removal: A man is sitting on a roof. He",
                "choices": ["is using wrap.", "starts pulling up roofing."],
                "gold": 1,
            }
        ],
    )
    texts = next(bm.file_items(hella)).texts()
    assert texts[0] == "A man is sitting on a roof. He\nstarts pulling up roofing."
    assert "Roof shingle removal: A man is sitting on a roof. He\nstarts pulling up roofing." in texts
    wino = one(
        tmp_path,
        "llm_foundry",
        [
            {
                "context_options": [
                    "Sarah was a much better surgeon than Maria so Sarah",
                    "Sarah was a much better surgeon than Maria so Maria",
                ],
                "continuation": "always got the harder cases.",
                "gold": 0,
            }
        ],
    )
    assert next(bm.file_items(wino)).texts() == (
        "Sarah was a much better surgeon than Maria so Sarah always got the harder cases.",
        "Sarah was a much better surgeon than Maria so always got the harder cases.",
    )
    jeo = one(
        tmp_path,
        "llm_foundry",
        [
            {
                "context": "WORLD HISTORY: This Navy commander flew to the South Pole",
                "continuation": "Richard Byrd",
                "category": "world_history",
            }
        ],
    )
    assert next(bm.file_items(jeo)).text == "This Navy commander flew to the South Pole Richard Byrd"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: one(t, "arc", [{"text": "x"}]), r"b.jsonl\) row 0: fits no 'arc' layout \(the row has \['text'\]"),
        (
            lambda t: one(t, "mmlu", [{"question": "q", "choices": ["a", "b"], "answer": 5}]),
            r"row 0 field 'answer' is out of range for 2 choices",
        ),
        (
            lambda t: one(
                t, "arc", [{"answerKey": "E", "question": {"stem": "q", "choices": [{"text": "a", "label": "A"}]}}]
            ),
            r"row 0: answerKey is none of the 1 choice labels",
        ),
    ],
)
def test_preset_rows_that_fit_no_layout_name_the_file_row_and_fix(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        list(bm.file_items(make(tmp_path)))


SECRET = "s3cr3t-token-value"


@pytest.mark.parametrize(
    "fmt, row",
    [
        ("mmlu", {"question": "q", "choices": ["a", "b"], "answer": SECRET}),
        ("hellaswag", {"ctx": "c", "endings": ["a", "b"], "label": SECRET}),
        ("arc", {"answerKey": SECRET, "question": {"stem": "q", "choices": [{"text": "a", "label": "A"}]}}),
        ("llm_foundry", {"query": "q", "choices": ["a", "b"], "gold": SECRET}),
    ],
)
def test_bad_rows_are_named_without_their_content(tmp_path, fmt, row):
    """Issue 11: an error names the file, the row and the key, never a value of the row."""
    with pytest.raises(ValueError, match=r"b.jsonl\) row 0") as err:
        list(bm.file_items(one(tmp_path, fmt, [row])))
    assert SECRET not in str(err.value)


def test_mmlu_csv_answer_column_is_not_echoed(tmp_path):
    (tmp_path / "m.csv").write_text(f"q,a,b,c,d,{SECRET}\n")
    with pytest.raises(ValueError, match=r"m.csv\) row 0: the answer column is not a letter A-D") as err:
        list(bm.file_items(bm.BenchmarkFile(name="m", path=str(tmp_path / "m.csv"), format="mmlu")))
    assert SECRET not in str(err.value)


def test_format_and_fields_must_agree():
    with pytest.raises(ValidationError, match="format 'jsonl' needs `fields`"):
        bm.BenchmarkFile(name="x", path="x.jsonl", format="jsonl")
    with pytest.raises(ValidationError, match="`fields` is for plain formats; preset 'mmlu'"):
        bm.BenchmarkFile(name="x", path="x.csv", format="mmlu", fields=["q"])
    with pytest.raises(ValidationError, match="min_words 14 > n 13"):
        DecontaminateParams(
            humaneval=False, benchmarks=[bm.BenchmarkFile(name="x", path="x.csv", format="mmlu", min_words=14)]
        )


# ---------------------------------------------------------------- directory / glob paths


def test_directory_and_glob_paths_take_every_subject_file(tmp_path):
    d = tmp_path / "mmlu"
    d.mkdir()
    for subject in ("astronomy", "virology", "anatomy"):
        (d / f"{subject}_test.csv").write_text(
            f'"{SHORT_Q} ({subject} edition, part one)",a,b,c,d,A\n'
            f'"{SHORT_Q} ({subject} edition, part two)",a,b,c,d,B\n'
        )
    (d / "README.md").write_text("not a benchmark file")
    for path in (str(d), str(d / "*_test.csv")):
        items = list(bm.file_items(bm.BenchmarkFile(name="mmlu", path=path, format="mmlu")))
        assert [i.id for i in items] == [
            "anatomy_test/0",
            "anatomy_test/1",
            "astronomy_test/0",
            "astronomy_test/1",
            "virology_test/0",
            "virology_test/1",
        ]
    spec = bm.BenchmarkFile(name="mmlu", path=str(d), format="mmlu")
    params = DecontaminateParams(humaneval=False, benchmarks=[spec])
    v = index_version(params)
    (d / "college_test.csv").write_text(f'"{SHORT_Q} (college)",a,b,c,d,A\n')
    assert index_version(params) != v  # an added subject file changes the index
    _, rejected, _ = run(params, tmp_path / "r", [page(f"{SHORT_Q} (virology edition, part two)\nb")])
    assert rejected[0][2]["item"] == "virology_test/1"
    with pytest.raises(ValueError, match=r"benchmark 'g' \(.*nothing\*.csv\): the glob matches no file"):
        bm.resolve_paths(bm.BenchmarkFile(name="g", path=str(tmp_path / "nothing*.csv"), format="mmlu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"the directory holds no .jsonl"):
        bm.resolve_paths(bm.BenchmarkFile(name="g", path=str(tmp_path / "empty"), format="mmlu"))


# ---------------------------------------------------------------- whole-item matching, owners


def test_short_question_plus_answer_is_caught_whole_and_its_fragments_are_not(tmp_path):
    """10-word question, answer the third choice: no 13-gram of the old question+choices text is in the copy."""
    (tmp_path / "t.csv").write_text(f'"{SHORT_Q}",Earth,Mars,Saturn,Venus,C\n"Red planet?",Mars,Earth,Moon,Sun,A\n')
    spec = bm.BenchmarkFile(name="mmlu", path=str(tmp_path / "t.csv"), format="mmlu")
    params = DecontaminateParams(humaneval=False, benchmarks=[spec])
    q = SHORT_Q.split()
    kept, rejected, stats = run(
        params,
        tmp_path / "r",
        [
            page(f"{SHORT_Q}\nSaturn"),
            page(f"Quiz time! {SHORT_Q.upper()}"),
            page(" ".join(q[1:])),
            page(" ".join(q[:-1]) + " zzz"),
            page(" ".join(q[:5] + ["really"] + q[5:])),
            page("Red planet? Mars"),
        ],
    )
    assert [d.id for d in kept] == ["d2", "d3", "d4", "d5"]  # fragments, an inserted word, the 3-word item
    assert [(d.id, detail["item"], detail["ngram"]) for d, _, detail in rejected] == [
        ("d0", "0", " ".join(words(f"{SHORT_Q} Saturn"))),
        ("d1", "0", " ".join(words(SHORT_Q))),
    ]
    summary = ensure_index(params, str(tmp_path / "r"), index_version(params))["benchmarks"][0]
    # item 0 is not "whole only": question + its four choices is 14 words
    assert (summary["items_too_short"], summary["items_whole"], summary["items_indexed"]) == (1, 0, 1)
    # the benchmark's own min_words: 3 indexes the short item too (and n: 9 makes the 10-word question n-grams)
    spec3 = spec.model_copy(update={"min_words": 3, "n": 9})
    kept, rejected, _ = run(
        DecontaminateParams(humaneval=False, benchmarks=[spec3]),
        tmp_path / "r3",
        [page("Red planet? Mars"), page(" ".join(q[1:]))],
    )
    assert not kept and [detail["item"] for _, _, detail in rejected] == ["1", "0"]


def test_every_item_owning_a_matched_ngram_is_named_most_matched_first(tmp_path):
    shared = "read the passage below about the history of the printing press in europe and answer"
    rows = [
        {"id": f"q{i}", "q": f"{shared} question {i}: {topic}"}
        for i, topic in enumerate(
            ["who built the first press?", "when did printing reach england and which city had the first shop there?"]
        )
    ]
    spec = bm.BenchmarkFile(
        name="t", path=jsonl(tmp_path / "t.jsonl", rows), format="jsonl", fields=["q"], id_field="id"
    )
    params = DecontaminateParams(humaneval=False, benchmarks=[spec])
    kept, rejected, stats = run(params, tmp_path / "r", [page(rows[1]["q"])])
    detail = rejected[0][2]
    assert (detail["item"], detail["items"], detail["items_total"]) == ("q1", ["t:q1", "t:q0"], 2)
    assert stats.counters["item.t.q0"] == stats.counters["item.t.q1"] == 1


def test_cut_removes_exactly_a_whole_matched_short_item(tmp_path):
    (tmp_path / "t.csv").write_text(f'"{SHORT_Q}",Earth,Mars,Saturn,Venus,C\n')
    params = DecontaminateParams(
        humaneval=False,
        action="cut",
        cut_margin_chars=0,
        min_piece_chars=1,
        benchmarks=[bm.BenchmarkFile(name="mmlu", path=str(tmp_path / "t.csv"), format="mmlu")],
    )
    text = page(f"{SHORT_Q}\nSaturn")
    kept, _, _ = run(params, tmp_path / "r", [text])
    s = text.index("Which")
    e = text.index("Saturn") + len("Saturn")
    assert json.loads(kept[0].meta[CUTS_FIELD.name]) == [{"start": s, "end": e, "items": ["mmlu:0"]}]
    assert kept[0].text == f"{PAGE_HEAD}\n\n{PAGE_TAIL}"


def test_window_hashes_equal_rolling_hashes():
    toks = words("one two three four five six seven eight nine ten eleven")
    wh = word_hashes(toks, len(toks))
    for n in (1, 4, 11):
        starts = np.arange(len(toks) - n + 1)
        assert np.array_equal(window_hashes(wh, starts, n), rolling_ngram_hashes(wh, n))
    assert window_hashes(wh, np.array([2]), 9)[0] == ngram_hashes(toks[2:], 9)[0]
    assert len(window_hashes(wh, np.empty(0, np.int64), 3)) == 0


# ---------------------------------------------------------------- real data: recall, false drops


def test_real_eval_sets_planted_in_real_pages_recall_and_false_drops(tmp_path, shared_data):
    """Every llm-foundry eval set + HumanEval, 40 sampled items each, planted as question + correct answer
    into real page text: recall >= 0.99 per benchmark; fragments, paraphrases and untouched pages stay."""
    from bench.decontaminate import (
        benchmark_specs,
        eval_copies,
        host_pages,
        ours_engine,
        planted_recall,
        planted_sets,
        untouched_pages,
    )

    evals = shared_data / "evals" / "llm_foundry_local_data"
    params = DecontaminateParams(benchmarks=benchmark_specs(evals))
    index = load_index(ensure_index(params, str(tmp_path), index_version(params))["dir"])
    flag = ours_engine(params, index)
    sets = planted_sets(eval_copies(evals), host_pages(), 40, params.n, params.min_words, seed=1)
    result = planted_recall(flag, sets)
    assert len(result) == 17
    low = {b: r["recall"] for b, r in result.items() if r["recall"] < 0.99}
    assert not low, low
    assert all(r["planted"] >= 25 for r in result.values()), result
    assert not {
        b: (r["fragments_caught"], r["paraphrases_caught"])
        for b, r in result.items()
        if r["fragments_caught"] or r["paraphrases_caught"]
    }
    web = untouched_pages()["web"]
    assert len(web) > 600 and len(flag(web)) <= 0.005 * len(web)
