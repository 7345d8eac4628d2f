"""The three roles (PM, Dev, QA): the prompts each is given, built from trusted text only, and how each
role's final message becomes forge actions (proposals, PR bodies, review bodies with verdict markers)."""

from __future__ import annotations

from fleet_tui.untrusted import for_prompt


def quote_block(text: str, limit: int = 20_000) -> str:
    """Untrusted text made safe for a prompt and fenced so it reads as data, not as instructions."""
    clean = for_prompt(text).strip()
    if len(clean) > limit:
        clean = clean[:limit] + "\n[... cut ...]"
    fence = "~~~~"
    while fence in clean:
        fence += "~"
    return f"{fence}\n{clean}\n{fence}"


def normalize_title(title: str) -> str:
    """A title folded for duplicate checks: case, spacing and punctuation do not matter."""
    kept = "".join(ch.lower() if ch.isalnum() else " " for ch in for_prompt(title))
    return " ".join(kept.split())
