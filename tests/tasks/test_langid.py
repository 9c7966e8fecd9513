"""Language ID stage: every drop reason, keep-list and threshold boundary, batching, bad input, real LID-176."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.classifiers import bundled_lid_path, load_lid_model
from storage.documents import Document, read_documents
from storage.stats import StageStats
from tasks.langid import (
    EMPTY_TEXT,
    LANGUAGE_NOT_KEPT,
    LANGUAGE_SCORE_LOW,
    NO_LETTERS,
    LangidParams,
    langid_shard,
    process,
)


class FakeLid:
    """TextClassifier fake: the language is the first word of the text, the score the second."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def predict(self, lines, k=1):
        self.calls.append(list(lines))
        out = []
        for line in lines:
            lang, score = line.split()[:2]
            out.append([(lang, float(score)), ("xx", 0.0)][:k])
        return out


class ListRejects:
    def __init__(self, stats):
        self.stats, self.items = stats, []

    def add(self, doc, reason, detail=None, error=False):
        self.stats.drop(reason, error=error)
        self.items.append((doc, reason, detail))


def run(texts, params=LangidParams(), model=None):
    model = model or FakeLid()
    stats = StageStats()
    rejects = ListRejects(stats)
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    kept = list(process(docs, params, stats, rejects, model))
    return kept, {d.id: r for d, r, _ in rejects.items}, stats, model


def test_keep_list_and_threshold_boundary():
    params = LangidParams(languages=["en", "de"], threshold=0.65)
    kept, rejected, stats, _ = run(
        ["en 0.65 at the threshold", "en 0.6499 just below", "de 0.99 gut", "fr 0.99 bonjour", "en 1.0 sure"], params
    )
    assert [d.id for d in kept] == ["0", "2", "4"]
    assert rejected == {"1": LANGUAGE_SCORE_LOW, "3": LANGUAGE_NOT_KEPT}
    assert kept[0].meta["language"] == "en" and kept[0].meta["language_score"] == 0.65
    assert kept[0].meta["language_top3"][0] == {"lang": "en", "score": 0.65}
    assert stats.counters == {"language.en": 3, "language.de": 1, "language.fr": 1, "kept.en": 2, "kept.de": 1}


def test_empty_keep_list_keeps_every_language_above_threshold():
    kept, rejected, _, _ = run(["fr 0.9 a", "zh 0.5 b"], LangidParams(languages=[]))
    assert [d.meta["language"] for d in kept] == ["fr"] and rejected == {"1": LANGUAGE_SCORE_LOW}


def test_bad_input_is_counted_not_fed_to_the_model():
    kept, rejected, stats, model = run(["", "   \n\t ", "12345 !!! ---", "\x00\x01\x02\x80\x9f\ufffd", "en 0.9 ok"])
    assert rejected == {"0": EMPTY_TEXT, "1": EMPTY_TEXT, "2": NO_LETTERS, "3": NO_LETTERS}
    assert [d.id for d in kept] == ["4"] and model.calls == [["en 0.9 ok"]]
    assert stats.dropped == {EMPTY_TEXT: 2, NO_LETTERS: 2}


def test_batches_and_single_line_capped_input():
    params = LangidParams(batch_size=2, max_chars=100)
    big = "en 0.9 " + "word\nnext " * 300_000  # ~3 MB with newlines
    kept, _, _, model = run(["en 0.9 a\nb", "en 0.9 c", "en 0.9 d", big, "en 0.8 e"], params)
    assert [len(c) for c in model.calls] == [2, 2, 1] and len(kept) == 5
    seen = [line for call in model.calls for line in call]
    assert all("\n" not in s for s in seen) and len(seen[3]) == 100
    assert kept[3].text == big  # the stored text is never cut


def test_params_validation():
    assert LangidParams(languages=["__label__en", " de ", "en"]).languages == ["de", "en"]
    with pytest.raises(ValueError, match="empty or blank"):
        LangidParams(languages=[""])
    with pytest.raises(ValueError):
        LangidParams(threshold=1.5)
    assert "batch_size" not in LangidParams().version_params()


def test_bundled_model_predicts_languages_and_survives_garbage():
    model = load_lid_model()
    assert model is load_lid_model() and bundled_lid_path().endswith("lid.176.ftz")
    texts = {
        "en": "The committee published its annual report on the state of public libraries.",
        "de": "Der Ausschuss hat seinen Jahresbericht über die öffentlichen Bibliotheken veröffentlicht.",
        "fr": "Le comité a publié son rapport annuel sur l'état des bibliothèques publiques.",
        "es": "El comité publicó su informe anual sobre el estado de las bibliotecas públicas.",
        "ru": "Комитет опубликовал свой ежегодный доклад о состоянии публичных библиотек.",
        "zh": "委员会发布了关于公共图书馆状况的年度报告。",
    }
    rng = random.Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(5000)).decode("latin-1") + "abc"
    kept, rejected, stats, _ = run(list(texts.values()) + [garbage], LangidParams(languages=[]), model)
    assert [d.meta["language"] for d in kept] == list(texts)
    assert all(len(d.meta["language_top3"]) == 3 and d.meta["language_score"] <= 1.0 for d in kept)
    assert rejected == {"6": LANGUAGE_SCORE_LOW}


def test_demo_crawl_ground_truth_languages_are_recovered(demo_ground_truth):
    _, rows = demo_ground_truth
    rows = [r for r in rows if r["language"]]
    kept, rejected, _, _ = run([r["text"] for r in rows], LangidParams(languages=[]), load_lid_model())
    predicted = {d.id: d.meta["language"] for d in kept}
    truth = {str(i): r["language"] for i, r in enumerate(rows)}
    assert not rejected and predicted == truth and len(set(truth.values())) >= 6


def test_shard_task_writes_columns_and_rejects(tmp_path, make_version):
    docs = [
        Document(id="a", text="The library opened a new reading room for the children of the town."),
        Document(id="b", text="Die Bibliothek hat einen neuen Lesesaal für die Kinder der Stadt eröffnet."),
        Document(id="c", text=""),
    ]
    make_version(tmp_path, "ingest", [docs], version="ing1")
    out = tmp_path / "out"
    res = langid_shard.fn(str(tmp_path / "ingest" / "ing1" / "part-00000.parquet"), str(out), 0, LangidParams())
    assert (res.stats.docs_in, res.stats.docs_out) == (3, 1)
    assert res.stats.dropped == {LANGUAGE_NOT_KEPT: 1, EMPTY_TEXT: 1}
    schema = pq.read_schema(out / "data" / "part-00000.parquet")
    assert schema.field("language_top3").type.value_type == pa.struct([("lang", pa.string()), ("score", pa.float64())])
    rejected = {d.id: d.meta for d in read_documents(str(out / "rejected" / "part-00000.parquet"))}
    assert rejected["b"]["reason"] == LANGUAGE_NOT_KEPT and rejected["b"]["language"] == "de"
    assert rejected["c"]["reason"] == EMPTY_TEXT and rejected["c"]["language"] is None
