"""PII redaction for the clean stage: e-mail addresses, phone numbers, IPv4/IPv6 addresses -> placeholders.

- e-mail: RFC 5322 local part (datatrove's `PIIFormatter` character set), `@`, dot-separated host labels and
  an alphabetic top-level label of 2+ letters (datatrove also takes digits there and IP literals); kept when
  the host or a parent of it is in `email_allow_domains` (RFC 2606: example.com/.org/.net, .example, .test).
- IPv4: four dotted decimal octets, not inside a longer dotted number (`1.2.3.4.5` is a version string) and
  not glued to a Latin letter or digit (`black9.69.49.8Hispanic` is a flattened table of percentages, as on
  cdc.gov pages of the real crawl; datatrove has neither boundary and redacts those). IPv6: colon-hex
  candidates validated by `ipaddress`. With `ip_public_only` (datatrove's default) only globally routable
  addresses are PII: private, loopback and the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
  203.0.113.0/24, 2001:db8::/32) are kept; so is any address in `ip_allow_networks`.
- phone (datatrove has none): `+CC ...` with 8-15 digits in all (E.164's bound), or the North American
  `(555) 123-4567` / `555-123-4567` / `1-555.123.4567` / `555 123 4567` shapes with one consistent separator
  (ten bare digits are not taken: they are ids and amounts as often as phones). Not inside a longer run of
  digits, but a letter may touch it: extraction glues table cells (`Phone: (803) 593-9231Fax: ...`).
Cheap literal-led guards skip a pattern on texts that cannot hold a match; e-mails are matched only inside the
whitespace-delimited spans around an `@` (8x faster than datatrove's two passes, bench/clean.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

EMAIL_RE = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63})\b"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![A-Za-z0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![A-Za-z0-9]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
PHONE_RE = re.compile(
    r"(?<![\d+-])(?:\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,5}"
    r"|\(\d{3}\) ?\d{3}[-. ]\d{4}"
    r"|(?:1[-. ])?\d{3}([-. ])\d{3}\1\d{4})(?!-?\d)"
)
# Guards: a full pattern runs only on texts where one of these literal-led searches hits (a literal first
# character lets the regex engine skip ahead; the full patterns try every position: 10-40x slower).
_IPV4_HINTS = (re.compile(r"\.\d{1,3}\.\d{1,3}\.\d"),)
_IPV6_HINTS = (re.compile(r"::"), re.compile(r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:"))
_PHONE_HINTS = tuple(
    re.compile(p) for p in (r"\+\d", r"\(\d{3}\)", r"-\d{3}-\d{4}", r"\.\d{3}\.\d{4}", r" \d{3} \d{4}")
)
_SPACE = " \n\t\r"


@dataclass(frozen=True)
class PiiConfig:
    kinds: frozenset[str]
    email_placeholder: str
    phone_placeholder: str
    ip_placeholder: str
    email_allow_domains: frozenset[str]
    ip_public_only: bool
    ip_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass
class Redaction:
    """One document's redaction: the new text, matches per kind, allowed (kept) matches, characters replaced and
    the values replaced."""

    text: str
    found: dict[str, int] = field(default_factory=dict)
    allowed: dict[str, int] = field(default_factory=dict)
    chars: int = 0
    replaced: list[str] = field(default_factory=list)  # the values replaced (to mask them in report samples)

    @property
    def total(self) -> int:
        return sum(self.found.values())


def _email_allowed(host: str, allow: frozenset[str]) -> bool:
    parts = host.lower().split(".")
    return any(".".join(parts[i:]) in allow for i in range(len(parts)))


def ip_is_pii(text: str, cfg: PiiConfig) -> bool | None:
    """True: a PII address; False: an allowed address; None: not an address at all."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if any(ip.version == n.version and ip in n for n in cfg.ip_allow_networks):
        return False
    return ip.is_global or not cfg.ip_public_only


Verdict = Callable[[re.Match[str]], "bool | None"]


def _sub(pattern: re.Pattern[str], text: str, verdict: Verdict, placeholder: str, out: Redaction, kind: str) -> str:
    """`pattern.sub` with a verdict per match (True: replace, False: allowed, None: not PII); counts into `out`."""

    def replace(m: re.Match[str]) -> str:
        v = verdict(m)
        if not v:
            if v is False:
                out.allowed[kind] = out.allowed.get(kind, 0) + 1
            return m.group(0)
        out.found[kind] = out.found.get(kind, 0) + 1
        out.chars += m.end() - m.start()
        out.replaced.append(m.group(0))
        return placeholder

    return pattern.sub(replace, text)


def _at_tokens(text: str) -> list[tuple[int, int]]:
    """The whitespace-delimited spans holding an `@`: an address never spans whitespace, and both ends of a
    span are a string edge or whitespace, so the e-mail pattern matches the same inside a span as in the text."""
    spans = []
    i = text.find("@")
    while i != -1:
        start = max(text.rfind(c, 0, i) for c in _SPACE) + 1
        ends = [e for e in (text.find(c, i) for c in _SPACE) if e != -1]
        end = min(ends) if ends else len(text)
        spans.append((start, end))
        i = text.find("@", end)
    return spans


def _email_sub(text: str, cfg: PiiConfig, out: Redaction) -> str:
    spans = _at_tokens(text)
    if not spans:
        return text
    verdict: Verdict = lambda m: not _email_allowed(m.group(1), cfg.email_allow_domains)  # noqa: E731
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], _sub(EMAIL_RE, text[start:end], verdict, cfg.email_placeholder, out, "email")]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _phone_ok(m: re.Match[str]) -> bool | None:
    s = m.group(0)
    if not s.startswith("+"):
        return True
    return True if 8 <= sum(c.isdigit() for c in s) <= 15 else None


def redact(text: str, cfg: PiiConfig) -> Redaction:
    """Replace the configured PII kinds in `text` with their placeholders (e-mail, then IPs, then phones)."""
    out = Redaction(text)
    if "email" in cfg.kinds:
        text = _email_sub(text, cfg, out)
    ip: Verdict = lambda m: ip_is_pii(m.group(0), cfg)  # noqa: E731
    steps: list[tuple[str, tuple[re.Pattern[str], ...], re.Pattern[str], str, Verdict]] = []
    if "ip" in cfg.kinds:
        steps += [
            ("ip", _IPV4_HINTS, IPV4_RE, cfg.ip_placeholder, ip),
            ("ip", _IPV6_HINTS, IPV6_RE, cfg.ip_placeholder, ip),
        ]
    if "phone" in cfg.kinds:
        steps.append(("phone", _PHONE_HINTS, PHONE_RE, cfg.phone_placeholder, _phone_ok))
    for kind, hints, pattern, placeholder, verdict in steps:
        if any(h.search(text) for h in hints):
            text = _sub(pattern, text, verdict, placeholder, out, kind)
    out.text = text
    return out


def masked(text: str, values: list[str]) -> str:
    """`text` with each replaced value cut to its first 3 characters + `***`: report samples show where PII was
    without publishing it (the Prefect artifact and the manifest are read by more people than the data)."""
    for v in sorted(set(values), key=len, reverse=True):
        text = text.replace(v, v[:3] + "***")
    return text
