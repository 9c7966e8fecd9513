"""The clean stage's URL filter: block lists of domains, URLs and URL substrings, plus built-in URL words.

Block-list files are plain text, one entry per line, as the public UT1 lists (`<category>/domains`,
`<category>/urls`) are laid out; `#` starts a comment line, blank lines are skipped, entries are lowercased.
- domains: a document is blocked when its host or any parent of it is listed (`a.b.example.com` matches
  `b.example.com`, `example.com` and `com`; `*.` / leading dots are stripped from entries).
- URLs: compared without scheme, user info, port, leading `www.`, fragment and trailing `/` on both sides
  (UT1 lists them as `host/path`).
- URL substrings: matched against the URL lowercased with every non-alphanumeric character removed
  (datatrove's `banned_subwords` rule).
- built-in words (`builtin_words`): a URL containing one of `HARD_WORDS` as a whole word (the URL lowercased
  and split on non-alphanumerics), or at least `soft_word_threshold` of `SOFT_WORDS`, is blocked. The lists are
  ours: the most common adult and spam terms of URLs, kept short on purpose (a real block list belongs in a file).
The lists are compiled once per run (`tasks.clean.clean_compile_lists`): domains and URLs into sorted 64-bit
hashes, substrings normalised into JSON, under the version's `_work/clean/`. Every worker memory-maps the
hashes (a 4.6M-domain UT1 list: 36 MB shared, instead of ~400 MB of Python strings per process); a false
match needs a 64-bit collision (~1e-13 per lookup at that size).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import xxhash

from storage import paths

HARD_WORDS: tuple[str, ...] = (
    "porn", "porno", "pornhub", "xxx", "xvideos", "xnxx", "xhamster", "redtube", "youporn", "brazzers",
    "hentai", "milf", "blowjob", "gangbang", "bukkake", "creampie", "cumshot", "deepthroat", "camgirl",
    "camgirls", "nsfw", "sexcam", "livesex", "chaturbate",
)  # fmt: skip
SOFT_WORDS: tuple[str, ...] = (
    "sex", "sexy", "adult", "adults", "nude", "nudes", "naked", "erotic", "escort", "escorts", "fetish",
    "girls", "hot", "teen", "teens", "dating", "hookup", "casino", "viagra", "cialis", "poker", "betting",
    "payday", "replica", "webcam", "amateur", "babes", "lingerie",
)  # fmt: skip
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
LIST_KINDS = ("domains", "urls", "substrings")


def _entries(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        entry = line.strip().lower()
        if entry and not entry.startswith("#"):
            yield entry


def normalize_domain(entry: str) -> str:
    return entry.removeprefix("*.").strip(".")


def normalize_url(url: str) -> str:
    """`https://User@WWW.Example.com:8080/a/b/?q#f` -> `example.com/a/b/?q` minus the trailing slash: the key URL
    lists and document URLs are compared on."""
    text = url.strip()
    if "://" not in text:
        text = "//" + text
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").removeprefix("www.")
    except ValueError:
        return url.strip().lower()
    key = host + parts.path + (f"?{parts.query}" if parts.query else "")
    return key.rstrip("/")


def normalize_substring(entry: str) -> str:
    return _NON_ALNUM.sub("", entry.lower())


def url_host(url: str) -> str:
    try:
        return (urlsplit(url.strip() if "://" in url else "//" + url.strip()).hostname or "").strip(".")
    except ValueError:
        return ""


def parent_domains(host: str) -> list[str]:
    """`a.b.example.com` -> [`a.b.example.com`, `b.example.com`, `example.com`, `com`]."""
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts)) if parts[i]]


def key_hash(key: str) -> int:
    return int(xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass")))


def file_digest(path: str) -> str:
    """sha256 of a whole list file (an edit anywhere in a 100 MB list must change the version)."""
    fs, p = paths.filesystem(path)
    h = hashlib.sha256()
    try:
        with fs.open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"clean: block list {path} not found; fix the path or remove it from the config"
        ) from None
    return h.hexdigest()


def read_list(path: str) -> Iterator[str]:
    fs, p = paths.filesystem(path)
    with fs.open(p, "rt", encoding="utf-8", errors="replace") as f:
        yield from _entries(f)


def compile_hashes(files: list[str], kind: str) -> np.ndarray:
    """The sorted unique 64-bit hashes of the normalised entries of `files` (kind `domains` or `urls`)."""
    norm = normalize_domain if kind == "domains" else normalize_url
    chunks = [np.fromiter((key_hash(norm(e)) for e in read_list(f)), dtype=np.uint64) for f in files]
    return np.unique(np.concatenate(chunks)) if chunks else np.empty(0, np.uint64)


def save_array(path: str, arr: np.ndarray) -> None:
    fs, p = paths.filesystem(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "wb") as f:
        np.save(f, arr)


def load_array(path: str) -> np.ndarray:
    """A work array: memory-mapped on a local root (shared by the workers), read whole from an object store."""
    arr: np.ndarray
    if not paths.is_remote(path):
        arr = np.load(paths.local_path(path), mmap_mode="r")
        return arr
    fs, p = paths.filesystem(path)
    with fs.open(p, "rb") as f:
        arr = np.load(f)
    return arr


def _contains(sorted_hashes: np.ndarray, h: int) -> bool:
    i = int(np.searchsorted(sorted_hashes, np.uint64(h)))
    return i < len(sorted_hashes) and int(sorted_hashes[i]) == h


@dataclass(frozen=True)
class UrlFilter:
    """`blocked(url)` -> None, or (rule, what matched). Rules in order: domain, url, word, soft_words, substring."""

    domains: np.ndarray
    urls: np.ndarray
    substrings: tuple[str, ...]
    hard_words: frozenset[str]
    soft_words: frozenset[str]
    soft_word_threshold: int

    def blocked(self, url: str) -> tuple[str, str] | None:
        if not url:
            return None
        if len(self.domains):
            for d in parent_domains(url_host(url)):
                if _contains(self.domains, key_hash(d)):
                    return "domain", d
        if len(self.urls) and _contains(self.urls, key_hash(key := normalize_url(url))):
            return "url", key
        lowered = url.lower()
        if self.hard_words or self.soft_words:
            words = set(_NON_ALNUM.split(lowered))
            hard = sorted(words & self.hard_words)
            if hard:
                return "word", hard[0]
            soft = sorted(words & self.soft_words)
            if len(soft) >= self.soft_word_threshold:
                return "soft_words", ",".join(soft)
        if self.substrings:
            flat = _NON_ALNUM.sub("", lowered)
            for s in self.substrings:
                if s in flat:
                    return "substring", s
        return None


def substrings_of(files: list[str]) -> list[str]:
    return sorted({s for f in files for s in map(normalize_substring, read_list(f)) if s})


def save_substrings(path: str, substrings: list[str]) -> None:
    fs, p = paths.filesystem(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as f:
        json.dump(substrings, f)


def load_substrings(path: str) -> tuple[str, ...]:
    fs, p = paths.filesystem(path)
    with fs.open(p, "r") as f:
        return tuple(json.load(f))


@functools.lru_cache(maxsize=4)
def url_filter(
    domains_path: str | None,
    urls_path: str | None,
    substrings_path: str | None,
    builtin_words: bool,
    soft_word_threshold: int,
) -> UrlFilter:
    """One filter per process and configuration, from the lists compiled under the version's `_work/` (the
    hash arrays memory-mapped), so workers never read the users' list files."""
    empty = np.empty(0, np.uint64)
    return UrlFilter(
        domains=load_array(domains_path) if domains_path else empty,
        urls=load_array(urls_path) if urls_path else empty,
        substrings=load_substrings(substrings_path) if substrings_path else (),
        hard_words=frozenset(HARD_WORDS if builtin_words else ()),
        soft_words=frozenset(SOFT_WORDS if builtin_words else ()),
        soft_word_threshold=soft_word_threshold,
    )


def describe_lists(files: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The version's record of the list files: kind, path, sha256 of the content (in order)."""
    return [{"kind": k, "path": f, "sha256": file_digest(f)} for k in LIST_KINDS for f in files.get(k, [])]
