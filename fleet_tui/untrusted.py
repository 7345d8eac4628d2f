"""The one trust boundary for text from issues, PRs and agents.

`for_terminal()` makes text safe to show (no control sequences survive); `for_prompt()` makes text safe to
hand to an agent (nothing hidden from the human who approved it survives). Everyone calls these; nobody
writes a second sanitizer.
"""

from __future__ import annotations

import re

# ESC-introduced sequences, in 7-bit and 8-bit forms.
_OSC = r"(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC ... BEL | ST
_STRING = r"(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"  # DCS, SOS, PM, APC ... ST
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
_ESC_OTHER = r"\x1b[\x20-\x2f]*[\x30-\x7e]?"  # two/three byte escapes (ESC c, ESC ( B, ...) and a lone ESC
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # C0 but tab/newline, DEL, C1

_TERMINAL_RE = re.compile("|".join((_OSC, _STRING, _CSI, _ESC_OTHER, _CONTROL)))

_HTML_COMMENT_RE = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_INVISIBLE_RE = re.compile(
    "["
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u2069"  # bidi isolates
    "\ufeff"  # zero-width no-break space
    "\u00ad"  # soft hyphen
    "\U000e0000-\U000e007f"  # tag characters
    "]"
)
_PROMPT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def for_terminal(text: str) -> str:
    """Text with every terminal control sequence and control character removed (tab and newline kept).

    Carriage returns are dropped too: a lone CR could overwrite what a line appears to say.
    """
    if not text:
        return ""
    return _TERMINAL_RE.sub("", text)


def line_for_terminal(text: str, limit: int = 4000) -> str:
    """One display line: sanitized, tabs expanded, newlines folded, bounded in length."""
    clean = for_terminal(text).replace("\n", " ").expandtabs(4)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def for_prompt(text: str) -> str:
    """Text an agent may read: hidden HTML comments, zero-width/bidi characters and control characters out."""
    if not text:
        return ""
    text = for_terminal(text)
    text = _HTML_COMMENT_RE.sub("", text)
    text = _INVISIBLE_RE.sub("", text)
    return _PROMPT_CONTROL_RE.sub("", text)
