"""English prose and Python code for the demo crawl (`demo.crawl`), all from the Python 3.11 stdlib.

Nothing is downloaded and nothing depends on installed package versions: the texts come with the
interpreter, so a (pages, seed) pair gives the same crawl on every install of the same Python release
(docstrings can change between releases; the warcinfo record names the version). Provenance ids:
- `python-stdlib-docstring:<module>`: module, class and function docstrings of a standard-library
  `.py` file under `sysconfig.get_paths()["stdlib"]`, read with `ast` (nothing is imported). Parts
  some distributions ship separately (idlelib, tkinter, lib2to3, distutils, tests) are left out.
- `python-stdlib-comments:<module>`: runs of full-line `#` comments in the same files.
- `python-pydoc-topic:<topic>`: the language-reference help topics in `pydoc_data.topics`.
- `python-builtin-docstring:<module>`: docstrings of C modules every Linux build has (`builtins`,
  `posix`, `_io`, `_decimal`, ...), their functions, types and methods (`inspect.getdoc`).
- `python-stdlib-source:<module>.<qualname>`: source of short public functions (the code pages).

A paragraph is kept only if it reads as running text: >= 10 words, >= 75% letter-bearing tokens
(`alpha_ratio`, punctuation counted as tokens as in Gopher), terminal punctuation, and none of `{`,
`}`, `#` (C4 drops pages with braces; Gopher counts hashes), a trailing `...`, URLs, doctest prompts,
"lorem ipsum"/"javascript" (C4), copyright or TODO lines. `ProseStream` hands each paragraph out once
(about 224k words, 1.3 MB: ~430 pages of the default mix) in a fixed order; after that it continues
with reshuffled used paragraphs (provenance `remix:<id>`), so crawls beyond ~430 pages repeat text.
Also here: the text measures the page builders and tests share (`page_text`, `jaccard` on word
5-grams via `tasks.text`, `alpha_ratio`, `duplicate_line_share`).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import os
import random
import re
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tasks.text import ngrams, words

# Parts of the stdlib that some distributions ship separately (Debian: idle, tk, lib2to3, distutils)
# or that vary per install (site-packages): leaving them out keeps the pool the same everywhere.
_SKIP_PARTS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "distutils",
    "site-packages",
    "pydoc_data",
    "__phello__",
    "encodings",
}  # encodings: generated codec stubs
_SKIP_PREFIXES = ("_sysconfigdata", "sitecustomize", "_distutils_system_mod")
# Modules compiled from CPython's own sources on every Linux build (no optional system library).
BUILTIN_MODULES = (
    "builtins",
    "sys",
    "math",
    "cmath",
    "itertools",
    "time",
    "gc",
    "posix",
    "_socket",
    "_decimal",
    "_io",
    "select",
    "mmap",
    "array",
    "unicodedata",
    "binascii",
    "_pickle",
    "_csv",
    "_struct",
    "_operator",
    "_collections",
    "_signal",
    "_thread",
    "faulthandler",
    "_codecs",
    "_asyncio",
    "_contextvars",
    "pyexpat",
    "fcntl",
    "termios",
    "_stat",
    "marshal",
    "_datetime",
    "_heapq",
    "_bisect",
    "_queue",
    "_lsprof",
)

_BLANK = re.compile(r"\n\s*\n")
_WS = re.compile(r"\s+")
_BULLET = re.compile(r"^(?:[*+-]|\d+\.)\s+")
_REJECT = re.compile(r"[{}#]|>>>|\.\.\.$|://|lorem ipsum|javascript|copyright|\btodo\b|fixme|\bxxx\b", re.IGNORECASE)
_UNDERLINE = re.compile(r"^([*=~^-])\1{2,}$")
_TERMINAL = (".", "!", "?", ":", ".)")
_CORE = re.compile(r"\w(?:.*\w)?", re.DOTALL)
MIN_ALPHA_RATIO = 0.75
MIN_PARAGRAPH_WORDS = 10
MIN_CODE_ALPHA_RATIO = 0.65
REMIX_TITLE = "Notes on the Python standard library"
# The pool is read in one fixed order whatever the crawl's seed (the seed picks passage lengths and
# samples), so small crawls parse the same few files and a process parses each file once.
POOL_ORDER_SEED = "demo-crawl-pool-v1"

BlockKind = Literal["h2", "p", "pre", "li"]


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    text: str


@dataclass(frozen=True, slots=True)
class SourceDoc:
    title: str
    provenance: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class CodeSnippet:
    provenance: str
    name: str
    code: str


@dataclass(frozen=True, slots=True)
class StdlibFile:
    module: str
    docs: tuple[SourceDoc, ...]
    snippets: tuple[CodeSnippet, ...]


@dataclass(slots=True)
class Passage:
    title: str
    blocks: list[Block] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)
    headings: set[str] = field(default_factory=set)


def page_text(title: str, blocks: list[Block]) -> str:
    """The main text of a page as written: the title, then one line (or `pre` block) per block."""
    return "\n".join([title, *(b.text for b in blocks)])


def shingles(text: str, n: int = 5) -> set[str]:
    return set(ngrams(words(text), n))


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Word n-gram Jaccard similarity with the shared normaliser of dedup (`tasks.text.words`)."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def gopher_tokens(text: str) -> list[str]:
    """Whitespace words with leading and trailing punctuation split off one character at a time, close
    to the spaCy split that Gopher's rules are tuned on (punctuation counts as a word)."""
    tokens: list[str] = []
    for chunk in text.split():
        core = _CORE.search(chunk)
        if core is None:
            tokens += chunk
        else:
            tokens += [*chunk[: core.start()], core.group(), *chunk[core.end() :]]
    return tokens


def alpha_ratio(text: str) -> float:
    """Share of `gopher_tokens` with a letter; Gopher drops documents below 0.8."""
    tokens = gopher_tokens(text)
    return sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens) if tokens else 0.0


def duplicate_line_share(text: str) -> float:
    """Share of characters in repeated lines (FineWeb drops documents above 0.01)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    seen: set[str] = set()
    repeated = 0
    for line in lines:
        repeated += len(line) if line in seen else 0
        seen.add(line)
    return repeated / max(1, len(text.replace("\n", "")))


def clean_paragraph(lines: list[str]) -> str | None:
    """One reflowed prose paragraph, or None if the lines are not running text."""
    text = _WS.sub(" ", re.sub(r"[*`]", "", _BULLET.sub("", " ".join(s.strip() for s in lines)))).strip()
    tokens = text.split()
    if len(tokens) < MIN_PARAGRAPH_WORDS or _REJECT.search(text):
        return None
    if alpha_ratio(text) < MIN_ALPHA_RATIO:
        return None
    if text[-1].isalpha():
        text += "."
    return text if text.endswith(_TERMINAL) else None


def split_paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring or help text; indented blocks (code, grammar) are skipped."""
    out = []
    for chunk in _BLANK.split(doc):
        lines = [s for s in chunk.splitlines() if s.strip()]
        if not lines or lines[0][0].isspace() or any(_UNDERLINE.match(s.strip()) for s in lines):
            continue
        if not _BULLET.match(lines[0]) and any(s[0].isspace() for s in lines[1:]):
            continue
        para = clean_paragraph(lines)
        if para:
            out.append(para)
    return out


def comment_paragraphs(source: str) -> list[str]:
    """Prose paragraphs made of runs of full-line `#` comments (a bare `#` line splits paragraphs)."""
    groups: list[list[str]] = [[]]
    for line in source.splitlines():
        stripped = line.strip()
        body = stripped.lstrip("#").strip()
        if stripped.startswith("#") and not stripped.startswith("#!") and body:
            groups[-1].append(body)
        elif groups[-1]:
            groups.append([])
    return [p for g in groups if g and (p := clean_paragraph(g))]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[str, ...]:
    """Relative paths of the standard-library `.py` files the pool reads, sorted."""
    root = stdlib_root()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS]
        rel = Path(dirpath).relative_to(root)
        found += [str(rel / f) for f in filenames if f.endswith(".py") and not f.startswith(_SKIP_PREFIXES)]
    return tuple(sorted(found))


def _module_name(relpath: str) -> str:
    parts = relpath[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_title(module: str, doc: str) -> tuple[str, str]:
    """The page title a module docstring suggests (its one-line summary) and the rest of the docstring."""
    first, _, rest = doc.strip().partition("\n\n")
    first = first.strip().rstrip(".")
    if "\n" not in first and 2 <= len(first.split()) <= 12 and not _REJECT.search(first):
        return first, rest
    return f"The {module} module", doc


def _walk_defs(
    node: ast.AST, prefix: str
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{child.name}", child
            yield from _walk_defs(child, f"{prefix}{child.name}.")


def _docstring_blocks(pairs: list[tuple[str, str]]) -> tuple[Block, ...]:
    """Paragraphs per (heading, docstring); a heading only where its docstring kept a paragraph."""
    blocks: list[Block] = []
    for heading, doc in pairs:
        paragraphs = split_paragraphs(doc)
        if paragraphs and heading:
            blocks.append(Block("h2", heading))
        blocks.extend(Block("p", p) for p in paragraphs)
    return tuple(blocks)


def _snippet(module: str, qualname: str, node: ast.AST, lines: list[str]) -> CodeSnippet | None:
    """Source of one public function if it is short and brace-free (C4 drops pages with braces)."""
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)), f"not a function: {qualname}"
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = node.end_lineno or node.lineno
    if node.name.startswith("_") or not 8 <= end - start + 1 <= 30 or ast.get_docstring(node) is None:
        return None
    code = textwrap.dedent("\n".join(lines[start - 1 : end]))
    if re.search(r"[{}\t]", code) or code.count("#") > 2 or max(map(len, code.splitlines())) > 99:
        return None
    if alpha_ratio(code) < MIN_CODE_ALPHA_RATIO:  # docstring-rich functions keep code pages above 0.8
        return None
    return CodeSnippet(f"python-stdlib-source:{module}.{qualname}", qualname, code)


@functools.cache
def parse_stdlib_file(relpath: str) -> StdlibFile:
    """Docstring and comment prose plus code snippets of one stdlib file (cached per process)."""
    module = _module_name(relpath)
    source = (stdlib_root() / relpath).read_text(encoding="utf-8")
    tree = ast.parse(source)
    title, module_doc = _module_title(module, ast.get_docstring(tree) or "")
    pairs = [("", module_doc)]
    defs = list(_walk_defs(tree, ""))
    pairs += [(name, ast.get_docstring(node) or "") for name, node in defs]
    lines = source.splitlines()
    snippets = [
        s for name, node in defs if not isinstance(node, ast.ClassDef) and (s := _snippet(module, name, node, lines))
    ]
    docs = (
        SourceDoc(title, f"python-stdlib-docstring:{module}", _docstring_blocks(pairs)),
        SourceDoc(
            f"Implementation notes on {module}",
            f"python-stdlib-comments:{module}",
            tuple(Block("p", p) for p in comment_paragraphs(source)),
        ),
    )
    return StdlibFile(module, docs, tuple(snippets))


def _topic_doc(key: str) -> list[SourceDoc]:
    from pydoc_data.topics import topics

    text: str = topics[key]
    title = text.strip().splitlines()[0].strip()
    return [SourceDoc(title, f"python-pydoc-topic:{key}", _docstring_blocks([("", text)]))]


def _file_docs(relpath: str) -> list[SourceDoc]:
    return list(parse_stdlib_file(relpath).docs)


def _builtin_doc(name: str) -> list[SourceDoc]:
    if importlib.util.find_spec(name) is None:  # only off Linux (no posix, fcntl, termios on Windows)
        return []
    module = importlib.import_module(name)
    pairs = [("", inspect.getdoc(module) or "")]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not (callable(obj) or inspect.isclass(obj)):
            continue
        pairs.append((attr, inspect.getdoc(obj) or ""))
        if inspect.isclass(obj):
            pairs += [
                (f"{attr}.{m}", inspect.getdoc(v) or "")
                for m, v in sorted(vars(obj).items())
                if not m.startswith("_") and isinstance(getattr(v, "__doc__", None), str)
            ]
    title = "Built-in functions and types" if module is builtins else f"The built-in {name} module"
    return [SourceDoc(title, f"python-builtin-docstring:{name}", _docstring_blocks(pairs))]


def _doc_loaders(rng: random.Random) -> list[Callable[[], list[SourceDoc]]]:
    """Loaders of every source doc; the files of one top-level package stay together (pages read as
    being about one topic), the groups are shuffled."""
    from pydoc_data.topics import topics

    groups: dict[str, list[Callable[[], list[SourceDoc]]]] = {}
    for key in sorted(topics):
        groups[f"topic:{key}"] = [functools.partial(_topic_doc, key)]
    for name in BUILTIN_MODULES:
        groups[f"builtin:{name}"] = [functools.partial(_builtin_doc, name)]
    for rel in stdlib_files():
        groups.setdefault(f"file:{rel.split('/')[0].removesuffix('.py')}", []).append(
            functools.partial(_file_docs, rel)
        )
    order = list(groups)
    rng.shuffle(order)
    return [loader for key in order for loader in groups[key]]


class ProseStream:
    """Hands out passages of English prose in a seeded order, each paragraph once (then remixes)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}:prose")
        self._used: list[tuple[SourceDoc, Block]] = []
        self._deferred: list[tuple[SourceDoc, Block]] = []
        self._blocks = self._iter_blocks()

    def _iter_blocks(self) -> Iterator[tuple[SourceDoc, Block]]:
        seen: set[str] = set()
        for load in _doc_loaders(random.Random(POOL_ORDER_SEED)):
            for doc in load():
                for block in doc.blocks:
                    if block.kind == "p" and block.text in seen:
                        continue
                    if block.kind == "p":
                        seen.add(block.text)
                        self._used.append((doc, block))
                    yield doc, block
        assert self._used, "the stdlib prose pool is empty"
        while True:  # pool used up: reshuffled paragraphs under one title, sources kept as `remix:`
            pool = list(self._used)
            self._rng.shuffle(pool)
            for doc, block in pool:
                yield SourceDoc(REMIX_TITLE, f"remix:{doc.provenance}", ()), block

    def _next(self, min_alpha: float) -> tuple[SourceDoc, Block]:
        """The next block; paragraphs below `min_alpha` are set aside and mixed into later passages."""
        if not min_alpha and self._deferred and self._rng.random() < 0.3:
            return self._deferred.pop(0)
        while True:
            doc, block = next(self._blocks)
            if block.kind != "p" or not min_alpha or alpha_ratio(block.text) >= min_alpha:
                return doc, block
            self._deferred.append((doc, block))

    def take(self, min_words: int, max_words: int, min_alpha: float = 0.0) -> Passage:
        """Paragraphs totalling a random word count in [min_words, max_words + a paragraph), in order.

        A paragraph sharing over 20% of its word 5-grams with the passage so far waits for a later one, so
        that sibling docstrings ("Return True if ...") do not trip Gopher's duplicated n-gram rules.
        `min_alpha` asks for paragraphs with a high alpha-word share (to dilute code on a page)."""
        target = self._rng.randint(min_words, max_words)
        passage, heading, count = Passage(""), None, 0
        seen: set[str] = set()
        while count < target:
            doc, block = self._next(min_alpha)
            if block.kind == "h2":
                heading = (doc, block)
                continue
            grams = shingles(block.text)
            if len(grams & seen) > 0.2 * len(grams):
                self._deferred.append((doc, block))
                continue
            seen |= grams
            if not passage.title:
                passage.title = doc.title
            elif doc.title not in passage.headings:  # a repeated heading would be a duplicated line
                passage.blocks.append(Block("h2", doc.title))
            passage.headings.add(doc.title)
            if doc.provenance not in passage.provenance:
                passage.provenance.append(doc.provenance)
            if heading is not None and heading[0] is doc:
                passage.blocks.append(heading[1])
            heading = None
            passage.blocks.append(block)
            count += len(block.text.split())
        return passage
