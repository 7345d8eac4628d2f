"""The PM role: the prompt that asks an engine for proposals, the parser of its final message, and the
built-in PM that needs no model (TODO/FIXME comments and unchecked roadmap items)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleet_tui.forge.base import marker
from fleet_tui.roles import normalize_title, quote_block
from fleet_tui.untrusted import for_prompt

ROADMAP_FILES = ("ROADMAP.md", "roadmap.md", "docs/ROADMAP.md")
_SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", "dist", "build", ".tox", ".mypy_cache"}
_TEXT_SUFFIXES = {".py", ".js", ".ts", ".tsx", ".go", ".rs", ".java", ".c", ".h", ".cpp", ".rb", ".sh",
                  ".md", ".toml", ".yaml", ".yml", ".txt", ".css", ".html", ".kt", ".swift", ".lua", ".php"}
_TODO_RE = re.compile(r"(?:#|//|/\*|--|<!--|;)\s*(TODO|FIXME)\b(?:\([^)]*\))?:?\s*(.+?)\s*(?:\*/|-->)?$")
_ROADMAP_RE = re.compile(r"^\s*[-*]\s+\[ \]\s+(.+?)\s*$")
_FENCE_RE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)
MAX_TITLE = 120
MAX_BODY = 8000


@dataclass(frozen=True, slots=True)
class Proposal:
    title: str
    body: str
    key: str = ""  # what makes it unique (marker value); the normalized title when empty

    @property
    def marker_value(self) -> str:
        return self.key or normalize_title(self.title)[:80]


def proposal_marker(proposal: Proposal) -> str:
    return marker("proposal", proposal.marker_value.replace("--", "- -"))


def render_proposal_body(proposal: Proposal) -> str:
    return f"{proposal.body.strip()}\n\n_Proposed by the fleet's PM; approve it to start work._\n" \
           f"{proposal_marker(proposal)}"


def build_prompt(*, repo: str, readme: str, roadmap: str, open_titles: Iterable[str], slots: int) -> str:
    """The PM prompt: the repository's own documents and the open issue titles, as quoted data."""
    titles = "\n".join(f"- {for_prompt(t).strip()}" for t in open_titles) or "(none)"
    return (
        f"You are the product manager of the repository {for_prompt(repo)}.\n"
        f"Propose at most {slots} small, well-scoped issues a developer could finish in one change.\n"
        "Do not propose anything that duplicates an open issue. Do not change any files.\n\n"
        f"README:\n{quote_block(readme, 12_000)}\n\n"
        f"Roadmap:\n{quote_block(roadmap, 8_000)}\n\n"
        f"Open issues:\n{quote_block(titles, 8_000)}\n\n"
        "Answer with a JSON list of objects with `title` and `body` inside one ```json fenced block.\n"
    )


def parse_message(text: str, *, open_titles: Iterable[str] = (), limit: int | None = None) -> list[Proposal]:
    """Proposals from the PM's final message: the last fenced JSON list (or the whole text as JSON).

    Odd entries are skipped, never raised on; duplicates of open issues and of each other are dropped."""
    candidates = [m.group(1) for m in _FENCE_RE.finditer(text or "")]
    candidates.reverse()
    candidates.append(text or "")
    items: list[object] = []
    for chunk in candidates:
        try:
            data = json.loads(chunk)
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict):
            data = data.get("issues") or data.get("proposals") or []
        if isinstance(data, list):
            items = data
            break
    seen = {normalize_title(t) for t in open_titles}
    out: list[Proposal] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        title, body = item.get("title"), item.get("body", "")
        if not isinstance(title, str) or not isinstance(body, str):
            continue
        title = " ".join(for_prompt(title).split())[:MAX_TITLE]
        key = normalize_title(title)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(Proposal(title=title, body=body[:MAX_BODY]))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_docs(repo_path: Path) -> tuple[str, str]:
    """(README, roadmap) of the repository, empty when missing."""
    def read(names: Iterable[str]) -> str:
        for name in names:
            path = repo_path / name
            if path.is_file():
                try:
                    return path.read_text(encoding="utf-8", errors="replace")[:50_000]
                except OSError:
                    return ""
        return ""
    return read(("README.md", "README.rst", "README.txt", "README")), read(ROADMAP_FILES)


def builtin_proposals(repo_path: Path, *, open_titles: Iterable[str] = (), limit: int = 5,
                      max_files: int = 5000) -> list[Proposal]:
    """Proposals without a model: unchecked `- [ ]` roadmap items first, then TODO/FIXME comments."""
    seen = {normalize_title(t) for t in open_titles}
    out: list[Proposal] = []

    def add(proposal: Proposal) -> bool:
        key = normalize_title(proposal.title)
        if key and key not in seen:
            seen.add(key)
            out.append(proposal)
        return len(out) >= limit

    _, roadmap = read_docs(repo_path)
    for line in roadmap.splitlines():
        match = _ROADMAP_RE.match(line)
        if match:
            item = " ".join(match.group(1).split())[:MAX_TITLE]
            if add(Proposal(title=item, body=f"From the roadmap:\n\n- [ ] {match.group(1)}",
                            key="roadmap:" + normalize_title(item)[:60])):
                return out
    count = 0
    for root, dirs, files in os.walk(repo_path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix not in _TEXT_SUFFIXES or path.name in ROADMAP_FILES:
                continue
            count += 1
            if count > max_files:
                return out
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            rel = path.relative_to(repo_path).as_posix()
            for lineno, line in enumerate(text.splitlines()[:20_000], 1):
                match = _TODO_RE.search(line)
                if not match:
                    continue
                what = " ".join(match.group(2).split())
                if len(what) < 4:
                    continue
                title = f"{match.group(1)}: {what}"[:MAX_TITLE]
                body = f"`{rel}` line {lineno} says:\n\n    {line.strip()[:300]}\n\nResolve it and remove the comment."
                if add(Proposal(title=title, body=body, key=f"todo:{rel}:{normalize_title(what)[:40]}")):
                    return out
    return out
