"""Widgets of the main screen: the header line, the live pane tables (updated in place by row key), the log
pane (batched writes, follow mode, search) and the pane filter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.coordinate import Coordinate
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Input, Log, Static
from textual.widgets.data_table import ColumnKey

from fleet_tui.tui.view import Row, clean


class HeaderBar(Static):
    """One line: repository, forge, poll age, rate limit, spend, paused/running, needs-human count."""


class LinkBar(Static):
    """The last URL shared with the operator, as a clickable (OSC 8) link."""


class PaneTable(DataTable[Text], inherit_bindings=False):
    """A live pane: rows are keyed, updated in place, so the cursor and scroll stay where the user left them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_top", "Top", show=False),
        Binding("end", "scroll_bottom", "Bottom", show=False),
    ]

    def __init__(self, pane: str, title: str, columns: Sequence[tuple[str, str, int | None]],
                 flex: Mapping[str, int] | None = None) -> None:
        """`columns` are (label, key, least width); `flex` names the columns that share the spare width, with
        their weights (the others keep their width)."""
        super().__init__(id=pane, cursor_type="row", zebra_stripes=False, cell_padding=1)
        self.pane = pane
        self.title = title
        self.filter_text = ""
        self.note = ""  # shown at the bottom when no filter is
        self._columns_spec = columns
        self._flex = dict(flex or {})
        self._fitted_to = -1
        self._total = 0
        self.border_title = Content(title)

    def on_mount(self) -> None:
        for label, key, width in self._columns_spec:
            self.add_column(label, key=key, width=width)

    @property
    def total(self) -> int:
        """How many rows the pane has before its filter."""
        return self._total

    def on_resize(self) -> None:
        self.fit_columns(self.scrollable_content_region.width)

    def fit_columns(self, width: int) -> None:
        """Give the flexible columns (titles, the last line) the room the fixed ones leave in `width` cells."""
        if not self._flex or width == self._fitted_to or width <= 0:
            return
        self._fitted_to = width
        widths = column_widths(self._columns_spec, self._flex, width, 2 * self.cell_padding)
        for key, column_width in widths.items():
            column = self.columns.get(ColumnKey(key))
            if column is not None and column.width != column_width:
                column.width = column_width
                column.auto_width = False
        # DataTable has no public way to resize a column: drop its cached lines and re-measure.
        self._clear_caches()
        self._require_update_dimensions = True
        self.refresh()

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row = min(max(self.cursor_row, 0), self.row_count - 1)
        return self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    def sync(self, rows: list[Row]) -> None:
        """Make the table show `rows` (after the pane filter), changing only what changed."""
        self._total = len(rows)
        needle = self.filter_text.lower()
        if needle:
            rows = [row for row in rows if any(needle in cell.plain.lower() for cell in row[1])]
        selected = self.selected_key
        wanted = {key for key, _ in rows}
        for key in [row_key.value for row_key in self.rows]:
            if key not in wanted:
                self.remove_row(key)
        column_keys = [key for _, key, _ in self._columns_spec]
        for key, cells in rows:
            if key in self.rows:
                current = self.get_row(key)
                for column, old, new in zip(column_keys, current, cells, strict=False):
                    if old != new:
                        self.update_cell(key, column, new)
            else:
                self.add_row(*cells, key=key)
        self._keep_order([key for key, _ in rows])
        if selected is not None and selected in self.rows:
            index = self.get_row_index(selected)
            if index != self.cursor_row:
                self.move_cursor(row=index, animate=False, scroll=False)
        self._retitle()

    def _keep_order(self, keys: list[str]) -> None:
        """Show the rows in the order given (new rows are appended by `add_row`; a run that started moves up)."""
        if [row.key.value for row in self.ordered_rows] == keys:
            return
        # DataTable sorts by cell values; the first cell object of each row stands for its row key here.
        position = {id(self.get_row(key)[0]): index for index, key in enumerate(keys)}
        self.sort(key=lambda values: position.get(id(values[0]), len(position)))

    def update_cell_if_present(self, key: str, column: str, value: Text) -> None:
        if key in self.rows and self.get_cell(key, column) != value:
            self.update_cell(key, column, value)

    def set_filter(self, text: str) -> None:
        self.filter_text = text

    def set_note(self, note: str) -> None:
        if note != self.note:
            self.note = note
            self._retitle()

    def _retitle(self) -> None:
        shown = self.row_count
        count = f"{shown}/{self._total}" if self.filter_text else str(self._total)
        self.border_title = Content(f"{self.title} ({count})")
        if self.filter_text:
            self.border_subtitle = Content(f"filter: {clean(self.filter_text, 40)}")
        else:
            self.border_subtitle = Content(self.note) if self.note else None
        self.set_class(bool(self.note) and not self.filter_text, "-note")


def column_widths(columns: Sequence[tuple[str, str, int | None]], flex: Mapping[str, int], width: int,
                  padding: int) -> dict[str, int]:
    """The width of each flexible column when a table is `width` cells wide: the fixed columns keep theirs, the
    flexible ones share what is left by weight, never below their least width."""
    fixed = sum((least or 0) + padding for _, key, least in columns if key not in flex)
    least_flex = {key: least or 1 for _, key, least in columns if key in flex}
    spare = max(0, width - fixed - sum(least + padding for least in least_flex.values()))
    total_weight = sum(flex[key] for key in least_flex) or 1
    widths = {key: least + spare * flex[key] // total_weight for key, least in least_flex.items()}
    if least_flex:  # the rounding remainder goes to the first flexible column
        first = next(iter(least_flex))
        widths[first] += spare - sum(widths[key] - least_flex[key] for key in least_flex)
    return widths


class PaneTab(Static):
    """One pane's name and row count in the tab strip of a small terminal; a click shows that pane."""

    def __init__(self, pane: str) -> None:
        super().__init__(id=f"tab-{pane}", classes="pane-tab")
        self.pane = pane

    class Chosen(Message):
        def __init__(self, pane: str) -> None:
            super().__init__()
            self.pane = pane

    def on_click(self) -> None:
        self.post_message(self.Chosen(self.pane))


class PaneTabs(Horizontal):
    """On a small terminal the panes are tabs: this strip names them (tab or a click switches)."""

    def __init__(self, panes: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.panes = tuple(panes)

    def compose(self) -> ComposeResult:
        for pane in self.panes:
            yield PaneTab(pane)

    def show(self, labels: Mapping[str, str], active: str) -> None:
        """`labels` per pane (its title and count); `active` is the pane on screen."""
        for tab in self.query(PaneTab):
            tab.update(Content(f" {labels.get(tab.pane, tab.pane)} "))
            tab.set_class(tab.pane == active, "-active")


class PaneFilter(Input):
    """The `/` input: filters the focused pane as you type; enter or escape returns to the pane."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "done", "Done", show=False)]

    class Done(Message):
        def __init__(self, box: PaneFilter) -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> PaneFilter:
            return self.box

    def action_done(self) -> None:
        self.post_message(self.Done(self))


class LogPane(Vertical):
    """The selected run's log: a `Log` with `max_lines`, written in batches; follows the tail unless the user
    scrolled up; searchable."""

    following: reactive[bool] = reactive(True)

    def __init__(self, max_lines: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.max_lines = max_lines
        self.run_label = ""
        self._search_term = ""
        self._search_at: int | None = None
        self._search_note = ""

    def compose(self) -> ComposeResult:
        yield Log(max_lines=self.max_lines, id="log", highlight=False, auto_scroll=True)
        yield PaneFilter(placeholder="search the log (enter: previous match, escape: close)", id="log-search",
                         classes="hidden")

    @property
    def log_widget(self) -> Log:
        return self.query_one("#log", Log)

    def on_mount(self) -> None:
        self.border_title = Content("Log")
        self.watch(self.log_widget, "scroll_y", self._scrolled, init=False)
        self._retitle()

    def show(self, label: str, lines: Iterable[str]) -> None:
        """Switch to another run: `lines` are already sanitized."""
        self.run_label = label
        log = self.log_widget
        log.clear()
        log.write_lines(list(lines)[-self.max_lines:], scroll_end=True)
        self.following = True
        self._search_at = None
        self._search_note = ""
        self._retitle()

    def append(self, lines: list[str]) -> None:
        """One batch of new, sanitized lines."""
        if lines:
            self.log_widget.write_lines(lines)

    def _scrolled(self, _old: float, _new: float) -> None:
        log = self.log_widget
        self.following = log.max_scroll_y == 0 or log.scroll_y >= log.max_scroll_y

    def watch_following(self, _following: bool) -> None:
        self._retitle()

    def _retitle(self) -> None:
        label = clean(self.run_label, 80) or "no run selected"
        # Content, never a markup string: the label and the search term are data (`[/]` or `[@click=...]`
        # in them must show as typed).
        self.border_title = Content(f"Log · {label}")
        mode = "following" if self.following else "paused: scroll to the end to follow"
        note = f" · {self._search_note}" if self._search_note else ""
        self.border_subtitle = Content(f"{mode}{note}")

    # --- search ---------------------------------------------------------------------------------

    def open_search(self) -> None:
        search = self.query_one("#log-search", PaneFilter)
        search.remove_class("hidden")
        search.focus()

    @on(PaneFilter.Done, "#log-search")
    def _close_search(self, event: PaneFilter.Done) -> None:
        event.stop()
        search = self.query_one("#log-search", PaneFilter)
        search.add_class("hidden")
        self._search_note = ""
        self._retitle()
        self.log_widget.focus()

    @on(Input.Submitted, "#log-search")
    def _search(self, event: Input.Submitted) -> None:
        event.stop()
        self.search(event.value)

    def search(self, term: str) -> int | None:
        """Scroll to the previous line holding `term` (case-insensitive); repeated calls walk back."""
        term = term.strip().lower()
        log = self.log_widget
        lines = log.lines
        if not term:
            return None
        if term != self._search_term or self._search_at is None:
            self._search_term = term
            start = len(lines) - 1
        else:
            start = self._search_at - 1
        found = None
        for index in range(min(start, len(lines) - 1), -1, -1):
            if term in lines[index].lower():
                found = index
                break
        if found is None and start < len(lines) - 1:  # wrap around once
            for index in range(len(lines) - 1, start, -1):
                if term in lines[index].lower():
                    found = index
                    break
        self._search_at = found
        if found is None:
            self._search_note = f"no match for {clean(term, 30)!r}"
        else:
            total = sum(1 for line in lines if term in line.lower())
            self._search_note = f"line {found + 1} of {len(lines)} ({total} matches)"
            log.scroll_to(y=max(0, found - log.size.height // 2), animate=False, immediate=True)
        self._retitle()
        return found


class TextLines(Widget):
    """A long styled text (a diff) drawn one line at a time where it is visible (Textual's line API): its
    height is its line count, so a parent scrolls it without laying out thousands of lines on each frame.
    Long lines fold at the widget's width; only those are re-wrapped when the width changes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._source: list[Text] = []
        self._lines: list[Text] = []
        self._wrapped_for = -1
        self._strips: dict[int, Strip] = {}

    def set_text(self, text: Text) -> None:
        self._source = list(text.split("\n"))
        self._wrapped_for = -1
        self.refresh(layout=True)

    @property
    def line_count(self) -> int:
        return len(self._lines) if self._wrapped_for >= 0 else len(self._source)

    def _wrap(self, width: int) -> None:
        if width == self._wrapped_for or width <= 0:
            return
        lines: list[Text] = []
        for line in self._source:
            if line.cell_len <= width:
                lines.append(line)
            else:
                lines.extend(line.divide(range(width, len(line.plain), width)))
        self._lines = lines
        self._wrapped_for = width
        self._strips.clear()

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        self._wrap(width)
        return len(self._lines)

    def plain(self) -> str:
        return "\n".join(line.plain for line in self._source)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        self._wrap(width)
        strip = self._strips.get(y)
        if strip is None:
            if y >= len(self._lines):
                return Strip.blank(width, self.rich_style)
            segments = list(self._lines[y].render(self.app.console))
            strip = Strip(segments).apply_style(self.rich_style).adjust_cell_length(width, self.rich_style)
            if len(self._strips) > 2_000:
                self._strips.clear()
            self._strips[y] = strip
        return strip

    def on_resize(self) -> None:
        self._strips.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
