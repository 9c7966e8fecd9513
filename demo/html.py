"""HTML and image bodies of the demo crawl (`demo.crawl`): site chrome around the main text.

Every HTML page carries what a main-text extractor has to strip: a head with stylesheet and scripts,
a header with logo, navigation and search form, a sidebar (the same on every page of a site, so it
repeats across documents), a footer with links, a copyright line and a cookie banner, and an inline
analytics script. The main text is the `<article>`: an `<h1>` title, then the page's blocks (`h2`,
`p`, `pre`; a run of `li` blocks becomes one `<ul>`). Site names, navigation and sidebar labels come
from `demo/data/demo_texts.json` ("sites"). Also here: the 301 body (nginx's), the page without text
(icon-only navigation and a client-side script) and a small generated PNG.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass
from html import escape
from typing import Any

from demo.text import Block

_HEAD = (
    '<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="{charset}">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title} | {site}</title>\n'
    '<link rel="canonical" href="{url}">\n<link rel="stylesheet" href="/static/css/site.css">\n'
    '<script async src="/static/js/analytics.js"></script>\n</head>\n'
)
_ANALYTICS = (
    "<script>window.dataLayer = window.dataLayer || []; function gtag() "
    '{ dataLayer.push(arguments); } gtag("js", new Date()); gtag("config", "G-DEMO");</script>\n'
)
_COOKIES = (
    '<div class="cookie-banner" role="dialog">We use cookies to improve your experience and to '
    'measure traffic. <button type="button">Accept</button> <button type="button">Decline</button></div>\n'
)


@dataclass(frozen=True, slots=True)
class Site:
    source: str  # the coarse category its URLs imply (wikipedia, code, academic, news, forum, web)
    host: str
    name: str
    path: str
    nav: tuple[str, ...]
    sidebar_title: str
    sidebar: tuple[str, ...]
    footer: tuple[str, ...]
    notice: str

    @classmethod
    def from_dict(cls, source: str, d: dict[str, Any]) -> Site:
        return cls(
            source,
            d["host"],
            d["name"],
            d["path"],
            tuple(d["nav"]),
            d["sidebar_title"],
            tuple(d["sidebar"]),
            tuple(d["footer"]),
            d["notice"],
        )


def _links(labels: tuple[str, ...]) -> str:
    return "".join(f'<li><a href="/{escape("-".join(x.lower().split()))}">{escape(x)}</a></li>' for x in labels)


def render_blocks(blocks: list[Block]) -> str:
    out: list[str] = []
    for i, block in enumerate(blocks):
        if block.kind == "li" and (i == 0 or blocks[i - 1].kind != "li"):
            out.append("<ul>")
        if block.kind == "pre":
            out.append(f'<pre><code class="language-python">{escape(block.text)}</code></pre>')
        else:
            out.append(f"<{block.kind}>{escape(block.text)}</{block.kind}>")
        if block.kind == "li" and (i + 1 == len(blocks) or blocks[i + 1].kind != "li"):
            out.append("</ul>")
    return "\n".join(out) + "\n"


def render_page(site: Site, url: str, title: str, blocks: list[Block], lang: str | None, charset: str) -> bytes:
    """A full HTML page with the site's chrome around `title` and `blocks`, encoded in `charset`."""
    page = (
        _HEAD.format(lang=lang or "en", charset=charset, title=escape(title), site=escape(site.name), url=escape(url))
        + f'<body>\n<header class="site-header">\n<a class="logo" href="/">{escape(site.name)}</a>\n'
        + f'<nav class="main-nav"><ul>{_links(site.nav)}</ul></nav>\n'
        + '<form class="search" action="/search"><input type="search" name="q" placeholder="Search">'
        + '<button type="submit">Search</button></form>\n</header>\n<div class="layout">\n'
        + f'<main id="content">\n<article>\n<h1>{escape(title)}</h1>\n{render_blocks(blocks)}</article>\n</main>\n'
        + f'<aside class="sidebar">\n<h3>{escape(site.sidebar_title)}</h3>\n<ul>{_links(site.sidebar)}</ul>\n'
        + f'<p class="promo">{escape(site.notice)}</p>\n</aside>\n</div>\n'
        + f'<footer class="site-footer">\n<ul>{_links(site.footer)}</ul>\n'
        + f"<p>&copy; 2024 {escape(site.name)}. All rights reserved.</p>\n{_COOKIES}</footer>\n"
        + _ANALYTICS
        + "</body>\n</html>\n"
    )
    return page.encode(charset)


def render_no_text(site: Site, url: str) -> bytes:
    """An HTML page whose body has no text at all: icon-only navigation and a client-side app script."""
    icons = "".join(
        f'<a href="/{i}" aria-label="{escape(label)}"><svg width="24" height="24" '
        f'viewBox="0 0 24 24"><circle cx="12" cy="12" r="{4 + i}"/></svg></a>'
        for i, label in enumerate(site.nav)
    )
    page = (
        _HEAD.format(lang="en", charset="utf-8", title="", site=escape(site.name), url=escape(url))
        + f'<body>\n<nav class="icon-nav">{icons}</nav>\n<div id="app"></div>\n'
        + '<script src="/static/js/app.bundle.js"></script>\n'
        + '<script>document.getElementById("app").dataset.state = "loading"; window.__BOOT__ = '
        + "{ route: location.pathname, lazy: true };</script>\n"
        + _ANALYTICS
        + "</body>\n</html>\n"
    )
    return page.encode("utf-8")


def render_redirect() -> bytes:
    """The body nginx sends with a 301."""
    return (
        b"<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n"
        b"<center><h1>301 Moved Permanently</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(rng: random.Random, size: int = 32) -> bytes:
    """A valid RGB PNG with a seeded colour gradient."""
    r, g, b = (rng.randrange(256) for _ in range(3))
    rows = (
        b"\x00" + bytes(v for x in range(size) for v in ((r + 4 * x) % 256, (g + 4 * y) % 256, b)) for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _png_chunk(b"IEND", b"")
    )
