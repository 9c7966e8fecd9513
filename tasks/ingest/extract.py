"""HTML bytes -> main text: charset decoding, main-content extraction and a per-page time limit.

Decoding follows the browser order (WHATWG): a byte-order mark, then the HTTP `Content-Type` charset,
then a `<meta charset>` / `<meta http-equiv="Content-Type">` in the first 1024 bytes, then statistical
detection (`resiliparse.parse.encoding.detect_encoding`, uchardet). Labels are mapped to WHATWG names
(`iso-8859-1` -> `windows-1252`, `gb2312` -> `gbk`), as browsers do. A page with no BOM or label is
UTF-8 when its bytes are (nearly) valid UTF-8, whatever the statistical guess.

Nearly valid UTF-8 (`utf8_repairable`): the page is decoded as UTF-8 with U+FFFD for its invalid bytes
when they are at most 0.1% of the payload (at least 4 bytes are always allowed) AND the page has more
valid multi-byte characters than invalid bytes. Why: a real UTF-8 page with a stray byte (a string cut
mid-character, a pasted Windows-1252 quote) loses one character per invalid byte, while decoding the
whole page as Windows-1252 garbles every non-ASCII character ("MÃ¤scot"; before this rule 181 of the
181 benchmark pages with one injected byte came out garbled, under a `charset` of utf-8). The second
condition keeps legacy pages mislabelled as UTF-8 out: re-encoded as Windows-1252/1251, the benchmark
pages have valid multi-byte characters / invalid bytes <= 0.0007 (a mostly-ASCII English page in
cp1252 with two curly quotes is only 1e-5 invalid, so a fraction alone cannot tell).

When the declared (or guessed) encoding cannot decode the bytes, the fallbacks are, in order: UTF-8
(strict, then nearly valid), the statistical guess, Windows-1252, and at last the chosen encoding with
U+FFFD for what is invalid. `Decoded.encoding` is the codec the text really came from (the `charset`
column) and `Decoded.source` where that codec came from: `bom` / `http` / `meta` (the declaration
worked), `detected` (no declaration, or the declaration failed and UTF-8 validity or the statistical
guess decoded the page: e.g. a cp1251 page labelled UTF-8) or `fallback` (Windows-1252 or the forced
decode).

Extractors (measured with `bench/ingest.py` on the 181-page scrapinghub article benchmark, token F1,
and on the shared WARC files, CPU seconds):
- `trafilatura`: `trafilatura.extract(fast=True, favor_recall=True, include_comments=False)`,
  F1 0.964 (datatrove's `favor_precision` + fallback configuration: 0.960 at about twice the CPU).
  `fast` skips the readability/jusText fallback, which costs 2-3x the time on large pages and does
  not raise F1 here; `favor_recall` is both faster and better here than the default or precision.
  No cross-document `deduplicate` cache: it would make a document's text depend on which documents
  the same process saw before it, i.e. on sharding.
- `resiliparse`: `extract_plain_text(main_content=True)`, F1 0.915, about 8-10x faster.
Trafilatura's cost grows with the DOM, not the text: most pages take ~0.015 CPU s, but pages of huge
link tables take 1-3 s. `tasks.ingest` therefore hands a page to resiliparse when trafilatura has
not finished within `IngestParams.fallback_after_s`.

`time_limit` really interrupts a slow extraction, after a budget of CPU seconds: in a process's main
thread (Prefect's process pool, the CLI) with `SIGPROF` from `signal.setitimer(ITIMER_PROF)`; in any
other thread (Prefect's thread pool) a watchdog thread reads the extracting thread's CPU clock and
raises the exception in it with `PyThreadState_SetAsyncExc`. Both land between Python bytecodes, so a
single long C call (lxml parsing one huge page) finishes before the interrupt does.
"""

from __future__ import annotations

import codecs
import ctypes
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5

Extractor = Literal["trafilatura", "resiliparse"]
CharsetSource = Literal["bom", "http", "meta", "detected", "fallback"]

_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([a-z0-9_.:-]+)", re.IGNORECASE)
_HTML_SNIFF = re.compile(rb"<(!doctype\s+html|html|head|body|title|meta|div|p|table)[\s>/]", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
UTF8_MAX_INVALID_FRACTION = 0.001  # of the payload's bytes (see the module docstring)
UTF8_MIN_INVALID_ALLOWED = 4  # bytes: small pages may have this many whatever the fraction


class Decoded(NamedTuple):
    """A decoded page: text, the codec really used, where that codec came from, bytes replaced by U+FFFD."""

    text: str
    encoding: str
    source: CharsetSource
    replaced_bytes: int


class ExtractionTimeout(Exception):
    """Raised inside an extraction that ran past its time limit."""


def looks_like_html(payload: bytes) -> bool:
    """Sniff HTML in the first 1024 bytes (for responses without a Content-Type)."""
    return _HTML_SNIFF.search(payload[:1024]) is not None


def _python_codec(label: str | None) -> str | None:
    """WHATWG name for an encoding label, or None if unknown to WHATWG or to Python."""
    if not label:
        return None
    name = map_encoding_to_html5(label.strip().strip("\"'"), fallback_utf8=False)
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:  # WHATWG-only labels such as "replacement" or "x-user-defined"
        return None


def choose_charset(payload: bytes, http_charset: str | None) -> tuple[str, CharsetSource]:
    """The encoding to decode `payload` with, and where it came from."""
    for bom, name in _BOMS:
        if payload.startswith(bom):
            return name, "bom"
    if (codec := _python_codec(http_charset)) is not None:
        return codec, "http"
    match = _META_CHARSET.search(payload[:1024])
    if match and (codec := _python_codec(match.group(1).decode("ascii"))) is not None:
        # a page served as bytes cannot really be UTF-16 when its meta tag is ASCII-readable (WHATWG)
        return ("utf-8" if codec.startswith("utf-16") else codec), "meta"
    return _python_codec(detect_encoding(payload)) or "utf-8", "detected"


def utf8_repairable(payload: bytes) -> tuple[str, int] | None:
    """(text with U+FFFD, invalid bytes) if `payload` is nearly valid UTF-8 (module docstring), else None."""
    allowed = max(UTF8_MIN_INVALID_ALLOWED, int(len(payload) * UTF8_MAX_INVALID_FRACTION))
    view, pos, invalid, parts = memoryview(payload), 0, 0, []
    while True:
        try:
            parts.append(codecs.utf_8_decode(view[pos:], "strict", True)[0])
            break
        except UnicodeDecodeError as e:  # e.start/e.end are relative to view[pos:]
            parts += [codecs.utf_8_decode(view[pos : pos + e.start], "strict", True)[0], "\ufffd"]
            invalid += e.end - e.start
            pos += e.end
            if invalid > allowed:
                return None
    text = "".join(parts)
    multibyte = len(text) - len(text.encode("ascii", "ignore")) - (len(parts) - 1) // 2
    return (text, invalid) if multibyte > invalid else None


def _strict(payload: bytes, codec: str) -> str | None:
    try:
        text = payload.decode(codec)
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text  # a BOM is not text


def decode_html(payload: bytes, http_charset: str | None) -> Decoded:
    """Decode an HTML payload (order and fallbacks: module docstring). Raises LookupError for an unknown codec."""
    encoding, source = choose_charset(payload, http_charset)
    if source != "detected" and (text := _strict(payload, encoding)) is not None:
        return Decoded(text, encoding, source, 0)
    # nothing declared, or the declaration failed: UTF-8 first (uchardet can guess cp1252 for UTF-8 bytes)
    utf8_source: CharsetSource = source if encoding == "utf-8" else "detected"
    if (source == "detected" or encoding != "utf-8") and (text := _strict(payload, "utf-8")) is not None:
        return Decoded(text, "utf-8", utf8_source, 0)
    if (repaired := utf8_repairable(payload)) is not None:
        text = repaired[0]
        return Decoded(text[1:] if text.startswith("\ufeff") else text, "utf-8", utf8_source, repaired[1])
    guess = encoding if source == "detected" else _python_codec(detect_encoding(payload))
    if guess and guess != "utf-8" and (text := _strict(payload, guess)) is not None:
        return Decoded(text, guess, "detected", 0)
    if (text := _strict(payload, "cp1252")) is not None:
        return Decoded(text, "cp1252", "fallback", 0)
    text = payload.decode(encoding, errors="replace")
    return Decoded(text[1:] if text.startswith("\ufeff") else text, encoding, "fallback", text.count("\ufffd"))


def prepare_extractor(extractor: Extractor) -> None:
    """Import the extractor's library. Call it outside any time limit: the first import of trafilatura
    costs ~0.3 CPU s, which would otherwise be charged to the first page of every worker process."""
    if extractor == "trafilatura":
        import trafilatura  # noqa: F401


def extract_main_text(html: str, extractor: Extractor) -> str:
    """Main text of an HTML page ('' if the extractor finds none). No time limit: see `time_limit`."""
    if extractor == "resiliparse":
        return str(
            extract_plain_text(html, main_content=True, preserve_formatting=True, list_bullets=False, alt_texts=False)
        ).strip()
    import trafilatura  # imported on first use (see prepare_extractor): workers that never see HTML skip it

    text = trafilatura.extract(html, fast=True, favor_recall=True, include_comments=False, deduplicate=False)
    return (text or "").strip()


@contextmanager
def time_limit(cpu_seconds: float) -> Iterator[None]:
    """Raise `ExtractionTimeout` in the current thread once the block has used `cpu_seconds` of CPU.

    CPU time rather than wall time, so that whether a page times out does not depend on how busy the
    machine is (the same input gives the same output on a rerun)."""
    in_main = threading.current_thread() is threading.main_thread()
    # an outer ITIMER_PROF (a profiler, a caller's own limit) must not be clobbered: use the watchdog then
    if in_main and signal.getitimer(signal.ITIMER_PROF)[0] == 0.0:
        with _profiling_timer(cpu_seconds):
            yield
    else:
        with _watchdog(cpu_seconds):
            yield


def _raise_timeout(signum: int, frame: object) -> None:
    raise ExtractionTimeout()


@contextmanager
def _profiling_timer(cpu_seconds: float) -> Iterator[None]:
    """SIGPROF after `cpu_seconds` of process CPU time (only usable in the main thread)."""
    previous = signal.signal(signal.SIGPROF, _raise_timeout)
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


@contextmanager
def _watchdog(cpu_seconds: float) -> Iterator[None]:
    """A helper thread watches this thread's CPU clock and raises the timeout in it asynchronously."""
    ident = threading.get_ident()
    clock = time.pthread_getcpuclockid(ident)
    deadline = time.clock_gettime(clock) + cpu_seconds
    lock, done = threading.Lock(), threading.Event()
    fired = False

    def watch() -> None:
        nonlocal fired
        # a thread uses at most one CPU second per wall second, so sleeping the CPU time left is safe
        while not done.wait(max(deadline - time.clock_gettime(clock), 0.001)):
            with lock:
                if not done.is_set() and time.clock_gettime(clock) >= deadline:
                    fired = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(ExtractionTimeout)
                    )
                    return

    watcher = threading.Thread(target=watch, name="extraction-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        with lock:
            done.set()
        if fired:
            # the exception may still be pending (the block finished just as it fired): clear it so that
            # it cannot surface after this context manager has exited
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
