"""The one trust boundary for text from issues, PRs and agents.

`for_terminal()` makes text safe to show (no control sequence, no invisible or reordering character
survives); `for_prompt()` makes text safe to hand to an agent (nothing hidden from the human who approved it
survives). Everyone calls these; nobody writes a second sanitizer.

Every pattern here runs in time linear in the length of the text: bodies of any size come from strangers.
"""

from __future__ import annotations

import re

# A control string (OSC, DCS, SOS, PM, APC) ends at its terminator, or, when it has none, at the end of its
# line: the text on the following lines survives. 7-bit and 8-bit introducers both count.
_CSI_TAIL = r"[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
_OSC_TAIL = r"[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"  # ... BEL | ST
_STRING_TAIL = r"[^\x1b\x9c\n]*(?:\x1b\\|\x9c)?"  # ... ST
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # C0 but tab/newline, DEL, C1
# One ESC test first, then the kind of sequence: twice as fast as trying each kind from the start.
_SEQUENCE = (
    rf"\x1b(?:\[{_CSI_TAIL}|\]{_OSC_TAIL}|[PX^_]{_STRING_TAIL}"
    r"|[\x20-\x2f]*[\x30-\x7e]?)"  # two/three byte escapes (ESC c, ESC ( B, ...) and a lone ESC
    rf"|\x9b{_CSI_TAIL}|\x9d{_OSC_TAIL}|[\x90\x98\x9e\x9f]{_STRING_TAIL}"
)

# Characters that draw nothing or reorder what is drawn: a reader cannot see them, so they go.
INVISIBLE_CHARS = (
    "\u00ad"  # soft hyphen
    "\u061c"  # Arabic letter mark (bidi)
    "\u180e"  # Mongolian vowel separator
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u206f"  # bidi isolates, deprecated format characters
    "\ufeff"  # zero-width no-break space
    "\ufff9-\ufffb"  # interlinear annotation
    "\U000e0000-\U000e007f"  # tag characters
)

_SEQUENCE_RE = re.compile(_SEQUENCE)
_C1_INTRODUCER_RE = re.compile(r"[\x90\x98\x9b\x9d-\x9f]")
_SINGLE_RE = re.compile(f"(?:{_CONTROL}|[{INVISIBLE_CHARS}])+")
_ASCII_CONTROLS = {code: None for code in (*range(0x09), *range(0x0B, 0x20), 0x7F)}

_HTML_COMMENT_RE = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)

# The fleet's own idempotency marker (`<!-- fleet:kind=value -->`, see forge.base.marker) with the blanks
# around it and one newline after it. The look-behind makes a run of blanks start a match only at its first
# blank, and the payload stops at the next `<`, so stripping stays linear on hostile text.
_FLEET_MARKER_RE = re.compile(r"(?<![ \t])[ \t]*+<!-- fleet:[^<>\n]{0,400}-->[ \t]*+\n?")


def for_terminal(text: str) -> str:
    """Text with every terminal control sequence, control character (tab and newline kept) and invisible
    or bidi-reordering character removed; U+2028/U+2029 become newlines.

    Carriage returns are dropped too: a lone CR could overwrite what a line appears to say. A control string
    with no terminator ends at the end of its line. The result splits into the same lines with
    `str.splitlines()` as with `split("\\n")`.
    """
    if not text or _is_plain(text):
        return text
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    if "\x1b" in text or _C1_INTRODUCER_RE.search(text):
        text = _SEQUENCE_RE.sub("", text)
    if text.isascii():
        return text.translate(_ASCII_CONTROLS)  # much faster than a regex on ASCII
    return _SINGLE_RE.sub("", text)


def _is_plain(text: str) -> bool:
    """True when `for_terminal` has nothing to do (one fast scan): printable apart from newlines and tabs."""
    if text.isprintable():
        return True
    return text.replace("\n", "").replace("\t", "").isprintable()


def line_for_terminal(text: str, limit: int = 4000) -> str:
    """One display line: sanitized, tabs expanded, newlines folded, bounded in length.

    Only a prefix of a huge line is looked at (control sequences may hide most of it, hence the margin): a
    megabyte on one line costs no more than a few kilobytes.
    """
    clean = for_terminal(text[: limit * 8 + 64]).replace("\n", " ").expandtabs(4)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def strip_fleet_markers(text: str) -> str:
    """`text` without the fleet's own hidden idempotency markers (any other hidden comment stays)."""
    if "<!-- fleet:" not in text:
        return text
    return _FLEET_MARKER_RE.sub("", text)


def for_prompt(text: str) -> str:
    """Text an agent may read: hidden HTML comments, zero-width/bidi characters and control characters out."""
    if not text:
        return ""
    text = for_terminal(text)
    return _HTML_COMMENT_RE.sub("", text) if "<!--" in text else text
