"""Screens over the main one: the confirm dialog, the detail view of an issue or PR, the help screen and
the needs-human inbox. They only show text that went through `fleet_tui.untrusted` and never parse markup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import anyio
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Static

from fleet_tui.control import Detail
from fleet_tui.tui.actions import ACTIONS, KEY_DISPLAY
from fleet_tui.tui.rendering import (
    MAX_DIFF_CHARS,
    TextStyles,
    diff_text,
    files_text,
    markdown_text,
    parse_diff,
)
from fleet_tui.tui.view import SetupItem, Styles, clean, inbox_rows, setup_text
from fleet_tui.tui.widgets import PaneTable, TextLines
from fleet_tui.untrusted import for_terminal, strip_fleet_markers

if TYPE_CHECKING:
    from fleet_tui.tui.app import FleetApp


class ConfirmScreen(ModalScreen[bool]):
    """Ask before anything that cannot be undone: y confirms, n or escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm_yes"),
        Binding("n", "answer(False)", "No", id="confirm_no"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, title: str, question: Text) -> None:
        super().__init__()
        self.title_text = title
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box") as box:
            box.border_title = Content(self.title_text)
            yield Static(self.question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


# A body longer than this is cut (the rest is one key away in the browser): Textual lays out the whole text on
# the event loop, and a stranger's megabyte must not freeze the console.
MAX_BODY_CHARS = 100_000
# Details with more text than this are sanitized and styled in a thread, off the event loop.
OFF_LOOP_CHARS = 32_000

DetailStyles = TextStyles  # the detail view's styles, taken from the theme before the text is built


def _bounded(text: str, limit: int) -> tuple[str, int]:
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def _untrusted_block(text: str, styles: TextStyles) -> Text:
    """A body as Markdown, rendered as plain styled text; the fleet's own idempotency markers are left out, any
    other hidden comment shows as typed."""
    text, cut = _bounded(text or "", MAX_BODY_CHARS)
    shown = strip_fleet_markers(for_terminal(text)).rstrip()
    out = markdown_text(shown, styles) if shown.strip() else Text("(empty)", style=styles.dim)
    if cut:
        out.append(f"\n… {cut:,} more characters not shown (o opens it in the browser)", style="dim")
    return out


def detail_size(detail: Detail) -> int:
    """How much untrusted text a detail holds (decides whether it is built off the event loop)."""
    size = len(detail.diff) + len(detail.diffstat)
    size += sum(len(item.body) for item in (*detail.reviews, *detail.comments))
    for item in (detail.issue, detail.pull):
        if item is not None:
            size += len(item.body) + len(item.title)
    return size


@dataclass(frozen=True, slots=True)
class DetailParts:
    """The detail view in three parts: the issue or PR with its QA thread, the changed files, the diff."""

    content: Text
    files: Text
    diff: Text


def detail_parts(detail: Detail, styles: TextStyles) -> DetailParts:
    """Every string from the forge sanitized, no markup parsed. Pure (no widget, no app), so it can run in a
    thread."""
    head = styles.head
    out = Text()
    if detail.issue is not None:
        issue = detail.issue
        out.append(f"Issue #{issue.number}: ", style=head)
        out.append(clean(issue.title, 300) + "\n", style=Style(bold=True))
        out.append(f"by {clean(issue.author.login, 60)} · {clean(issue.state, 20)} · labels: "
                   f"{clean(', '.join(issue.labels), 200) or '—'}\n\n", style=Style(dim=True))
        out.append_text(_untrusted_block(issue.body, styles))
        out.append("\n\n")
    if detail.pull is not None:
        pull = detail.pull
        out.append(f"PR #{pull.number}: ", style=head)
        out.append(clean(pull.title, 300) + "\n", style=Style(bold=True))
        out.append(f"{clean(pull.head, 100)} → {clean(pull.base, 100)} · CI {pull.ci.value} · "
                   f"+{pull.additions} −{pull.deletions} in {pull.changed_files} files\n\n", style=Style(dim=True))
        out.append_text(_untrusted_block(pull.body, styles))
        out.append("\n\n")
    thread = sorted(
        [(r.submitted_at, f"review by {r.author.login} ({r.state})", r.body) for r in detail.reviews]
        + [(c.created_at, f"comment by {c.author.login}", c.body) for c in detail.comments],
        key=lambda item: (item[0] is None, item[0] or 0),
    )
    out.append("QA thread\n", style=head)
    if not thread:
        out.append("no reviews or comments yet\n", style=Style(dim=True))
    for when, who, body in thread:
        stamp = when.strftime("%Y-%m-%d %H:%M") if when else ""
        out.append(f"── {clean(who, 120)} {stamp}\n", style=Style(bold=True))
        out.append_text(_untrusted_block(body, styles))
        out.append("\n\n")
    out.rstrip()
    files = Text()
    diff = Text()
    changes = parse_diff(detail.diff[:MAX_DIFF_CHARS]) if detail.diff else []
    if changes:
        files.append("Files changed\n", style=head)
        files.append_text(files_text(changes, styles))
        files.rstrip()
    elif detail.diffstat:
        files.append("Diff stat\n", style=head)
        text, _cut = _bounded(detail.diffstat, MAX_BODY_CHARS)
        files.append(for_terminal(text).expandtabs(4).rstrip() + "\n")
    elif detail.pull is not None:
        files.append("Files changed\n", style=head)
        files.append("no diff\n", style=Style(dim=True))
    if detail.diff:
        diff.append("Diff\n", style=head)
        diff.append_text(diff_text(detail.diff, styles))
    return DetailParts(out, files, diff)


def detail_text(detail: Detail, styles: TextStyles) -> Text:
    """The whole detail view as one Text (the parts one after the other)."""
    parts = detail_parts(detail, styles)
    return Text("\n\n").join(part for part in (parts.content, parts.files, parts.diff) if part.plain)


class DetailScreen(Screen[None]):
    """An issue or PR: body and QA thread as Markdown, the changed files with their sizes, and the diff, built
    by the loading worker (in a thread when large)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back", id="detail_close"),
        Binding("q", "close", "Back", show=False),
        Binding("f", "jump('files')", "Files", id="detail_files"),
        Binding("d", "jump('diff')", "Diff", id="detail_diff"),
        Binding("t", "jump('top')", "Top", id="detail_top"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.heading = title
        self.loaded = False
        self._pending: DetailParts | str | None = None
        self._composed = False

    def compose(self) -> ComposeResult:
        yield Static(Text(self.heading, style="bold"), id="detail-title")
        with VerticalScroll(id="detail-body"):
            yield Static(Text("loading…", style="dim"), id="detail-content")
            yield Static(Text(), id="detail-files")
            yield TextLines(id="detail-diff")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail-body").focus()
        self._composed = True
        if isinstance(self._pending, DetailParts):
            self.show_parts(self._pending)
        elif isinstance(self._pending, str):
            self.show_error(self._pending)

    def styles_from_theme(self) -> TextStyles:
        theme = self.app.current_theme

        def color(value: str | None, fallback: str) -> Style:
            try:
                return Style.parse(value or fallback)
            except Exception:  # noqa: BLE001 - a user theme may hold a colour Rich cannot read
                return Style.parse(fallback)

        return TextStyles(head=Style(bold=True) + color(theme.primary, "cyan"), add=color(theme.success, "green"),
                          delete=color(theme.error, "red"), hunk=color(theme.accent, "cyan"),
                          code=color(theme.warning, "yellow"), link=Style(underline=True) + color(theme.primary, "cyan"),
                          file=Style(bold=True, color=theme.foreground or "white", bgcolor=theme.panel or "grey23")
                          if _parses(theme.foreground, theme.panel) else Style(bold=True, reverse=True))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "jump" and parameters and parameters[0] != "top":
            part = self.query_one(f"#detail-{parameters[0]}")
            return True if self.loaded and part.display else None
        return True

    async def load(self, detail: Detail) -> None:
        """Show `detail`; a large one is sanitized and styled in a thread so the console keeps drawing."""
        styles = self.styles_from_theme()
        if detail_size(detail) > OFF_LOOP_CHARS:
            parts = await anyio.to_thread.run_sync(detail_parts, detail, styles)
        else:
            parts = detail_parts(detail, styles)
        self.show_parts(parts)

    def show_detail(self, detail: Detail) -> None:
        self.show_parts(detail_parts(detail, self.styles_from_theme()))

    def show_parts(self, parts: DetailParts) -> None:
        if not self._composed:
            self._pending = parts
            return
        self.query_one("#detail-content", Static).update(parts.content)
        files = self.query_one("#detail-files", Static)
        files.update(parts.files)
        files.display = bool(parts.files.plain)
        diff = self.query_one("#detail-diff", TextLines)
        diff.set_text(parts.diff)
        diff.display = bool(parts.diff.plain)
        self.loaded = True
        self.refresh_bindings()

    def show_error(self, message: str) -> None:
        if not self._composed:
            self._pending = message
            return
        self.query_one("#detail-content", Static).update(Text(clean(message, 500), style="bold red"))

    def action_jump(self, where: str) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        if where == "top":
            body.scroll_home(animate=False)
        else:
            body.scroll_to_widget(self.query_one(f"#detail-{where}"), animate=False, top=True)

    def action_scroll(self, lines: int) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        body.scroll_relative(y=lines, animate=False)

    def action_close(self) -> None:
        self.dismiss(None)


def _parses(*colors: str | None) -> bool:
    try:
        for value in colors:
            if value:
                Style.parse(f"on {value}")
    except Exception:  # noqa: BLE001 - a user theme may hold a colour Rich cannot read
        return False
    return all(colors)


class HelpScreen(ModalScreen[None]):
    """Every key of the console with what it does (remaps from fleet.toml shown)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="help_close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, keys: dict[str, str]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(id="help-table", cursor_type="row", show_cursor=False)
        with Vertical(id="help-box") as box:
            box.border_title = Content("Keys")
            box.border_subtitle = Content("escape to close · ctrl+p: command palette · remap in fleet.toml [ui.keys] by id")
            yield table

    def on_mount(self) -> None:
        table = self.query_one("#help-table", DataTable)
        table.add_column("key", key="key", width=8)
        table.add_column("id", key="id", width=12)
        table.add_column("what it does", key="help")
        for action in ACTIONS:
            key = self.keys.get(action.id, action.key)
            shown = KEY_DISPLAY.get(key, key) if "," not in key else key
            table.add_row(Text(shown, style="bold"), Text(action.id, style="dim"), Text(action.help), key=action.id)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)


class InboxScreen(Screen[None]):
    """The needs-human inbox: what stopped and why; enter opens it, r retries it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back", id="inbox_close"),
        Binding("i", "close", "Back", show=False),
        Binding("enter", "details", "Details", id="inbox_details"),
        Binding("r", "retry", "Retry", id="inbox_retry"),
    ]

    def __init__(self, on_details: Callable[[int | None, int | None], None],
                 on_retry: Callable[[int], None]) -> None:
        super().__init__()
        self.on_details = on_details
        self.on_retry = on_retry

    @property
    def fleet(self) -> FleetApp:
        from fleet_tui.tui.app import FleetApp

        assert isinstance(self.app, FleetApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield Static(Text("Needs you", style="bold"), id="inbox-title")
        yield PaneTable("inbox", "Needs human", [("Target", "target", 10), ("Why", "why", None),
                                                 ("When", "when", 10)])
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_rows()
        self.query_one("#inbox", PaneTable).focus()

    def refresh_rows(self) -> None:
        fleet = self.fleet
        rows = inbox_rows(fleet.inbox, fleet.now(), fleet.cell_styles)
        table = self.query_one("#inbox", PaneTable)
        table.sync(rows)
        if not rows:
            table.border_subtitle = Content("nothing needs you")
        self.refresh_bindings()

    def _selected(self):  # type: ignore[no-untyped-def]
        key = self.query_one("#inbox", PaneTable).selected_key
        for item in self.fleet.inbox:
            from fleet_tui.tui.view import inbox_key

            if inbox_key(item) == key:
                return item
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "details":
            return True if self._selected() is not None else None
        if action == "retry":
            item = self._selected()
            return True if item is not None and item.issue is not None else None
        return True

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()

    def action_details(self) -> None:
        item = self._selected()
        if item is not None:
            self.on_details(item.issue, item.pr)

    def action_retry(self) -> None:
        item = self._selected()
        if item is not None and item.issue is not None:
            self.on_retry(item.issue)

    def action_close(self) -> None:
        self.dismiss(None)


class SetupScreen(Screen[None]):
    """The first run: what is missing (config, agent image, engine API key) and the commands that fix it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit", id="setup_quit"),
        Binding("escape", "close", "Look at the console", id="setup_close"),
    ]

    def __init__(self, items: list[SetupItem], styles: Styles) -> None:
        super().__init__()
        self.items = items
        self.cell_styles = styles
        self.checked = False

    def compose(self) -> ComposeResult:
        yield Static(Text("Set up fleet-tui", style="bold"), id="setup-title")
        with VerticalScroll(id="setup-body"):
            yield Static(setup_text(self.items, self.cell_styles), id="setup-content")
        yield Footer()

    def show_items(self, items: list[SetupItem]) -> None:
        self.items = items
        self.checked = True
        self.query_one("#setup-content", Static).update(setup_text(items, self.cell_styles))

    def action_close(self) -> None:
        self.dismiss(None)


class StatsScreen(Screen[None]):
    """The numbers that matter, from the journal: spend per hour and day, runs and merges per day, QA's
    first-review pass rate, approve -> PR and PR -> merge latency, cost per merged PR. Read when opened."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Back", id="stats_close"),
        Binding("S", "close", "Back", show=False),
        Binding("g", "reload", "Refresh", id="stats_reload"),
    ]

    def __init__(self, load: Callable[[], object], budget_day_usd: float = 0.0) -> None:
        super().__init__()
        self._load = load
        self._budget = budget_day_usd

    def compose(self) -> ComposeResult:
        yield Static(Text("Stats · from the journal", style="bold"), id="stats-title")
        yield VerticalScroll(Static(Text("reading the journal…"), id="stats-body"))
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._fill(), exclusive=True, group="stats", exit_on_error=False,
                        description="read the stats")

    async def _fill(self) -> None:
        from fleet_tui.stats import report

        try:
            found = await self._load()  # type: ignore[misc]
            lines = report(found, budget_day_usd=self._budget)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a journal that cannot be read says so, and the console goes on
            lines = [f"the stats cannot be read now: {exc}"]
        self.query_one("#stats-body", Static).update(Text("\n".join(for_terminal(line) for line in lines)))

    def action_close(self) -> None:
        self.dismiss()
