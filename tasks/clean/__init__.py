"""Clean: the `quality` documents -> the `clean` documents (blocked URLs dropped, repeated lines and PII removed).

Runs before dedup because it changes text that dedup hashes. Per document, in this order:
1. URL filter (`tasks.clean.urls`): user block lists of domains (subdomains match their parent), URLs and URL
   substrings, plus built-in adult/spam URL words (hard words, and the soft rule: `soft_word_threshold` soft
   words). The lists' contents (sha256) are part of the version id; their paths are not.
2. Line dedup (`tasks.clean.lines`): lines seen more than `max_line_repeats` times in the whole input
   (normalised; ccNet / Llama 3: 6) are removed from every document; a document that loses lines and keeps
   fewer than `min_words_after_clean` words is dropped. Global: count map -> partition sums -> filter map.
3. PII (`tasks.clean.pii`): e-mails, phone numbers, IPv4/IPv6 addresses replaced by placeholders, allow-lists
   for documentation addresses; or, above `pii_drop_density` matches per 1,000 characters, the document dropped.
Columns added: `clean_lines_removed`, `clean_pii` (int32: lines removed, PII matches replaced).
Counters: `url_blocked.<rule>`, `lines_removed`, `docs_changed.<line_dedup|pii>`, `pii.<email|phone|ip>`,
`pii_allowed.<kind>`, `chars_removed.<url_blocked|line_dedup|too_short_after_clean|pii|pii_dense>`.
Drop reasons: `url_blocked` (detail {rule: domain|url|word|soft_words|substring, match}),
`too_short_after_clean` (original text; detail {lines_removed, words_left}), `pii_dense` (the redacted text:
the PII is not copied again; detail {found, density}). Extras: top removed lines with counts, before/after
samples, the list files read. Issue 16; ccNet (Wenzek et al. 2019), Llama 3 (2024), datatrove's URLFilter.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from storage import paths
from storage.documents import Document, Rejects, ShardResult, iter_batches, run_document_shard
from storage.params import StageParams
from storage.stats import StageStats
from tasks.clean.cleaner import PII_DENSE, TOO_SHORT_AFTER_CLEAN, URL_BLOCKED, Cleaner, LineDedup
from tasks.clean.lines import TOP_LINES, line_key, load_frequent, sum_partition, write_counts
from tasks.clean.pii import PiiConfig
from tasks.clean.urls import UrlFilter, compile_hashes, save_array, save_substrings, substrings_of, url_filter
from tasks.lazy_task import task

STAGE = "clean"
STAGE_VERSION = 1
DROP_REASONS = (URL_BLOCKED, TOO_SHORT_AFTER_CLEAN, PII_DENSE)
WORK = "_work/clean"
PiiKind = Literal["email", "phone", "ip"]
CLEAN_FIELDS: list[pa.Field] = [pa.field("clean_lines_removed", pa.int32()), pa.field("clean_pii", pa.int32())]
DOC_RANGES = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]  # RFC 5737, RFC 3849
RFC2606 = ["example.com", "example.net", "example.org", "example", "test", "invalid", "localhost"]


class CleanParams(StageParams):
    domain_lists: list[str] = Field(
        default_factory=list,
        description="Block-list files of domains, one per line (UT1 `domains` layout); a listed domain blocks its "
        "subdomains too. Their content is hashed into the version, not their paths.",
    )
    url_lists: list[str] = Field(
        default_factory=list,
        description="Block-list files of URLs, one per line (UT1 `urls` layout: host/path, compared without scheme, "
        "www. and trailing /).",
    )
    url_substring_lists: list[str] = Field(
        default_factory=list,
        description="Files of URL substrings, one per line, matched against the URL lowercased with "
        "non-alphanumerics removed (datatrove's banned_subwords rule).",
    )
    builtin_words: bool = Field(
        True, description="Block URLs with a built-in adult/spam word, or with soft_word_threshold soft words."
    )
    soft_word_threshold: int = Field(
        2, ge=1, le=10, description="Built-in soft words (sex, casino, dating, ...) a URL needs to be blocked."
    )
    line_dedup: bool = Field(True, description="Remove lines repeated across the whole input (global line counts).")
    max_line_repeats: int = Field(
        6,
        ge=1,
        le=1_000_000,
        description="A normalised line seen more than this many times in the input is removed from every document "
        "(Llama 3, ccNet-style: 6 per 30M-document bucket; raise it for very large inputs).",
    )
    min_words_after_clean: int = Field(
        50,
        ge=0,
        le=100_000,
        description="A document that lost lines and keeps fewer words is dropped as too_short_after_clean "
        "(Gopher's 50-word minimum, which the quality stage applied before the lines were removed).",
    )
    line_partitions: int = Field(
        8, ge=1, le=1024, description="Hash partitions of the line counts (memory of one partition task ~ 1/n)."
    )
    pii: list[PiiKind] = Field(["email", "phone", "ip"], description="PII kinds to redact (empty: none).")
    email_placeholder: str = Field("<EMAIL>", description="Replaces an e-mail address.")
    phone_placeholder: str = Field("<PHONE>", description="Replaces a phone number.")
    ip_placeholder: str = Field("<IP>", description="Replaces an IPv4 or IPv6 address.")
    email_allow_domains: list[str] = Field(
        RFC2606, description="E-mail hosts (and their subdomains) kept as they are: the RFC 2606 example names."
    )
    ip_public_only: bool = Field(
        True, description="Redact only globally routable addresses (private, loopback, documentation kept)."
    )
    ip_allow_networks: list[str] = Field(
        DOC_RANGES, description="Networks whose addresses are kept (CIDR); default: the documentation ranges."
    )
    pii_drop_density: float | None = Field(
        None,
        gt=0.0,
        le=1000.0,
        description="Drop a document as pii_dense instead of redacting when it has more PII matches than this "
        "per 1,000 characters (null: always redact).",
    )
    keep_work: bool = Field(False, description="Keep _work/clean (line counts, compiled lists) after commit.")

    @field_validator("ip_allow_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError as err:
                raise ValueError(f"ip_allow_networks: {err}; use CIDR like 192.0.2.0/24") from None
        return v

    def lists(self) -> dict[str, list[str]]:
        return {"domains": self.domain_lists, "urls": self.url_lists, "substrings": self.url_substring_lists}

    def version_params(self) -> dict[str, Any]:
        # list contents enter the version as an input (flows/clean.py); partitions do not change the output
        skip = {"domain_lists", "url_lists", "url_substring_lists", "line_partitions", "keep_work"}
        return self.model_dump(mode="json", exclude=skip)

    def pii_config(self) -> PiiConfig:
        return PiiConfig(
            kinds=frozenset(self.pii),
            email_placeholder=self.email_placeholder,
            phone_placeholder=self.phone_placeholder,
            ip_placeholder=self.ip_placeholder,
            email_allow_domains=frozenset(d.lower().strip(".") for d in self.email_allow_domains),
            ip_public_only=self.ip_public_only,
            ip_allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in self.ip_allow_networks),
        )


class CleanJob(StageParams):
    """What a task needs besides its shard: the params, the input's shard count, the top line keys."""

    params: CleanParams
    shards: int = 0
    top_keys: list[int] = Field(default_factory=list)


class CountResult(BaseModel):
    index: int
    lines: int
    unique: int


class PartitionResult(BaseModel):
    index: int
    unique: int
    frequent: int
    top: list[tuple[int, int]]


class CleanResult(ShardResult):
    """A filter shard's counts plus a few before/after samples and the text of the top removed lines."""

    samples: list[dict[str, Any]]
    top_lines: dict[str, str]


def work_dir(out_dir: str) -> str:
    return paths.join(out_dir, WORK)


def list_file(out_dir: str, kind: str) -> str:
    return paths.join(work_dir(out_dir), f"{kind}.json" if kind == "substrings" else f"{kind}.npy")


def filter_for(out_dir: str, params: CleanParams) -> UrlFilter:
    """The URL filter of a run whose lists `clean_compile_lists` compiled under `out_dir`."""
    return url_filter(
        list_file(out_dir, "domains") if params.domain_lists else None,
        list_file(out_dir, "urls") if params.url_lists else None,
        list_file(out_dir, "substrings") if params.url_substring_lists else None,
        params.builtin_words,
        params.soft_word_threshold,
    )


@task
def clean_compile_lists(out_dir: str, params: CleanParams) -> dict[str, int]:
    """Compile the block lists under `_work/clean/` (domains, URLs: sorted hash arrays; substrings: JSON);
    returns the distinct entries per kind."""
    counts = {}
    for kind, files in (("domains", params.domain_lists), ("urls", params.url_lists)):
        if files:
            hashes = compile_hashes(files, kind)
            save_array(list_file(out_dir, kind), hashes)
            counts[kind] = len(hashes)
    if params.url_substring_lists:
        substrings = substrings_of(params.url_substring_lists)
        save_substrings(list_file(out_dir, "substrings"), substrings)
        counts["substrings"] = len(substrings)
    return counts


@task(task_run_name="clean-count-{index}")
def clean_count_shard(src: str, out_dir: str, index: int, job: CleanJob) -> CountResult:
    """The line keys of one input shard's (not URL-blocked) documents, counted and partitioned by key."""
    urls = filter_for(out_dir, job.params)
    keys: list[int] = []
    for batch in iter_batches(src, columns=["url", "text"]):
        for url, text in zip(batch.column("url").to_pylist(), batch.column("text").to_pylist()):
            if urls.blocked(url or "") is None:
                keys.extend(k for k in map(line_key, (text or "").split("\n")) if k is not None)
    unique = write_counts(work_dir(out_dir), index, keys, job.params.line_partitions)
    return CountResult(index=index, lines=len(keys), unique=unique)


@task(task_run_name="clean-lines-{index}")
def clean_line_partition(name: str, out_dir: str, index: int, job: CleanJob) -> PartitionResult:
    """Sum one hash partition of the line counts over every shard; write its frequent keys."""
    unique, frequent, top = sum_partition(work_dir(out_dir), index, job.shards, job.params.max_line_repeats)
    return PartitionResult(index=index, unique=unique, frequent=frequent, top=top)


def process(docs: Iterable[Document], cleaner: Cleaner, stats: StageStats, rejects: Rejects) -> Iterator[Document]:
    """URL filter, line dedup and PII redaction of one shard's documents (`tasks.clean.cleaner`)."""
    for doc in docs:
        outcome = cleaner.clean(doc, stats)
        if outcome is None:
            yield doc
        else:
            rejects.add(doc, *outcome)


@task(task_run_name="clean-{index}")
def clean_shard(src: str, out_dir: str, index: int, job: CleanJob) -> CleanResult:
    """Clean one input shard into kept + rejected shards `index`."""
    p = job.params
    lines = (
        LineDedup(load_frequent(work_dir(out_dir), p.line_partitions), frozenset(job.top_keys))
        if p.line_dedup
        else None
    )
    cleaner = Cleaner(filter_for(out_dir, p), lines, p.pii_config(), p.min_words_after_clean, p.pii_drop_density)
    result = run_document_shard(src, out_dir, index, lambda d, st, rj: process(d, cleaner, st, rj), CLEAN_FIELDS)
    return CleanResult(**result.model_dump(), samples=cleaner.samples, top_lines=cleaner.top_texts())


def top_lines(partitions: list[PartitionResult]) -> list[tuple[int, int]]:
    """The globally most frequent removed lines (key, count): the best of each partition's best."""
    return sorted((t for r in partitions for t in r.top), key=lambda kc: (-kc[1], kc[0]))[:TOP_LINES]


def run_steps(sources: list[str], out_dir: str, params: CleanParams) -> tuple[list[CleanResult], list[PartitionResult]]:
    """The stage's tasks in this process, without Prefect (bench, tests): compile, count, partitions, filter."""
    if any(params.lists().values()):
        clean_compile_lists.fn(out_dir, params)
    job = CleanJob(params=params, shards=len(sources))
    partitions = []
    if params.line_dedup:
        for i, src in enumerate(sources):
            clean_count_shard.fn(src, out_dir, i, job)
        partitions = [clean_line_partition.fn("", out_dir, p, job) for p in range(params.line_partitions)]
    job = job.model_copy(update={"top_keys": [k for k, _ in top_lines(partitions)]})
    return [clean_shard.fn(src, out_dir, i, job) for i, src in enumerate(sources)], partitions
