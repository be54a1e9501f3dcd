"""E-mail addresses found and replaced in any text: the privacy guard's and the logs' scrubber.

Internationalized addresses count (RFC 6531), and so do percent-encoded ones (an address in a URL).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

# An e-mail address, internationalized ones included (RFC 6531: UTF-8 local parts, IDN domains
# as U-labels or xn-- A-labels, the ideographic full stops IDNA reads as dots). Each part is one
# character class, so the regex engine runs its fast single-class loops:
# * local part: ASCII letters, digits and ``._%+-``, or any non-ASCII character that is not a
#   space; at most 64 characters (RFC 5321's limit), which keeps a scan linear: a match is
#   tried at every position, and an unbounded run before an ``@`` made that quadratic;
# * domain: two or more labels of ASCII letters, digits and ``-`` or non-ASCII non-space
#   characters, separated by ``.`` ``。`` ``．`` or ``｡``.
_LOCAL = r"[^\x00-\x24\x26-\x2a\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f\s]"
_LABEL = r"[^\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f\s\u3002\uff0e\uff61]"
_DOT = r"[.\u3002\uff0e\uff61]"
_EMAIL = re.compile(f"{_LOCAL}{{1,64}}@{_LABEL}+(?:{_DOT}{_LABEL}+)+")
EMAIL_PLACEHOLDER = "[email]"

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_MAILISH = re.compile(f"(?:{_LOCAL}|@)+")
"""Characters an address can be written in (the local-part class covers labels and dots)."""


def _decode_mailish(match: re.Match[str]) -> str:
    # Only escapes that decode to characters of an address are decoded, so scrubbing a
    # percent-encoded address never turns %0A into a line break in a log line.
    raw = match.group()
    text = unquote_to_bytes(raw).decode("utf-8", errors="surrogateescape")
    if _MAILISH.fullmatch(text):
        return text
    # A run mixing address characters with others (``%00%40`` before ``0.aa``): decode only
    # the address characters, so an address glued to other escapes is still found.
    return "".join(_mailish_char(char) for char in text)


def _mailish_char(char: str) -> str:
    if _MAILISH.fullmatch(char):
        return char
    if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8, kept as its escape
        return f"%{ord(char) - 0xDC00:02X}"
    return quote(char, safe="")


def scrub_emails(text: str) -> str:
    """``text`` with every e-mail address replaced by ``[email]``.

    Internationalized addresses count (see ``_EMAIL``), and so do percent-encoded ones
    (``j%C3%B6rg%40example.org`` in a URL): when decoding the escapes that can spell an
    address reveals one, the result is the decoded text, scrubbed.
    """
    if "%" in text:
        decoded = _ESCAPES.sub(_decode_mailish, text)
        if decoded != text:
            scrubbed = _EMAIL.sub(EMAIL_PLACEHOLDER, decoded)
            if scrubbed != decoded:
                return scrubbed
    return _EMAIL.sub(EMAIL_PLACEHOLDER, text) if "@" in text else text
