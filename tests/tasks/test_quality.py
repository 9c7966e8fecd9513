"""Quality stage: heuristic verdicts per language, every drop reason, thresholds, the classifier recipe."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.utils.word_tokenizers import load_word_tokenizer

from storage.documents import Document
from storage.stats import StageStats
from tasks.quality import (
    EMPTY_TEXT,
    QUALITY_SCORE_LOW,
    SCORE_SCHEMA,
    TEXT_TOO_LONG,
    FilterJob,
    QualityParams,
    ScoreJob,
    filter_documents,
    score_documents,
    top_fraction_threshold,
)
from tasks.quality.classifier import (
    QualityClassifierParams,
    TooFewExamples,
    classification_metrics,
    classifier_shortfall,
    classifier_text,
    detokenize_wikitext,
    read_corpus,
    roc_auc,
    train_classifier,
)
from tasks.quality.heuristics import (
    FILTER_NAMES,
    PASS,
    UNDEFINED,
    GopherPaperQualityFilter,
    HeuristicLayer,
    SpacyWordTokenizer,
)

ROOT = Path(__file__).resolve().parents[2]

PROSE = (
    "The town library opened in 1902 with a gift from a local merchant. It held a few thousand books "
    "and a reading room that was warm in winter. Over the following decades the collection grew, and "
    "the building was extended twice to make room for the archive of the local newspaper. Today the "
    "library lends books, films and music, and it runs classes for children and adults. Volunteers "
    "help with the history room, where visitors can read letters and photographs from the early years "
    "of the town. The council pays for most of the costs, and a small trust covers the rest."
)
GERMAN = (
    "Die Bibliothek der Stadt wurde im Jahr 1902 eröffnet. Sie besaß einige tausend Bücher und einen "
    "Lesesaal, der im Winter geheizt wurde. In den folgenden Jahrzehnten wuchs die Sammlung, und das "
    "Gebäude wurde zweimal erweitert. Heute verleiht die Bibliothek Bücher, Filme und Musik. Freiwillige "
    "helfen im Geschichtsraum, wo Besucher Briefe und Fotografien lesen können. Die Stadt bezahlt den "
    "größten Teil der Kosten, eine kleine Stiftung trägt den Rest."
)


class ListRejects:
    def __init__(self, stats):
        self.stats, self.items = stats, []

    def add(self, doc, reason, detail=None, error=False):
        self.stats.drop(reason, error=error)
        self.items.append((doc.id, reason, detail))


@pytest.fixture(scope="module")
def layer():
    return HeuristicLayer(["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"])


def test_tokenizer_matches_datatrove_spacy_tokenizer(demo_ground_truth):
    ours, stock = SpacyWordTokenizer("en"), load_word_tokenizer("en")
    texts = [r["text"] for r in demo_ground_truth[1] if r["language"] == "en"][:12] + [PROSE, "Hi.  Two spaces!  Ok"]
    for text in texts:
        ours.reset()
        assert ours.word_tokenize(text) == stock.word_tokenize(text)
        for line in text.splitlines():
            if line.strip():
                assert len(ours.span_tokenize(line.strip())) == len(stock.span_tokenize(line.strip())), line


def _spacy_words(tok, text):
    return [w for line in text.split("\n") for w in (t[0].strip() for t in tok._spacy_tokens(line.strip())) if w]


def test_composed_tokens_equal_spacy_on_emoticon_soups_and_whitespace():
    """Spans are tokenized alone and cached; a special case straddling a single space (") :)" blocks the
    ":)" match inside the second span) sends the line to spaCy whole. Tokens, offsets, punctuation flags
    and words equal spaCy's on every generated line (real pages: tests/tasks/test_quality_gopher_words.py)."""
    tok = SpacyWordTokenizer("en")
    rng = random.Random(7)
    pieces = list(".,:;!?()[]{}'\"-–—…/\\$%&*+=<>@#_~`^|") + ["a", "b", "I", "n't", "'s", "Mr.", "e.g.", ":)", ";)"]
    pieces += ["<3", "http://x.com", "10.5", "don", "'t", "o", "O", "D", "8", "-_-", "o.O", "(:", "):"]
    spaces = [" ", " ", " ", "  ", "\t", " \t", "\t ", "\u00a0", "\u2028"]
    straddled = 0
    for _ in range(4000):
        n = rng.randint(1, 6)
        words = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 3))) for _ in range(n)]
        line = "".join(w + (rng.choice(spaces) if i < n - 1 else "") for i, w in enumerate(words))
        line = rng.choice(["", " ", "\t"]) + line + rng.choice(["", " "])
        tok.reset()
        expected = tok._spacy_tokens(line)
        straddled += tok._composed_tokens(line) is None
        assert tok._tokens(line) == expected, repr(line)
        assert tok._line_words(line) == [w for w in (t[0].strip() for t in expected) if w], repr(line)
    assert straddled > 0  # the generator does produce lines the composition must hand to spaCy
    text = "Hello :) there.\n\n) :)*. and (: so\n  Mr. Smith's  dog\t's ok :-)\nlast"
    tok.reset()
    assert tok.word_tokenize(text) == _spacy_words(tok, text)


@pytest.mark.parametrize("language", ["en", "de", "fr", "ru"])
def test_plain_words_need_no_tokenizer_call_and_equal_spacy(language):
    """A span with no special case, prefix, suffix or infix is its own one token, taken without a tokenizer
    call; tokens and words still equal spaCy's on lines of words, numbers, affixes and special cases."""
    tok = SpacyWordTokenizer(language)
    assert tok._atomic is not None
    assert tok._atomic("Bibliothek") == ("Bibliothek", 0, False) and tok._atomic("«»") is None
    assert tok._atomic("cannot" if language == "en" else "(x)") is None
    rng = random.Random(11)
    pieces = ["hello", "Straße", "café", "naïve", "Москва", "l", "'", "homme", "cannot", "gonna", "xD", "x", "5"]
    pieces += ["km", "5km", "°C", "-", "—", "n't", "'s", ".", ",", "!", "?", ":)", "(", ")", "«", "»", "…", "U.S."]
    plain = 0
    for _ in range(3000):
        n = rng.randint(1, 8)
        line = " ".join("".join(rng.choice(pieces) for _ in range(rng.randint(1, 3))) for _ in range(n))
        tok.reset()
        plain += sum(tok._atomic(span) is not None for span in line.split())
        expected = tok._spacy_tokens(line)
        assert tok._tokens(line) == expected, repr(line)
        assert tok._line_words(line) == [w for w in (t[0].strip() for t in expected) if w], repr(line)
    assert plain > 1000  # the generator does produce plain words


def test_spacy_loads_without_torch(tmp_path):
    """The quality workers' tokenizer does not import torch (thinc would: ~1.1 s per worker start)."""
    code = (
        "import sys\nfrom tasks.quality.heuristics import SpacyWordTokenizer\n"
        "SpacyWordTokenizer('en').word_tokenize('Hello world.')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import torch\nprint(torch.tensor([1]).sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"  # and torch imports fine afterwards


def test_datatrove_compatible_layer_equals_datatrove_filters(demo_ground_truth):
    """`datatrove_compatible`: every verdict equals datatrove's stock filters chained (real pages:
    tests/tasks/test_quality_gopher_words.py)."""
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    layer = HeuristicLayer(list(FILTER_NAMES), datatrove_compatible=True)
    stock = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]
    texts = [r["text"] for r in demo_ground_truth[1] if r["language"] == "en"] + [CITED, PROSE]
    for text in texts:
        doc, expected = DtDocument(text=text, id=""), {}
        for name, flt in zip(FILTER_NAMES, stock):
            r = flt.filter(doc)
            expected[name] = PASS if r is True else r[1]
        assert layer.evaluate(text, "en") == expected, text[:80]


def test_c4_counts_sentences_only_up_to_the_threshold():
    """C4 needs `min_num_sentences` sentences: lines after the fifth sentence are not split into sentences
    (datatrove splits every kept line), and the verdicts and rewritten text stay datatrove's."""
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.filters import C4QualityFilter

    from tasks.quality.heuristics import CountedC4QualityFilter

    tok = SpacyWordTokenizer("en")
    calls = []
    real = tok.span_tokenize
    tok.span_tokenize = lambda text: calls.append(text) or real(text)
    counted, stock = CountedC4QualityFilter(language=tok), C4QualityFilter()
    long_page = "\n".join(f"Line {i} says one thing. It says a second thing too." for i in range(40))
    few = "One sentence here is fine.\nA second line with words.\nNo end"
    for text in (long_page, few, long_page + "\nlorem ipsum dolor sit amet.", PROSE, CITED):
        a, b = DtDocument(text=text, id=""), DtDocument(text=text, id="")
        tok.reset()
        assert counted.filter(a) == stock.filter(b)
        assert a.text == b.text
    assert len([c for c in calls if c.startswith("Line ")]) == 2 * 3  # 2 sentences a line: 3 lines, 2 pages


def test_english_verdicts(layer, demo_ground_truth):
    assert layer.evaluate(PROSE, "en") == {f: PASS for f in layer.filters}
    spam = {r["defect"]: r["text"] for r in demo_ground_truth[1] if r["category"] == "spam"}
    assert layer.evaluate(spam["repeated_lines"], "en")["gopher_repetition"] == "dup_line_frac"
    assert layer.evaluate(spam["too_short"], "en")["gopher_quality"] == "gopher_short_doc"
    lorem = PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert layer.evaluate(lorem, "en")["c4_quality"] == "lorem_ipsum"


def test_other_languages_are_not_judged_by_english_rules(layer):
    german = layer.evaluate(GERMAN, "de")
    assert german["c4_quality"] is None and german["gopher_quality"] == PASS and german["gopher_repetition"] == PASS
    assert HeuristicLayer(["gopher_quality"]).evaluate(GERMAN, "en")["gopher_quality"] == "gopher_enough_stop_words"
    assert set(layer.evaluate("公共图书馆于一九零二年开放。" * 20, "zh").values()) == {None}


def test_filter_options_override_and_validation():
    lenient = HeuristicLayer(["gopher_quality"], {"gopher_quality": {"min_doc_words": 5}})
    text = "The museum and the library opened with several wonderful exhibitions today."
    assert lenient.evaluate(text, "en")["gopher_quality"] == PASS
    with pytest.raises(ValueError, match="filter_options.gopher_quality"):
        QualityParams(filter_options={"gopher_quality": {"no_such_arg": 1}})
    with pytest.raises(ValueError, match="not both"):
        QualityParams(min_score=0.3, keep_top_fraction=0.5)
    assert QualityParams(keep_top_fraction=0.5).min_score is None
    with pytest.raises(ValueError, match="not evaluated"):
        QualityParams(filters=["gopher_quality"], enforce_filters=["c4_quality"])
    assert "min_score" not in QualityParams().scoring_params()


def test_filter_option_types_are_validated_and_lists_become_tuples():
    """Values of the wrong type failed in the stage with a TypeError naming no key (issue 11, defect 5);
    YAML lists for tuple arguments crashed FineWeb's `str.endswith` at the first document."""
    with pytest.raises(
        ValueError,
        match=r"filter_options\.gopher_quality\.min_doc_words\n.*expected int or null, "
        r"got str",
    ) as err:
        QualityParams(filter_options={"gopher_quality": {"min_doc_words": "abc"}})
    assert "abc" not in str(err.value)
    with pytest.raises(ValueError, match=r"filter_options\.c4_quality\.filter_policy\n.*expected bool, got int"):
        QualityClassifierParams(filter_options={"c4_quality": {"filter_policy": 0}})
    layer = HeuristicLayer(
        ["fineweb_quality", "gopher_repetition"],
        QualityParams(
            filter_options={"fineweb_quality": {"stop_chars": ["."]}, "gopher_repetition": {"top_n_grams": [[2, 0.9]]}}
        ).filter_options,
    )
    assert layer.evaluate(PROSE, "en") == {"gopher_repetition": PASS, "fineweb_quality": PASS}
    assert layer.evaluate(PROSE.replace(".", ";"), "en")["fineweb_quality"] == "line_punct_ratio"


class ConstantModel:
    """TextClassifier fake: P(hq) is NN/100 for a word zzscoreNN in the text (0.5 otherwise)."""

    def __init__(self):
        self.calls = 0

    def predict(self, lines, k=1):
        self.calls += 1
        out = []
        for line in lines:
            marks = [w for w in line.split() if w.startswith("zzscore")]
            p = int(marks[0][7:]) / 100 if marks else 0.5
            out.append([("hq", p), ("lq", 1 - p)])
        return out


def _score_and_filter(docs, params, layer, threshold="min_score"):
    stats = StageStats()
    rows = list(score_documents(docs, ScoreJob(params=params), stats, layer, ConstantModel()))
    if threshold == "min_score":
        threshold = params.min_score
    rejects = ListRejects(stats)
    kept = list(
        filter_documents(
            docs, FilterJob(params=params, scores_dir="-", score_threshold=threshold), stats, rejects, iter(rows)
        )
    )
    return rows, [d.id for d in kept], {i: (r, d) for i, r, d in rejects.items}, stats


def test_every_drop_reason_and_exemption(layer, demo_ground_truth):
    spam = {r["defect"]: r["text"] for r in demo_ground_truth[1] if r["category"] == "spam"}
    docs = [
        Document("good", "zzscore90 " + PROSE),
        Document("low", "zzscore20 " + PROSE),
        Document("empty", "  \n "),
        Document("huge", "word " * 300_000),
        Document("rep", spam["repeated_lines"]),
        Document("short", spam["too_short"]),
        Document("code", spam["too_short"], source="code"),
        Document("de", GERMAN, meta={"language": "de"}),
    ]
    for d in docs:
        d.meta.setdefault("language", "en")
    params = QualityParams(max_chars=1_000_000, min_score=0.5, exempt_sources=["code"])
    rows, kept, dropped, stats = _score_and_filter(docs, params, layer)
    assert kept == ["good", "code", "de"]
    assert {k: v[0] for k, v in dropped.items()} == {
        "low": QUALITY_SCORE_LOW,
        "empty": EMPTY_TEXT,
        "huge": TEXT_TOO_LONG,
        "rep": "gopher_repetition",
        "short": "gopher_repetition",
    }
    assert dropped["short"][1]["failed"]["gopher_quality"] == "gopher_short_doc"  # every failure is recorded
    assert dropped["rep"][1]["reason"] == "dup_line_frac" and dropped["low"][1] == {"score": 0.2, "threshold": 0.5}
    assert rows[7]["quality_score"] is None and stats.counters["unscored.de"] == 1 and stats.counters["exempt"] == 1
    assert stats.counters["heuristic.gopher_repetition.dup_line_frac"] == 1
    assert stats.counters["score_bin.9"] == 1 and stats.docs_dropped == 5


def test_thresholds_change_without_rescoring(layer):
    docs = [Document(str(i), f"zzscore{s} " + PROSE, meta={"language": "en"}) for i, s in enumerate([10, 50, 70, 90])]
    rows, kept, _, _ = _score_and_filter(docs, QualityParams(min_score=0.5), layer)
    assert kept == ["1", "2", "3"]
    # same cached rows, other thresholds: the boundary keeps score == threshold
    _, kept, _, _ = _score_and_filter(docs, QualityParams(min_score=0.7), layer)
    assert kept == ["2", "3"]
    _, kept, dropped, _ = _score_and_filter(docs, QualityParams(min_score=None, enforce_filters=[]), layer)
    assert kept == ["0", "1", "2", "3"]


def test_keep_top_fraction_threshold(tmp_path):
    rows = [
        {
            "id": str(i),
            "source": "web",
            "language": "en",
            "input_error": None,
            "quality_score": s,
            "heuristic_gopher_repetition": PASS,
            "heuristic_gopher_quality": "gopher_short_doc" if i == 0 else PASS,
            "heuristic_c4_quality": PASS,
            "heuristic_fineweb_quality": None,
        }
        for i, s in enumerate([0.99, 0.1, 0.2, 0.3, 0.4, 0.6])
    ]
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA), path)
    # the heuristic failure (0.99) is not eligible; top 40% of the other 5 = 2 documents: 0.6 and 0.4
    assert top_fraction_threshold([str(path)], QualityParams(keep_top_fraction=0.4)) == 0.4
    assert top_fraction_threshold([str(path)], QualityParams(keep_top_fraction=1.0)) == 0.1


def test_metrics():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert math.isnan(roc_auc(np.array([0.5]), np.array([1])))
    m = classification_metrics([0.9, 0.6, 0.4, 0.1], [1, 0, 1, 0])
    assert (m["precision"], m["recall"], m["accuracy"]) == (0.5, 0.5, 0.5)


def test_reference_corpora_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    pq.write_table(pa.table({"text": ["three", None]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text(" = Title = \n\n The war @-@ time plan , he said , was <unk> ( not ) final . \n\n")
    assert list(read_corpus(str(tmp_path / "a.jsonl"))) == ["one", "two"]
    assert list(read_corpus(str(tmp_path / "b.parquet"))) == ["three"]
    assert list(read_corpus(str(tmp_path / "c.txt"), wikitext=True)) == ["The war-time plan, he said, was (not) final."]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(read_corpus(str(tmp_path / "bad.jsonl")))
    (tmp_path / "d.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="unsupported"):
        list(read_corpus(str(tmp_path / "d.csv")))
    assert detokenize_wikitext(" = = Section = = ") == ""
    assert classifier_text("Hello,  World!\nNew line.") == "hello , world ! new line ."


def _synthetic_corpus(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    good = (
        "river museum library history council research student village century archive painting "
        "committee report science harbour engineer garden theatre"
    ).split()
    bad = "buy cheap free click now best deal pills casino bonus win prize offer".split()
    pos = [
        " ".join(
            f"The {rng.choice(good)} of the {rng.choice(good)} was described in the {rng.choice(good)}."
            for _ in range(12)
        )
        for _ in range(60)
    ]
    neg = [
        " ".join(f"{rng.choice(bad).upper()} {rng.choice(bad)} {rng.choice(bad)}!!!" for _ in range(20))
        for _ in range(60)
    ]
    (tmp_path / "pos.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pos))
    (tmp_path / "neg.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in neg))
    return str(tmp_path / "pos.jsonl"), str(tmp_path / "neg.jsonl")


def test_classifier_trained_in_process_separates_the_classes(tmp_path):
    pos, neg = _synthetic_corpus(tmp_path)
    # train_classifier trains fastText in a fresh interpreter itself (models/classifiers.py: in long-lived
    # processes fastText diverged to NaN), so this runs in-process like the quality stage does
    from tasks.quality.classifier import QualityClassifierParams, train_classifier

    p = QualityClassifierParams(positive=[pos], negative=[neg], min_chars=50, dim=16)
    facts = json.loads(json.dumps(train_classifier(p, [], tmp_path)))
    m = facts["metrics"]
    assert m["auc"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0 and m["n"] == 24
    assert facts["label_sources"] == {"positive": "files", "negative": "files"} and not facts["bootstrap"]
    assert facts["counts"] == {"train.hq": 48, "train.lq": 48, "test.hq": 12, "test.lq": 12}
    assert (tmp_path / "model.bin").stat().st_size == facts["model_bytes"]


def test_classifier_needs_both_classes(tmp_path):
    pos, _ = _synthetic_corpus(tmp_path)
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "x" * 300}) + "\n")
    with pytest.raises(TooFewExamples, match="only 1 negatives") as err:
        train_classifier(QualityClassifierParams(positive=[pos], negative=[str(tmp_path / "one.jsonl")]), [], tmp_path)
    # the message names both ways out (issue 10: it named neither)
    assert "quality.use_classifier: false" in str(err.value) and "pretrain train-quality-classifier" in str(err.value)


def test_classifier_is_not_trained_when_it_cannot_reach_the_example_bar(tmp_path):
    """60 examples per class cannot pass a bar of 100 per class: refused before fastText runs."""
    pos, neg = _synthetic_corpus(tmp_path)
    p = QualityClassifierParams(positive=[pos], negative=[neg], min_chars=50, dim=16)
    with pytest.raises(TooFewExamples, match="only 60 positives, 60 negatives") as err:
        train_classifier(p, [], tmp_path, min_examples_per_class=100)
    assert err.value.counts == {"hq": 60, "lq": 60} and not (tmp_path / "model.bin").exists()
    facts = train_classifier(p, [], tmp_path, min_examples_per_class=60)
    assert facts["examples_per_class"] == {"hq": 60, "lq": 60}


def test_classifier_shortfall_is_the_validation_bar():
    facts = {
        "metrics": {"auc": 0.93, "n": 160},
        "counts": {"train.hq": 160, "test.hq": 40, "train.lq": 170, "test.lq": 42},
    }
    assert classifier_shortfall(facts, 0.8, 200) is None
    assert classifier_shortfall(facts, 0.95, 200) == "held-out AUC 0.93 < 0.95"
    assert classifier_shortfall(facts, 0.8, 201) == "200 positives < 201 per class"
    # the bootstrap classifier: 6 documents, held-out AUC 0.5
    tiny = {"metrics": {"auc": 0.5}, "counts": {"train.hq": 2, "test.hq": 1, "train.lq": 2, "test.lq": 1}}
    assert classifier_shortfall(tiny, 0.8, 200) == "held-out AUC 0.5 < 0.8; 3 positives, 3 negatives < 200 per class"
    assert "AUC nan" in classifier_shortfall({"metrics": {"auc": float("nan")}, "counts": facts["counts"]}, 0.5, 2)
    assert "AUC None" in classifier_shortfall({}, 0.5, 0)
    with pytest.raises(ValueError):
        QualityParams(classifier_min_auc=1.5)
    assert QualityParams().classifier_min_auc == 0.8 and QualityParams().classifier_min_examples == 200


def _gopher(text, datatrove_compatible=False, **options):
    return HeuristicLayer(
        ["gopher_quality"], {"gopher_quality": options} if options else None, datatrove_compatible
    ).evaluate(text, "en")["gopher_quality"]


CITED = (
    "The bridge (built 1889-1891) spans the river; see [3], p. 12. It was, and is, the longest of its "
    "kind - a fact that the city, to this day, is proud of: tours run daily (10:00, 14:00). "
) * 4


def test_gopher_words_are_whitespace_separated_by_default():
    """The alpha rule as the Gopher paper states it: datatrove counts every punctuation token as a word, so
    prose with citations, dates and brackets fails it (issue 10); the paper's whitespace words pass."""
    tokens = SpacyWordTokenizer("en").word_tokenize(CITED)
    assert sum(any(c.isalpha() for c in w) for w in tokens) / len(tokens) < 0.8  # datatrove's ratio
    words = CITED.split()
    assert sum(any(c.isalpha() for c in w) for w in words) / len(words) >= 0.8  # the paper's
    assert _gopher(CITED, datatrove_compatible=True) == "gopher_below_alpha_threshold"
    assert _gopher(CITED) == PASS
    assert QualityParams().datatrove_compatible is False
    assert "datatrove_compatible" in QualityParams().scoring_params()  # a new score cache per mode


def test_gopher_paper_rules_each_reason():
    base = PROSE + "\n" + PROSE
    assert _gopher(base) == PASS
    assert _gopher("The cat sat on the mat and that was the end of it.") == "gopher_short_doc"
    assert _gopher(" ".join(["of"] * 30 + ["the"] * 30)) == "gopher_below_avg_threshold"
    assert _gopher(" ".join(["extraordinarily"] * 40 + ["the", "of"] * 5)) == "gopher_above_avg_threshold"
    assert _gopher(base + " #tag" * 30) == "gopher_too_many_hashes"
    assert _gopher(base + " and so on..." * 30) == "gopher_too_many_ellipsis"
    bullets = "\n".join(f"- another interesting entry number {i} of the catalogue" for i in range(60))
    assert _gopher(bullets) == "gopher_too_many_bullets"
    ellipses = "\n".join([PROSE] + [f"and the rest of story {i} is to come…" for i in range(5)])
    assert _gopher(ellipses) == "gopher_too_many_end_ellipsis"
    assert _gopher(base + " 12 34 56 78" * 60) == "gopher_below_alpha_threshold"
    no_stop = " ".join(["museum library archive river council garden"] * 12)
    assert _gopher(no_stop) == "gopher_enough_stop_words"
    # stop words: lowercased, punctuation stripped ("The", "of," count); datatrove needs exact tokens
    capital = " ".join(["The museum, library archive river council garden. Of"] * 10)
    assert _gopher(capital) == PASS and _gopher(capital, datatrove_compatible=True) == "gopher_enough_stop_words"
    # thresholds and rules are datatrove's constructor arguments
    assert _gopher("The museum opened with several exhibitions and the library with readings.", min_doc_words=5) == PASS
    assert _gopher(no_stop, min_stop_words=None) == PASS
    assert _gopher("  \n ", min_doc_words=None) == UNDEFINED
    assert isinstance(HeuristicLayer(["gopher_quality"])._filters_for("en")[1][0][1], GopherPaperQualityFilter)


def test_gopher_paper_rules_on_other_languages_skip_stop_words():
    assert _gopher(GERMAN) == "gopher_enough_stop_words"  # judged as English
    german = HeuristicLayer(["gopher_quality"]).evaluate(GERMAN, "de")
    assert german["gopher_quality"] == PASS


@pytest.mark.slow
def test_classifier_on_dclm_human_labels(shared_data, tmp_path):
    """Real data: train on the 218 DCLM documents outside the annotators' agreement set (their human
    labels), evaluate on the 281 agreement documents (measured: AUC 0.760, accuracy 0.698)."""
    dclm = shared_data / "quality" / "dclm_human_annotated"
    agreement = [json.loads(line) for line in open(dclm / "agreement_data.jsonl")]
    held_out = {r["text"] for r in agreement}
    rest = [r for r in map(json.loads, open(dclm / "majority_data.jsonl")) if r["text"] not in held_out]
    for label, name in ((1, "pos.jsonl"), (0, "neg.jsonl")):
        (tmp_path / name).write_text(
            "".join(json.dumps({"text": r["text"]}) + "\n" for r in rest if r["label"] == label)
        )
    params = QualityClassifierParams(
        positive=[str(tmp_path / "pos.jsonl")], negative=[str(tmp_path / "neg.jsonl")], min_chars=100
    )
    train_classifier(params, [], tmp_path)
    from models.classifiers import load_quality_model
    from tasks.quality.classifier import score_texts

    model = load_quality_model(str(tmp_path / "model.bin"))
    scores = score_texts(model, [classifier_text(r["text"]) for r in agreement])
    m = classification_metrics(scores, [r["label"] for r in agreement])
    assert m["auc"] >= 0.72 and m["accuracy"] >= 0.65, m


@pytest.mark.slow
def test_dclm_human_labels_classifier_passes_the_validation_bar(shared_data, tmp_path):
    """Real data, the documented recipe (`pretrain train-quality-classifier --positive good.jsonl --negative
    bad.jsonl --word-ngrams 1 --epoch 25 --lr 0.5`) on DCLM's 499 majority-labelled documents: 80% train,
    the held-out 20% (45 per class) gives AUC 0.850, precision 0.771, recall 0.822 (measured); it passes
    the quality stage's default bar. (DCLM's own defaults, bigrams and 10 epochs: AUC 0.696, below it.)"""
    rows = [json.loads(line) for line in open(shared_data / "quality" / "dclm_human_annotated" / "majority_data.jsonl")]
    for label, name in ((1, "good.jsonl"), (0, "bad.jsonl")):
        (tmp_path / name).write_text(
            "".join(json.dumps({"text": r["text"]}) + "\n" for r in rows if r["label"] == label)
        )
    params = QualityClassifierParams(
        positive=[str(tmp_path / "good.jsonl")], negative=[str(tmp_path / "bad.jsonl")], word_ngrams=1, epoch=25, lr=0.5
    )
    facts = train_classifier(params, [], tmp_path, min_examples_per_class=QualityParams().classifier_min_examples)
    assert facts["examples_per_class"] == {"hq": 221, "lq": 221} and facts["metrics"]["n"] == 90
    bar = QualityParams()
    assert classifier_shortfall(facts, bar.classifier_min_auc, bar.classifier_min_examples) is None, facts["metrics"]
    assert facts["metrics"]["precision"] >= 0.7 and facts["metrics"]["recall"] >= 0.7, facts["metrics"]
