"""Untrusted Markdown and unified diffs as Rich `Text`, built by appending plain strings with styles: nothing
is parsed as markup, links show as text plus their target (never clickable), and every string has been through
`fleet_tui.untrusted`. Pure functions, safe to run in a thread."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.token import Token
from rich.style import Style
from rich.text import Text

from fleet_tui.untrusted import for_terminal, line_for_terminal

# A diff longer than this is cut with a line that says so: the console lays the text out on the event loop.
MAX_DIFF_LINES = 4_000
MAX_DIFF_CHARS = 400_000
MAX_DIFF_LINE_CHARS = 1_000  # one minified line must not make the screen a mile wide
MAX_LINK_CHARS = 200


@dataclass(frozen=True, slots=True)
class TextStyles:
    """Styles for Markdown and diffs, taken from the theme on the event loop before the text is built."""

    head: Style = field(default_factory=lambda: Style(bold=True))
    add: Style = field(default_factory=lambda: Style(color="green"))
    delete: Style = field(default_factory=lambda: Style(color="red"))
    hunk: Style = field(default_factory=lambda: Style(color="cyan"))
    meta: Style = field(default_factory=lambda: Style(bold=True))
    code: Style = field(default_factory=lambda: Style(color="yellow"))
    link: Style = field(default_factory=lambda: Style(underline=True))
    dim: Style = field(default_factory=lambda: Style(dim=True))
    file: Style = field(default_factory=lambda: Style(bold=True, reverse=True))


# --- Markdown -------------------------------------------------------------------------------------

# html off: tags and comments in a body stay text; no linkify (a bare URL is already shown as typed).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


def markdown_text(source: str, styles: TextStyles) -> Text:
    """`source` (sanitized here) as styled text: headings, emphasis, code, lists, quotes, tables; a link is its
    text followed by its target in parentheses."""
    source = for_terminal(source)
    out = Text()
    lists: list[list[int] | None] = []  # per open list: None (bullets) or [next number]
    markers: list[str] = []  # per open list item: its marker, shown on the item's first line
    fresh_item = False
    quote = 0
    heading: Style | None = None
    row: list[Text] | None = None

    def indent() -> str:
        return "▎ " * quote + "".join(" " * len(marker) for marker in markers)

    def emit(block: Text) -> None:
        nonlocal fresh_item
        for index, line in enumerate(block.split("\n", allow_blank=True)):
            if index == 0 and fresh_item and markers:
                prefix = "▎ " * quote + "".join(" " * len(m) for m in markers[:-1]) + markers[-1]
                fresh_item = False
            else:
                prefix = indent()
            out.append(prefix, style=styles.dim)
            out.append_text(line)
            out.append("\n")

    for token in _MARKDOWN.parse(source):
        kind = token.type
        if kind == "heading_open":
            heading = styles.head + (Style(underline=True) if token.tag == "h1" else Style())
        elif kind == "heading_close":
            heading = None
            out.append("\n")
        elif kind == "inline":
            inline = _inline(token.children or [], styles, heading or Style())
            if row is not None:
                row.append(inline)
            else:
                emit(inline)
        elif kind == "paragraph_close" and not token.hidden and row is None:
            out.append("\n")
        elif kind in ("fence", "code_block"):
            emit(Text(token.content.rstrip("\n").expandtabs(4), style=styles.code))
            out.append("\n")
        elif kind == "bullet_list_open":
            lists.append(None)
        elif kind == "ordered_list_open":
            start = token.attrGet("start")
            lists.append([int(start) if isinstance(start, (int, str)) and str(start).isdigit() else 1])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            if lists:
                lists.pop()
            if not lists:
                out.append("\n")
        elif kind == "list_item_open":
            counter = lists[-1] if lists else None
            if counter is None:
                markers.append("• ")
            else:
                markers.append(f"{counter[0]}. ")
                counter[0] += 1
            fresh_item = True
        elif kind == "list_item_close":
            if markers:
                markers.pop()
            fresh_item = False
        elif kind == "blockquote_open":
            quote += 1
        elif kind == "blockquote_close":
            quote = max(0, quote - 1)
        elif kind == "hr":
            emit(Text("─" * 40, style=styles.dim))
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            cells, row = row, None
            emit(Text(" │ ", style=styles.dim).join(cells))
        elif kind == "table_close":
            out.append("\n")
    out.rstrip()
    return out


def _inline(children: list[Token], styles: TextStyles, base: Style) -> Text:
    text = Text()
    stack = [base]
    links: list[tuple[str, int]] = []  # (target, where the link's text starts)
    for child in children:
        kind = child.type
        if kind == "text":
            text.append(child.content, style=stack[-1])
        elif kind in ("softbreak", "hardbreak"):
            text.append("\n")  # as the forges show comments: a line break stays one
        elif kind == "code_inline":
            text.append(child.content, style=stack[-1] + styles.code)
        elif kind in ("strong_open", "em_open", "s_open"):
            extra = {"strong_open": Style(bold=True), "em_open": Style(italic=True),
                     "s_open": Style(strike=True)}[kind]
            stack.append(stack[-1] + extra)
        elif kind in ("strong_close", "em_close", "s_close", "link_close"):
            if len(stack) > 1:
                stack.pop()
            if kind == "link_close" and links:
                target, start = links.pop()
                shown = text.plain[start:]
                if target and target != shown and f"mailto:{shown}" != target:
                    text.append(f" ({target})", style=styles.dim)
        elif kind == "link_open":
            links.append((_target(child.attrGet("href")), len(text.plain)))
            stack.append(stack[-1] + styles.link)
        elif kind == "image":
            alt = "".join(grand.content for grand in child.children or [] if grand.type == "text")
            text.append(f"[image: {alt or 'no description'}]", style=stack[-1] + styles.dim)
            text.append(f" ({_target(child.attrGet('src'))})", style=styles.dim)
        else:  # anything else a future parser yields: its text, as text
            text.append(child.content, style=stack[-1])
    return text


def _target(value: object) -> str:
    return line_for_terminal(str(value or ""), MAX_LINK_CHARS)


# --- diffs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    additions: int = 0
    deletions: int = 0
    status: str = "modified"  # modified | added | deleted | renamed | binary


_HUNK_RE = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_GIT_RE = re.compile(r"^diff --git a/(.*) b/(.*)$")


def parse_diff(diff: str) -> list[FileChange]:
    """The files of a unified diff (git's or plain) with the lines each adds and deletes. Hunk headers say how
    many lines follow, so a deleted line that starts with `-- ` is never taken for a file header."""
    files: list[dict[str, object]] = []
    old_left = new_left = 0
    for line in diff.splitlines():
        if old_left > 0 or new_left > 0:
            if line.startswith("+"):
                new_left -= 1
                files[-1]["additions"] = int(files[-1]["additions"]) + 1  # type: ignore[call-overload]
            elif line.startswith("-"):
                old_left -= 1
                files[-1]["deletions"] = int(files[-1]["deletions"]) + 1  # type: ignore[call-overload]
            elif line.startswith("\\"):
                pass  # "\ No newline at end of file"
            else:
                old_left -= 1
                new_left -= 1
            continue
        git = _GIT_RE.match(line)
        if git:
            files.append({"path": git.group(2), "old": git.group(1), "additions": 0, "deletions": 0,
                          "status": "modified", "git": True})
        elif line.startswith("--- ") and not (files and files[-1].get("git") and not files[-1].get("hunks")):
            files.append({"path": _strip_prefix(line[4:]), "old": _strip_prefix(line[4:]), "additions": 0,
                          "deletions": 0, "status": "modified"})
        elif not files:
            continue
        elif line.startswith("+++ "):
            path = _strip_prefix(line[4:])
            if path != "/dev/null":
                files[-1]["path"] = path
            elif files[-1]["status"] == "modified":
                files[-1]["status"] = "deleted"
        elif line.startswith(("--- /dev/null", "new file mode")):
            files[-1]["status"] = "added"
        elif line.startswith("deleted file mode"):
            files[-1]["status"] = "deleted"
        elif line.startswith("rename to "):
            files[-1]["status"] = "renamed"
            files[-1]["path"] = line[len("rename to "):]
        elif line.startswith(("Binary files", "GIT binary patch")):
            files[-1]["status"] = "binary"
        else:
            hunk = _HUNK_RE.match(line)
            if hunk:
                files[-1]["hunks"] = True
                old_left = int(hunk.group(1)) if hunk.group(1) is not None else 1
                new_left = int(hunk.group(2)) if hunk.group(2) is not None else 1
    out = []
    for item in files:
        path, old = str(item["path"]), str(item["old"])
        status = str(item["status"])
        shown = f"{old} → {path}" if status == "renamed" and old != path else path
        out.append(FileChange(line_for_terminal(shown, 300), int(item["additions"]),  # type: ignore[call-overload]
                              int(item["deletions"]), status))  # type: ignore[call-overload]
    return out


def _strip_prefix(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    return path[2:] if path.startswith(("a/", "b/")) else path


def files_text(files: list[FileChange], styles: TextStyles, width: int = 20) -> Text:
    """The changed files with their sizes: `+adds −dels` and a bar of the share of each."""
    out = Text()
    if not files:
        return out
    adds = sum(item.additions for item in files)
    dels = sum(item.deletions for item in files)
    out.append(f"{len(files)} file{'s' if len(files) != 1 else ''} · ", style=styles.dim)
    out.append(f"+{adds:,}", style=styles.add)
    out.append(" ")
    out.append(f"−{dels:,}", style=styles.delete)
    out.append("\n")
    largest = max((item.additions + item.deletions for item in files), default=0) or 1
    for item in files:
        size = item.additions + item.deletions
        cells = max(1, round(size * width / largest)) if size else 0
        plus = round(cells * item.additions / size) if size else 0
        out.append(f"{'+' + format(item.additions, ','):>8} ", style=styles.add)
        out.append(f"{'−' + format(item.deletions, ','):>8} ", style=styles.delete)
        out.append("■" * plus, style=styles.add)
        out.append("■" * (cells - plus), style=styles.delete)
        out.append(" " * (width - cells + 1))
        out.append(item.path)
        if item.status != "modified":
            out.append(f"  ({item.status})", style=styles.dim)
        out.append("\n")
    return out


def diff_text(diff: str, styles: TextStyles) -> Text:
    """A unified diff, sanitized and coloured by line kind, each file under a header bar; past `MAX_DIFF_LINES`
    lines or `MAX_DIFF_CHARS` characters it ends with a line that says how much is left out."""
    total_lines = diff.count("\n") + (0 if diff.endswith("\n") or not diff else 1)
    bounded = diff[:MAX_DIFF_CHARS]
    lines = for_terminal(bounded).splitlines()
    if len(bounded) < len(diff) and lines:
        lines.pop()  # the last line was cut mid-way
    lines = lines[:MAX_DIFF_LINES]
    out = Text()
    old_left = new_left = 0
    for line in lines:
        line = line.expandtabs(4)
        if len(line) > MAX_DIFF_LINE_CHARS:
            line = line[:MAX_DIFF_LINE_CHARS] + "…"
        if old_left > 0 or new_left > 0:
            if line.startswith("+"):
                new_left -= 1
                out.append(line, style=styles.add)
            elif line.startswith("-"):
                old_left -= 1
                out.append(line, style=styles.delete)
            elif line.startswith("\\"):
                out.append(line, style=styles.dim)
            else:
                old_left -= 1
                new_left -= 1
                out.append(line)
            out.append("\n")
            continue
        hunk = _HUNK_RE.match(line)
        if hunk:
            old_left = int(hunk.group(1)) if hunk.group(1) is not None else 1
            new_left = int(hunk.group(2)) if hunk.group(2) is not None else 1
            out.append(line, style=styles.hunk)
        elif line.startswith("diff --git "):
            git = _GIT_RE.match(line)
            out.append(f" {git.group(2) if git else line[len('diff --git '):]} ", style=styles.file)
        else:
            out.append(line, style=styles.meta if line.startswith(("+++", "---")) else styles.dim)
        out.append("\n")
    shown = len(lines)
    if shown < total_lines:
        out.append(f"✂ diff truncated: {shown:,} of {total_lines:,} lines shown; the whole diff is on the forge\n",
                   style=Style(bold=True) + styles.delete)
    return out
