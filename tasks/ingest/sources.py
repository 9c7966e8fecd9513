"""Where ingest's documents come from: input files (paths, globs, crawl listings) and URL categories.

Inputs. `expand_inputs` turns the configured patterns into concrete files: globs (fsspec, any
filesystem), directories (their files with a supported suffix), plain paths (must exist) and URLs
(checked when fingerprinted or opened), plus, for a Common Crawl crawl id, the first `segments` lines
of `<base>/crawl-data/<crawl>/warc.paths.gz`. The format is chosen by suffix (`input_format`).
`input_fingerprint` is what the version hash knows of the files, location-free: per file, in order, its
name (relative to the data root when under it, else the file name only), size and a content marker (a
digest of the first and last MiB, or the object's ETag; never the mtime or an absolute path), so a copied
or moved data root keeps its versions (`input_record` adds the paths read, for the manifest only).
`open_input` streams HTTP(S) with its own reader (`_HttpStream`): every connect and read waits at most
`timeout_s`, and a stalled or dropped transfer resumes where it stopped (`Range`, `If-Range` on the first
ETag) up to `retries` times in all, then fails with an `OSError` naming the URL, the timeout and the fix
(fsspec's aiohttp stream had no read timeout: a server that stalls after its headers hung the worker for
ever).

Categories. `classify_source(url, rules)` gives the coarse `source` column that `mix` weights by: the
first `SourceRule` whose regex (`re.search`) matches the chosen part of the URL wins; no match gives
`FALLBACK_SOURCE` (`web`). Parts: `host` (lowercased, no trailing dot, a leading `www.` removed), `path`
(as written), `url` (the whole URL, stripped). A URL without a host (`dns:`, empty, malformed) can only
match `url` rules. `DEFAULT_SOURCE_RULES` is the one table (ingest uses it; `mix.source_rules` defaults
to it and can override it per run):

| category    | host rules (suffix match on whole labels)                                         |
|-------------|------------------------------------------------------------------------------------|
| `wikipedia` | wikipedia.org, wikimedia.org, wikibooks.org, wikisource.org, wiktionary.org, ...   |
| `code`      | github.com, gitlab.com, bitbucket.org, stackoverflow.com, stackexchange.com, ...   |
| `academic`  | arxiv.org, biorxiv.org, ncbi.nlm.nih.gov, ...; TLD `.edu`, `.edu.<cc>`, `.ac.<cc>` |
| `forum`     | reddit.com, quora.com, ...; first label forum(s)/board(s)/community/discuss; path  |
|             | /forum(s)/, /thread(s)/, /topic(s)/, viewtopic.php, showthread.php, forumdisplay.php |
| `news`      | a list of large news sites; any host label (not the TLD) containing "news"        |
| `web`       | everything else, and URLs without a host (`dns:`, empty)                           |

The lists are deliberately short: `mix` needs a few broad buckets, not a site classifier. Changing the
default table changes `source` values, so it requires bumping `tasks.ingest.STAGE_VERSION`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import fsspec
from fsspec.core import url_to_fs
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

InputFormat = Literal["warc", "jsonl", "parquet"]
SUFFIXES: dict[str, InputFormat] = {
    ".warc.gz": "warc",
    ".warc": "warc",
    ".wet.gz": "warc",
    ".wet": "warc",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".json.gz": "jsonl",
    ".parquet": "parquet",
}

FALLBACK_SOURCE = "web"
_SOURCE_NAME = r"^[A-Za-z0-9_-]+$"

_WIKIPEDIA = (
    "wikipedia.org",
    "wikimedia.org",
    "wikibooks.org",
    "wikisource.org",
    "wiktionary.org",
    "wikiquote.org",
    "wikinews.org",
    "wikiversity.org",
    "wikivoyage.org",
    "wikidata.org",
)
_CODE = (
    "github.com",
    "github.io",
    "gitlab.com",
    "bitbucket.org",
    "sourceforge.net",
    "stackoverflow.com",
    "stackexchange.com",
    "serverfault.com",
    "superuser.com",
    "askubuntu.com",
    "readthedocs.io",
    "pypi.org",
    "npmjs.com",
    "crates.io",
    "docs.python.org",
    "developer.mozilla.org",
)
_ACADEMIC = (
    "arxiv.org",
    "biorxiv.org",
    "medrxiv.org",
    "ncbi.nlm.nih.gov",
    "europepmc.org",
    "doi.org",
    "semanticscholar.org",
    "openreview.net",
    "aclanthology.org",
    "jstor.org",
    "plos.org",
    "springer.com",
    "sciencedirect.com",
    "researchgate.net",
    "ssrn.com",
    "scholar.archive.org",
)
_FORUM = (
    "reddit.com",
    "quora.com",
    "discourse.org",
    "disqus.com",
    "tripadvisor.com",
    "4chan.org",
    "boards.ie",
    "forums.somethingawful.com",
    "phpbb.com",
    "proboards.com",
)
_NEWS = (
    "nytimes.com",
    "washingtonpost.com",
    "wsj.com",
    "theguardian.com",
    "bbc.co.uk",
    "bbc.com",
    "cnn.com",
    "reuters.com",
    "apnews.com",
    "bloomberg.com",
    "ft.com",
    "economist.com",
    "npr.org",
    "aljazeera.com",
    "latimes.com",
    "usatoday.com",
    "theatlantic.com",
    "politico.com",
    "forbes.com",
    "cnbc.com",
    "spiegel.de",
    "lemonde.fr",
    "elpais.com",
    "corriere.it",
    "nikkei.com",
    "scmp.com",
    "abc.net.au",
)


class SourceRule(BaseModel):
    """`source` for URLs whose `field` matches the regex `pattern` (`re.search`; `(?i)` for no case)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pattern: str = Field(min_length=1, description="Python regex searched in the field.")
    field: Literal["host", "path", "url"] = Field(
        "host",
        description=(
            "host: lowercased, no trailing dot, leading `www.` removed; path: the URL path; url: the whole URL."
        ),
    )
    source: str = Field(pattern=_SOURCE_NAME, description="Source name given on a match (letters, digits, _ -).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression ({e}); fix or escape it") from e
        return v


def host_rule(domains: tuple[str, ...], source: str) -> SourceRule:
    """A rule matching these domains and their subdomains (whole-label suffix match on the host)."""
    return SourceRule(pattern=r"(^|\.)(" + "|".join(re.escape(d) for d in domains) + r")$", source=source)


DEFAULT_SOURCE_RULES: tuple[SourceRule, ...] = (
    host_rule(_WIKIPEDIA, "wikipedia"),
    host_rule(_CODE, "code"),
    host_rule(_ACADEMIC, "academic"),
    SourceRule(pattern=r"(^|\.)(edu|edu\.[a-z]{2}|ac\.[a-z]{2})$", source="academic"),
    host_rule(_FORUM, "forum"),
    SourceRule(pattern=r"^(forums?|boards?|community|discuss|discussions?|bbs)(\.|$)", source="forum"),
    SourceRule(
        pattern=r"(?i)/(forums?|threads?|topics?)/|(viewtopic|showthread|forumdisplay|forum-display)\.php",
        field="path",
        source="forum",
    ),
    host_rule(_NEWS, "news"),
    SourceRule(pattern=r"news[^.]*\.", source="news"),  # a label containing "news" that is not the TLD
)
SOURCES: tuple[str, ...] = tuple(dict.fromkeys([r.source for r in DEFAULT_SOURCE_RULES] + [FALLBACK_SOURCE]))


@functools.lru_cache(maxsize=16)
def _compiled(rules: tuple[SourceRule, ...]) -> tuple[tuple[re.Pattern[str], str, str], ...]:
    return tuple((re.compile(r.pattern), r.field, r.source) for r in rules)


def classify_source(url: str, rules: Sequence[SourceRule] = DEFAULT_SOURCE_RULES) -> str:
    """The source of `url`: the first matching rule's (see the module docstring), else `FALLBACK_SOURCE`."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").removeprefix("www.")
    except ValueError:  # malformed URL (e.g. bad IPv6 literal): no host to classify
        parts, host = None, ""
    for regex, part, source in _compiled(tuple(rules)):
        if part == "url":
            value = url
        elif not host or parts is None:
            continue
        else:
            value = host if part == "host" else parts.path
        if regex.search(value):
            return source
    return FALLBACK_SOURCE


def input_format(path: str) -> InputFormat | None:
    """The reader for a path, by its suffix (None if unsupported)."""
    name = path.lower().split("?", 1)[0]
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def crawl_warc_urls(crawl: str, segments: int, base_url: str) -> list[str]:
    """URLs of the first `segments` WARC files listed in `<base>/crawl-data/<crawl>/warc.paths.gz`."""
    listing = f"{base_url.rstrip('/')}/crawl-data/{crawl}/warc.paths.gz"
    urls: list[str] = []
    try:
        with fsspec.open(listing, "rt", compression="gzip", encoding="utf-8") as f:
            for line in f:
                if line.strip().endswith(".warc.gz"):
                    urls.append(f"{base_url.rstrip('/')}/{line.strip().lstrip('/')}")
                    if len(urls) == segments:
                        break
    except FileNotFoundError as e:
        raise ValueError(
            f"crawl {crawl}: no WARC listing at {listing} ({e}). Check the crawl id "
            "(CC-MAIN-YYYY-WW, as listed on commoncrawl.org) and crawl_base_url"
        ) from e
    if len(urls) < segments:
        raise ValueError(f"crawl {crawl}: {listing} lists {len(urls)} WARC files, fewer than segments={segments}")
    return urls


def _expand(pattern: str) -> list[str]:
    fs, inner = url_to_fs(os.path.expanduser(pattern))
    local = "://" not in pattern
    if any(c in inner for c in "*?["):
        found = sorted(fs.glob(inner))
    elif local and fs.isdir(inner):
        # a directory contributes its crawl files only: a demo-crawl or download directory also holds
        # ground-truth JSONL, listings and the like, which are not documents to ingest
        files = sorted(fs.find(inner))
        found = [p for p in files if input_format(p) == "warc"]
        if len(found) < len(files):
            log.info(
                "input directory %s: %d WARC/WET files; %d other files left out (name JSONL/Parquet inputs "
                "explicitly or with a glob)",
                pattern,
                len(found),
                len(files) - len(found),
            )
        if not found:
            raise ValueError(
                f"input directory {pattern!r} holds no WARC/WET files ({len(files)} other files); "
                f"name JSONL/Parquet inputs explicitly or with a glob such as {pattern.rstrip('/')}/*.jsonl"
            )
    elif local and not fs.exists(inner):
        raise ValueError(f"input {pattern!r} does not exist")
    else:
        found = [inner]
    if not found:
        raise ValueError(f"input pattern {pattern!r} matches no files")
    return [os.path.abspath(p) if local else fs.unstrip_protocol(p) for p in found]


def expand_inputs(inputs: list[str], crawl: str | None, segments: int, crawl_base_url: str) -> list[str]:
    """Concrete input files (absolute paths or URLs), in order, without duplicates."""
    found = [p for pattern in inputs for p in _expand(pattern)]
    if crawl is not None:
        found += crawl_warc_urls(crawl, segments, crawl_base_url)
    unsupported = [p for p in found if input_format(p) is None]
    if unsupported:
        raise ValueError(
            f"unsupported input files {unsupported[:5]} ({len(unsupported)} in all); expected one "
            f"of {sorted(SUFFIXES)}. Narrow the glob or remove them from inputs"
        )
    return list(dict.fromkeys(found))


_SAMPLE_BYTES = 1 << 20
_ETAG_KEYS = ("ETag", "etag")


def _sample_digest(fs: fsspec.AbstractFileSystem, inner: str, size: int) -> str:
    """sha256 of the first and last MiB (the whole file if smaller): content, not mtime, so that a copy or
    a regenerated identical file (the demo crawl) keeps its version, while a re-download differs."""
    digest = hashlib.sha256()
    with fs.open(inner, "rb") as f:
        digest.update(f.read(_SAMPLE_BYTES))
        if size > 2 * _SAMPLE_BYTES:
            f.seek(size - _SAMPLE_BYTES)
        digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def _local(path: str) -> str | None:
    """The local path of a plain path or file:// URL, else None (a remote URL)."""
    if "://" not in path:
        return path
    return path[len("file://") :] if path.startswith("file://") else None


def _under(path: str, root: str) -> str | None:
    """`path` relative to `root` ('/'-separated) when it lies under it, else None."""
    local, local_root = _local(path), _local(root)
    if local is not None and local_root is not None:
        for p, r in (
            (os.path.abspath(local), os.path.abspath(local_root)),
            (os.path.realpath(local), os.path.realpath(local_root)),
        ):
            if p.startswith(r.rstrip(os.sep) + os.sep):
                return os.path.relpath(p, r).replace(os.sep, "/")
        return None
    if local is None and local_root is None and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return None


def _file_name(path: str) -> str:
    """The last part of a path or URL (no query string)."""
    return (urlsplit(path).path if "://" in path else path).rstrip("/").rsplit("/", 1)[-1]


def input_fingerprint(paths: list[str], root: str | None = None) -> list[dict[str, Any]]:
    """What ingest's (and the quality classifier's) version depends on for its input files: one entry per
    file, in the given order (the order is the shard order), each `{"name", "size", <content marker>}`.

    - `name`: the path relative to the data root `root` when the file lies under it
      (`_inputs/demo-crawl/pages-400/demo-crawl.warc.gz`), else the file's name only; never an absolute
      path, so a copied or moved data root (or input directory) keeps every version.
    - content marker: `sample_sha256`, a digest of the first and last MiB (the whole file when smaller),
      for local files and any store that reports no ETag; `etag` for objects whose filesystem reports one
      (s3, gcs, http(s): nothing is downloaded); an http(s) file without an ETag has nothing to sample
      without downloading, so its whole `url` and its `last_modified` (when served) mark it instead.
    - no mtime: a copy changes it, the content does not.

    So files with the same name and content in two places outside the root fingerprint alike: they yield
    the same documents anyway (ids and urls come from the records). The list keeps its order (the shard
    order) and every entry, so reordered or repeated inputs give another version. The paths actually read
    are information only: the flows record them beside this list in the manifest (`input_record`).
    """
    out = []
    for path in paths:
        fs, inner = url_to_fs(path)
        try:
            info = fs.info(inner)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{path}: input not found or unreachable ({e!r}); check the path or URL, or remove it from inputs"
            ) from e
        relative = _under(path, root) if root is not None else None
        entry: dict[str, Any] = {"name": relative or _file_name(path), "size": info.get("size")}
        etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k) is not None), None)
        if etag is not None:
            entry["etag"] = etag
        elif path.split("://", 1)[0].lower() in ("http", "https"):
            entry["url"] = path
            for key in ("Last-Modified", "LastModified"):
                if info.get(key) is not None:
                    entry["last_modified"] = str(info[key])
        else:
            entry["sample_sha256"] = _sample_digest(fs, inner, int(info["size"]))
        out.append(entry)
    return out


def input_record(paths: list[str], fingerprint: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's `files` record: each fingerprint entry with the `path` it was read from (information,
    not part of the version)."""
    return [{**entry, "path": path} for path, entry in zip(paths, fingerprint, strict=True)]


_HTTP_BUFFER = 1 << 16
_READ_FAILURES = (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError)


class _HttpStream(io.RawIOBase):
    """Sequential read of an http(s) URL with bounded waits and resumption (see the module docstring)."""

    def __init__(self, url: str, timeout_s: float, retries: int):
        super().__init__()
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.pos, self.failures = 0, 0
        self.validator: str | None = None
        self._resp = self._connect_with_retries()

    def readable(self) -> bool:
        return True

    def _connect(self) -> http.client.HTTPResponse:
        headers = {"User-Agent": "pretrain-pipeline-ingest"}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
            if self.validator:
                headers["If-Range"] = self.validator
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            if e.code in (404, 410):
                raise FileNotFoundError(
                    f"{self.url}: input not found (HTTP {e.code}); check the path or URL, or remove it from inputs"
                ) from e
            raise OSError(f"{self.url}: cannot open the input (HTTP {e.code} {e.reason}); check the URL") from e
        if self.pos and resp.status != 206:
            resp.close()
            raise OSError(
                f"{self.url}: cannot resume at byte {self.pos}: the server answered {resp.status} to a "
                "Range request (no range support, or the file changed); the shard is retried from the start"
            )
        if not self.pos:
            self.validator = resp.headers.get("ETag")
        return resp  # type: ignore[no-any-return]

    def _failed(self, error: BaseException) -> None:
        """Count one stalled/dropped transfer; raise once `retries` are used up."""
        self.failures += 1
        stalled = isinstance(error, TimeoutError) or "timed out" in str(error)
        what = f"no data for {self.timeout_s:g}s" if stalled else f"transfer failed ({error!r})"
        if self.failures > self.retries:
            raise OSError(
                f"{self.url}: {what} at byte {self.pos}, {self.failures} times (http_timeout_s={self.timeout_s:g}, "
                f"http_retries={self.retries}). Check the server and the network, or raise ingest.http_timeout_s / "
                f"ingest.http_retries in the config"
            ) from error
        log.warning(
            "%s: %s at byte %d; resuming (%d of %d retries)", self.url, what, self.pos, self.failures, self.retries
        )
        if not stalled:
            time.sleep(min(self.failures, 5))  # a refused or reset connection: give the server a moment

    def _connect_with_retries(self) -> http.client.HTTPResponse:
        while True:
            try:
                return self._connect()
            except (FileNotFoundError, urllib.error.HTTPError):
                raise
            except _READ_FAILURES as e:
                if self.pos == 0 and not isinstance(e, TimeoutError) and "timed out" not in str(e):
                    raise OSError(f"{self.url}: cannot open the input ({e!r}); check the URL and the network") from e
                self._failed(e)

    def readinto(self, buffer: Any) -> int:
        while True:
            try:
                n = self._resp.readinto(buffer)
                self.pos += n
                return n
            except _READ_FAILURES as e:
                self._resp.close()
                self._failed(e)
                self._resp = self._connect_with_retries()

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


def open_input(path: str, timeout_s: float = 60.0, retries: int = 3) -> IO[bytes]:
    """Open an input for sequential reading; http(s) is streamed with bounded waits and resumption."""
    compression = "infer" if input_format(path) == "jsonl" else None  # FastWARC decompresses WARC itself
    if path.split("://", 1)[0].lower() in ("http", "https"):
        raw: IO[bytes] = io.BufferedReader(_HttpStream(path, timeout_s, retries), _HTTP_BUFFER)
        if compression and path.lower().split("?", 1)[0].endswith(".gz"):
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        return raw
    try:
        return fsspec.open(path, "rb", compression=compression).open()  # type: ignore[no-any-return]
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path}: input not found ({e!r}); check the path or URL, or remove it from inputs"
        ) from e
    except Exception as e:  # connection refused, DNS, HTTP errors: an OSError so that the task retries
        raise OSError(f"{path}: cannot open the input ({e!r}); check the URL and the network") from e
