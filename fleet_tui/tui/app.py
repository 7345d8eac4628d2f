"""The operator console: the Textual app, its main screen, and `make_app()`.

The app hosts `FleetControl.run()` in a worker, turns `FleetControl.events()` into typed messages, and sends
every operator intent to the control in a worker. It knows nothing of forges or runners.
"""

from __future__ import annotations

import os
import re
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic
from typing import Any

import anyio
from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.containers import Grid
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input
from textual.worker import Worker, WorkerState

from fleet_tui.config import FleetConfig, user_config_dir, user_state_dir
from fleet_tui.control import FleetControl
from fleet_tui.errors import leaf_error
from fleet_tui.model import (
    AgentRun,
    Issue,
    LoopState,
    NeedsHuman,
    Notice,
    PullRequest,
    RateLimited,
    RunChanged,
    RunLogLines,
    RunState,
    SnapshotPublished,
)
from fleet_tui.tui import themes
from fleet_tui.tui.actions import ACTIONS, ACTIONS_BY_ID, bindings
from fleet_tui.tui.alerts import BURST, Alert, AlertGate, summary
from fleet_tui.tui.attach import HandOff, attached_notes, can_hand_off, can_read_remote_logs, hand_off_fleet
from fleet_tui.tui.commands import FleetCommands
from fleet_tui.tui.messages import (
    EventsEnded,
    HistoryLoaded,
    HumanNeeded,
    LogLinesPending,
    LoopStateArrived,
    NoticeArrived,
    RateLimitArrived,
    RunUpdated,
    SnapshotArrived,
)
from fleet_tui.tui.screens import ConfirmScreen, DetailScreen, HelpScreen, InboxScreen, SetupScreen, StatsScreen
from fleet_tui.tui.view import (
    Clock,
    HeaderState,
    LoopStatus,
    SetupItem,
    SetupProbe,
    Styles,
    agent_last_line,
    agent_order,
    agent_rows,
    clean,
    header_text,
    inbox_key,
    is_ready,
    proposal_rows,
    qa_rows,
    ready_rows,
    run_target,
    safe_url,
)
from fleet_tui.tui.widgets import HeaderBar, LinkBar, LogPane, PaneFilter, PaneTab, PaneTable, PaneTabs
from fleet_tui.untrusted import line_for_terminal

FRAME_S = 1 / 30  # log lines reach the screen at most this often
LAST_LINE_S = 0.5
PM_NOTE_S = 120.0  # how long the header says "PM requested…" when the fleet never reports the PM's result  # the Agents pane's "last line" column is a glance: refreshed at most this often
PANES = ("proposals", "agents", "qa", "ready")
ALERT_BATCH_S = 0.25  # alerts that arrive this close together are one batch: at most one bell, bursts summed up
COMPACT_WIDTH = 100  # below this many columns (or COMPACT_HEIGHT rows) the panes are tabs, one on screen
COMPACT_HEIGHT = 30
_ISO_PREFIX_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ](\d{2}:\d{2}:\d{2})\S*\s?")
_PM_WORD_RE = re.compile(r"\bPM\b", re.IGNORECASE)  # a Notice about the PM answers the "PM requested" note
_ROW_ACTIONS = {"approve", "reject", "details", "tail_log", "stop", "retry", "open", "merge", "copy_url"}
_LOOP_ACTIONS = {"restart_loop", "run_pm", "pause"}  # apply (or not) by the state of the fleet loop


def history_line(raw: str) -> str:
    """A line of a run's log file (ISO timestamp prefix) as shown: `HH:MM:SS text`, sanitized."""
    match = _ISO_PREFIX_RE.match(raw)
    if match:
        raw = f"{match.group(1)} {raw[match.end():]}"
    return line_for_terminal(raw.rstrip("\n"))


def read_log_tail(path: Path, max_lines: int) -> list[str]:
    """The last `max_lines` lines of a run's log file, without reading all of a large file."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        start = max(0, size - max_lines * 512)
        handle.seek(start)
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]
    return [history_line(line) for line in lines[-max_lines:]]


def is_remote_terminal(environ: Mapping[str, str], platform: str) -> bool:
    """True on SSH or without a display: a browser cannot be opened for the operator there."""
    if environ.get("SSH_CONNECTION") or environ.get("SSH_TTY"):
        return True
    if platform == "darwin":
        return False
    return not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


@dataclass(frozen=True, slots=True)
class Selection:
    """What the focused pane's cursor is on."""

    pane: str = ""
    issue: Issue | None = None
    issue_number: int | None = None
    pull: PullRequest | None = None
    run: AgentRun | None = None

    @property
    def pr_number(self) -> int | None:
        if self.pull is not None:
            return self.pull.number
        return self.run.pr if self.run is not None else None

    @property
    def url(self) -> str:
        if self.pull is not None:
            return safe_url(self.pull.html_url)
        if self.issue is not None:
            return safe_url(self.issue.html_url)
        return ""


class MainScreen(Screen[None]):
    """Header, the four live panes, the log pane and the footer of keys for the focused row."""

    BINDINGS = bindings()
    AUTO_FOCUS = "#proposals"

    def __init__(self, log_lines: int) -> None:
        super().__init__()
        self.log_lines = log_lines
        self.filter_target: str | None = None
        self.active_pane = "proposals"  # the pane a small terminal shows
        self._keys_signature: tuple[bool | None, ...] = ()

    @property
    def fleet(self) -> FleetApp:
        assert isinstance(self.app, FleetApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield PaneTabs(PANES, id="tabs")
        with Grid(id="panes"):
            yield PaneTable("proposals", "Proposals", [("#", "number", 4), ("Title", "title", 12),
                                                        ("Approval", "approval", 13)], flex={"title": 1})
            yield PaneTable("agents", "Agents", [("Role", "role", 4), ("On", "target", 6), ("Rnd", "round", 3),
                                                  ("State", "state", 11), ("Time", "elapsed", 6), ("Tok", "tokens", 4),
                                                  ("Cost", "cost", 5), ("Last line", "last", 12)], flex={"last": 1})
            yield PaneTable("qa", "QA", [("PR", "number", 4), ("Title", "title", 12), ("Round", "round", 5),
                                          ("Verdict", "verdict", 9), ("Fnd", "findings", 3)], flex={"title": 3, "verdict": 1})
            yield PaneTable("ready", "Ready to merge", [("PR", "number", 4), ("Title", "title", 12),
                                                        ("CI", "ci", 7), ("Size", "size", 15),
                                                        ("Mergeable", "mergeable", 9)], flex={"title": 1})
        yield LogPane(self.log_lines, id="logpane")
        yield LinkBar(id="linkbar", classes="hidden")
        yield PaneFilter(placeholder="filter this pane (enter: keep, escape: clear)", id="filter", classes="hidden")
        # The palette (ctrl+p) is listed on the help screen: the footer's width goes to the operator's keys.
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._show_active()
        self.call_after_refresh(self.fleet.refresh_panes)  # the header and panes as soon as they exist

    # --- sizes: on a small terminal the panes are tabs -------------------------------------------

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    def on_resize(self, event: events.Resize) -> None:
        compact = event.size.width < COMPACT_WIDTH or event.size.height < COMPACT_HEIGHT
        if compact != self.compact:
            self.set_class(compact, "-compact")
            self._show_active()
            self._keys_signature = ()  # the footer shows other keys in the compact layout
            self.update_keys()
        self.fleet.update_header()

    def _show_active(self) -> None:
        for pane in PANES:
            self.table(pane).set_class(pane == self.active_pane, "-shown")
        self.update_tabs()

    def update_tabs(self) -> None:
        labels = {pane: f"{self.table(pane).title} {self.table(pane).total}" for pane in PANES}
        self.query_one(PaneTabs).show(labels, self.active_pane)

    def show_pane(self, pane: str) -> None:
        """Focus a pane; on a small terminal also bring it on screen."""
        self.active_pane = pane
        self._show_active()
        self.table(pane).focus()

    @on(PaneTab.Chosen)
    def _tab_chosen(self, event: PaneTab.Chosen) -> None:
        event.stop()
        if self.has_class("-log-full"):
            self.action_fullscreen()
        self.show_pane(event.pane)

    def table(self, pane: str) -> PaneTable:
        return self.query_one(f"#{pane}", PaneTable)

    def table_if_present(self, pane: str) -> PaneTable | None:
        """The pane's table, or None while the screen is not (or no longer) composed: timers that fire
        during start-up or shut-down use this."""
        if not self.is_mounted:
            return None
        try:
            return self.table(pane)
        except NoMatches:
            return None

    @property
    def log_pane(self) -> LogPane:
        return self.query_one(LogPane)

    def focused_pane(self) -> str:
        focused = self.focused
        if isinstance(focused, PaneTable):
            return focused.pane
        if focused is not None and focused.id in ("log", "log-search"):
            return "log"
        return self.filter_target or ""

    def selection(self) -> Selection:
        fleet = self.fleet
        pane = self.focused_pane()
        if pane == "log":
            run = fleet.runs.get(fleet.shown_run or "")
            return Selection("log", run=run, issue_number=run.issue if run else None)
        if pane not in PANES:
            return Selection(pane)
        key = self.table(pane).selected_key
        if key is None:
            return Selection(pane)
        if pane == "proposals":
            issue = fleet.proposals.get(int(key.removeprefix("issue-")))
            return Selection(pane, issue=issue, issue_number=issue.number if issue else None)
        if pane == "agents":
            run = fleet.runs.get(key)
            if run is None:
                return Selection(pane)
            pull = fleet.pulls.get(run.pr) if run.pr is not None else None
            issue = fleet.proposals.get(run.issue) if run.issue is not None else None
            return Selection(pane, issue=issue, issue_number=run.issue, pull=pull, run=run)
        pull = fleet.pulls.get(int(key.removeprefix("pr-")))
        return Selection(pane, pull=pull, run=fleet.run_for_pr(pull.number) if pull else None)

    # --- which keys apply ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        applies = self._applies(action)
        # On a small terminal a key that does not apply leaves the footer, so the ones that do stay legible.
        return False if applies is None and self.compact else applies

    def _applies(self, action: str) -> bool | None:
        if action in _LOOP_ACTIONS:
            state = self.fleet.header.loop.state
            if action == "restart_loop":
                return True if state == "stopped" else None
            return None if state in ("stopped", "unconfigured") else True
        if action == "detach":
            return True if can_hand_off(self.fleet.control, self.fleet.hand_off) else None
        if action not in _ROW_ACTIONS:
            return True
        local = self.fleet.control.forge_kind == "local"
        if action == "merge" and not local:
            return False  # never available on GitHub: merging happens on the PR page
        sel = self.selection()
        ok: bool
        if action in ("approve", "reject"):
            ok = sel.pane == "proposals" and sel.issue is not None
        elif action == "details":
            ok = sel.pane in PANES and (sel.issue_number is not None or sel.pr_number is not None)
        elif action == "tail_log":
            ok = sel.pane in PANES and sel.run is not None
        elif action == "stop":
            ok = sel.run is not None and sel.run.state.live
        elif action == "retry":
            ok = (sel.run is not None and sel.run.state.finished and sel.run.state is not RunState.SUCCEEDED
                  and sel.run.issue is not None)
        elif action == "merge":
            ok = sel.pane == "ready" and sel.pull is not None
        elif action == "open":
            ok = bool(sel.url) or (local and sel.pane == "ready" and sel.pull is not None)
        else:  # copy_url; the local forge has no pages: its PRs' branch names are copied
            ok = bool(sel.url) or (local and sel.pull is not None)
        return True if ok else None

    def update_keys(self) -> None:
        """Refresh the footer, but only when the set of keys that apply changed (a footer rebuild costs a frame)."""
        signature = tuple(self._applies(action) for action in sorted(_ROW_ACTIONS | _LOOP_ACTIONS))
        if signature != self._keys_signature:
            self._keys_signature = signature
            self.refresh_bindings()

    @on(DataTable.RowHighlighted)
    def _row_moved(self, event: DataTable.RowHighlighted) -> None:
        self.update_keys()
        if event.data_table.id == "agents" and event.row_key.value:
            self.fleet.show_run(event.row_key.value)
            self.fleet.note_selected_run()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, PaneTable) and event.widget.pane in PANES and event.widget.pane != self.active_pane:
            self.active_pane = event.widget.pane
            self._show_active()
        self.update_keys()

    # --- actions ---------------------------------------------------------------------------------

    def action_approve(self) -> None:
        sel = self.selection()
        if sel.issue is not None:
            self.fleet.follow_next_run(sel.issue.number)
            self.fleet.approve_issue(sel.issue.number)

    def action_reject(self) -> None:
        sel = self.selection()
        if sel.issue is None:
            return
        number = sel.issue.number
        outcome = ("The issue is closed" if self.fleet.config.policy.reject_action == "close"
                   else f"The issue is labelled {self.fleet.config.labels.rejected!r}")
        question = Text.assemble("Reject proposal ", (f"#{number}", "bold"), "?\n",
                                 (clean(sel.issue.title, 200), "italic"),
                                 f"\n\n{outcome} (policy.reject_action); no agent will work on it.")
        self.app.push_screen(ConfirmScreen("Reject proposal", question),
                             lambda yes: self.fleet.reject_issue(number) if yes else None)

    def action_details(self) -> None:
        sel = self.selection()
        if sel.pane in ("qa", "ready") or (sel.pane == "agents" and sel.pr_number is not None):
            self.fleet.open_detail(issue=None, pr=sel.pr_number)
        elif sel.issue_number is not None:
            self.fleet.open_detail(issue=sel.issue_number, pr=None)

    def action_tail_log(self) -> None:
        sel = self.selection()
        if sel.run is not None:
            self.fleet.show_run(sel.run.run_id)
            self.log_pane.log_widget.focus()

    def action_stop(self) -> None:
        run = self.selection().run
        if run is None:
            return
        question = Text.assemble("Stop the ", (run.role.value.upper(), "bold"), " run on ",
                                 (run_target(run), "bold"), f" ({clean(run.run_id, 40)})?\n\n"
                                 "Its work so far stays in the workspace; the issue can be retried.")
        run_id = run.run_id
        self.app.push_screen(ConfirmScreen("Stop agent", question),
                             lambda yes: self.fleet.stop_agent(run_id) if yes else None)

    def action_retry(self) -> None:
        run = self.selection().run
        if run is not None and run.issue is not None:
            self.fleet.retry_issue(run.issue)

    def action_run_pm(self) -> None:
        self.fleet.run_pm_now()

    def action_restart_loop(self) -> None:
        self.fleet.restart_loop()

    def action_detach(self) -> None:
        self.fleet.detach_fleet()

    def action_pause(self) -> None:
        self.fleet.toggle_pause()

    def action_open(self) -> None:
        sel = self.selection()
        if self.fleet.control.forge_kind == "local" and sel.pane == "ready" and sel.pull is not None:
            self.action_merge()
            return
        if sel.url:
            self.fleet.open_link(sel.url)

    def action_merge(self) -> None:
        sel = self.selection()
        if sel.pull is None or self.fleet.control.forge_kind != "local":
            return
        pull = sel.pull
        question = Text.assemble("Merge ", (f"PR #{pull.number}", "bold"), " into ", (clean(pull.base, 60), "bold"),
                                 " as you?\n", (clean(pull.title, 200), "italic"),
                                 f"\n\n+{pull.additions} −{pull.deletions} in {pull.changed_files} files, "
                                 f"CI {pull.ci.value}.")
        number = pull.number
        self.app.push_screen(ConfirmScreen("Merge", question),
                             lambda yes: self.fleet.merge_pr(number) if yes else None)

    def action_copy_url(self) -> None:
        sel = self.selection()
        if sel.url:
            self.fleet.share_link(sel.url)
        elif sel.pull is not None and self.fleet.control.forge_kind == "local":
            branch = clean(sel.pull.head, 200)
            self.app.copy_to_clipboard(branch)
            self.app.notify(f"copied the branch name {branch} (PR #{sel.pull.number}; the local forge has no "
                            "page)", markup=False)

    def action_inbox(self) -> None:
        self.fleet.open_inbox()

    def action_stats(self) -> None:
        self.fleet.open_stats()

    def action_filter(self) -> None:
        pane = self.focused_pane()
        if pane == "log" or self.has_class("-log-full"):
            self.log_pane.open_search()
            return
        if pane not in PANES:
            pane = "proposals"
        self.filter_target = pane
        box = self.query_one("#filter", PaneFilter)
        box.value = self.table(pane).filter_text
        box.placeholder = f"filter {self.table(pane).title} (enter: keep, escape: clear)"
        box.remove_class("hidden")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.filter_target:
            self.table(self.filter_target).set_filter(event.value)
            self.fleet.refresh_panes()

    @on(Input.Submitted, "#filter")
    @on(PaneFilter.Done, "#filter")
    def _filter_done(self, event: Input.Submitted | PaneFilter.Done) -> None:
        """Enter keeps the filter; escape clears it (and the prompt) and shows every row again."""
        event.stop()
        box = self.query_one("#filter", PaneFilter)
        box.add_class("hidden")
        target = self.filter_target or "proposals"
        self.filter_target = None
        if isinstance(event, PaneFilter.Done):
            with box.prevent(Input.Changed):
                box.value = ""
            self.table(target).set_filter("")
            self.fleet.refresh_panes()
        self.table(target).focus()

    def action_switch_pane(self) -> None:
        order = [*PANES, "log"]
        if self.has_class("-log-full"):
            self.log_pane.log_widget.focus()
            return
        current = self.focused_pane()
        following = order[(order.index(current) + 1) % len(order)] if current in order else order[0]
        if following == "log":
            self.log_pane.log_widget.focus()
        else:
            self.show_pane(following)

    def action_fullscreen(self) -> None:
        self.toggle_class("-log-full")
        if self.has_class("-log-full"):
            self.log_pane.log_widget.focus()
        else:
            self.show_pane("agents")

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.fleet.current_keys()))

    async def action_quit(self) -> None:
        await self.fleet.quit_console()


class FleetApp(App[None]):
    """The console. Build it with `make_app()`."""

    CSS_PATH = "fleet.tcss"
    TITLE = "fleet-tui"
    COMMANDS = App.COMMANDS | {FleetCommands}
    NOTIFICATION_TIMEOUT = 8

    def __init__(self, control: FleetControl, config: FleetConfig, *, clock: Clock | None = None,
                 state_dir: Path | None = None, theme_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None, platform: str | None = None,
                 first_run: SetupProbe | None = None, hand_off: HandOff | None = None) -> None:
        super().__init__()
        self.first_run = first_run
        self.hand_off = hand_off
        self.control = control
        self.config = config
        self._clock = clock or (lambda: datetime.now(UTC))
        self.state_dir = state_dir
        self.environ = os.environ if environ is None else environ
        self.platform = sys.platform if platform is None else platform
        self.max_lines = config.ui.log_lines
        # what the fleet looks like, from the latest snapshot and the events since
        self.snapshot: SnapshotPublished | None = None
        self.proposals: dict[int, Issue] = {}
        self.runs: dict[str, AgentRun] = {}
        self.pulls: dict[int, PullRequest] = {}
        self.inbox: list[NeedsHuman] = []
        self.paused = False
        self.header = HeaderState(repo=control.repo, forge_kind=control.forge_kind)
        # log lines: raw per-run tails (bounded) and the batch waiting for the next frame
        self._history: dict[str, deque[str]] = {}
        self._pending: dict[str, deque[str]] = {}
        self._log_pending = False
        self._flush_armed = False
        self._last_flush = 0.0
        self._last_lines: dict[str, str] = {}
        self._last_line_update = 0.0
        self._last_line_timer = False
        self.shown_run: str | None = None
        self.errors: list[str] = []
        self.bells = 0
        self.alerts = AlertGate()
        self._alerts_pending: list[Alert] = []
        self._alerts_armed = False
        self._loop_worker: Worker[None] | None = None
        # after an approve: (issue, the runs it had, the Agents cursor then) until its new run shows up
        self._follow: tuple[int, frozenset[str], str | None] | None = None
        self._quitting = False
        self.cell_styles = Styles()
        self.main = MainScreen(config.ui.log_lines)
        loaded, self.theme_problems = themes.load_themes(theme_dir if theme_dir is not None
                                                        else user_config_dir() / "themes")
        for theme in loaded:
            self.register_theme(theme)
        wanted = themes.remembered_theme(self.state_dir, config.ui.theme)
        if wanted not in self.available_themes:
            self.theme_problems.append(f"theme {wanted!r} not found; using {themes.DEFAULT_THEME}")
            wanted = themes.DEFAULT_THEME if themes.DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        self._styles_from_theme()

    def now(self) -> datetime:
        return self._clock()

    # --- start and stop -----------------------------------------------------------------------

    def on_mount(self) -> None:
        unknown = sorted(set(self.config.ui.keys) - set(ACTIONS_BY_ID))
        self.set_keymap({key: value for key, value in self.config.ui.keys.items() if key in ACTIONS_BY_ID})
        for problem in self.theme_problems:
            self.notify(clean(problem, 300), severity="warning", markup=False)
        if unknown:
            self.notify(f"ui.keys: unknown binding id(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(ACTIONS_BY_ID)}", severity="warning", markup=False)
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.push_screen(self.main)
        self.refresh_panes()
        self.set_interval(1.0, self._tick, name="header clock")
        if self.first_run is not None:
            # Nothing can run without a config: say what is missing instead of starting a fleet that fails.
            self._set_loop(LoopStatus("unconfigured", "no config file"))
            setup = SetupScreen([SetupItem("setup", "checking", "looking at the config, Docker and the engine's "
                                           "key…")], self.cell_styles)
            self.push_screen(setup)
            self._probe_setup(setup, self.first_run)
            return
        # The fleet starts once the first frame is on screen: its set-up (imports, the forge, the demo's
        # repository) never delays what the operator sees first.
        self.call_after_refresh(self._start_fleet)

    @work(thread=True, exclusive=True, group="setup", exit_on_error=False, description="Checking the set-up")
    def _probe_setup(self, screen: SetupScreen, probe: SetupProbe) -> None:
        items = probe()  # Docker and the environment: blocking calls, so a thread
        self.call_from_thread(screen.show_items, items)

    def _start_fleet(self) -> None:
        self.restart_loop()

    def restart_loop(self) -> None:
        """(Re)start the worker hosting `fleet.run()`, and the event reader with it."""
        if self._quitting or self.header.loop.state == "unconfigured":
            return
        self._set_loop(LoopStatus("starting"))
        self._loop_worker = self._host_loop()
        self._consume_events()

    def _set_loop(self, status: LoopStatus) -> None:
        self.header.loop = status
        self.update_header()
        if self.main.is_mounted:
            self.main.update_keys()

    def _theme_changed(self, theme: Any) -> None:
        self._styles_from_theme()
        themes.remember_theme(self.state_dir, theme.name, self.config.ui.theme)
        self.refresh_panes()

    def _styles_from_theme(self) -> None:
        theme = self.current_theme

        def color(value: str | None, fallback: str) -> Style:
            try:
                return Style.parse(value or fallback)
            except Exception:  # noqa: BLE001 - a user theme may hold a colour Rich cannot read
                return Style.parse(fallback)

        self.cell_styles = Styles(ok=color(theme.success, "green"), warn=color(theme.warning, "yellow"),
                             bad=color(theme.error, "red"), accent=color(theme.primary, "cyan"))

    async def quit_console(self) -> None:
        """Stop the loop (live agents keep running and are re-attached next start), then leave."""
        self._quitting = True
        with anyio.move_on_after(5):
            try:
                await self.control.shutdown()
            except Exception as exc:  # noqa: BLE001 - leaving must not fail
                self.log.error(f"shutdown: {exc!r}")
        self.exit()

    async def action_quit(self) -> None:
        await self.quit_console()

    @work(exclusive=True, group="hand-off", exit_on_error=False, description="Handing the fleet to a background process")
    async def detach_fleet(self) -> None:
        if not can_hand_off(self.control, self.hand_off) or self.hand_off is None:
            return
        self.notify("Starting the fleet in the background…", markup=False)
        await hand_off_fleet(self, self.hand_off)
        self.notify("The fleet runs in the background; this console is attached to it", markup=False)

    @work(exclusive=True, group="fleet-loop", exit_on_error=False, description="The fleet loop")
    async def _host_loop(self) -> None:
        await self.control.run()

    @work(exclusive=True, group="fleet-events", exit_on_error=False, description="Reading fleet events")
    async def _consume_events(self) -> None:
        post = self.post_message
        async for event in self.control.events():
            if isinstance(event, RunLogLines):
                if event.lines:
                    queue = self._pending.get(event.run_id)
                    if queue is None:
                        queue = self._pending[event.run_id] = deque(maxlen=self.max_lines)
                    queue.extend(event.lines)
                    if not self._log_pending:
                        self._log_pending = True
                        post(LogLinesPending())
            elif isinstance(event, SnapshotPublished):
                post(SnapshotArrived(event))
            elif isinstance(event, RunChanged):
                if event.run is not None:
                    post(RunUpdated(event.run))
            elif isinstance(event, NeedsHuman):
                post(HumanNeeded(event))
            elif isinstance(event, Notice):
                post(NoticeArrived(event))
            elif isinstance(event, RateLimited):
                post(RateLimitArrived(event))
            elif isinstance(event, LoopState):
                post(LoopStateArrived(event))
        post(EventsEnded("the event stream ended"))

    # --- the one place worker errors are shown ------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        detail = ""
        if event.state is WorkerState.ERROR:
            error = leaf_error(worker.error) if worker.error is not None else None
            detail = (clean(str(error), 300) or type(error).__name__) if error is not None else "unknown error"
            self.report_error(f"{worker.description or worker.name} failed: {detail}")
        if worker is self._loop_worker and not self._quitting:
            # The header tells the truth: whatever the fleet last said, a loop whose host ended is stopped.
            if event.state is WorkerState.ERROR:
                self._set_loop(LoopStatus("stopped", detail))
            elif event.state is WorkerState.SUCCESS:
                self._set_loop(LoopStatus("stopped", "the fleet loop returned"))

    def report_error(self, message: str) -> None:
        self.errors.append(message)
        self.notify(message, severity="error", markup=False, timeout=15)

    # --- events -------------------------------------------------------------------------------

    def on_snapshot_arrived(self, message: SnapshotArrived) -> None:
        snap = message.snapshot
        self.snapshot = snap
        self.header.snapshot = snap
        self.header.polled_at = snap.at
        self.proposals = {issue.number: issue for issue in snap.proposals}
        self.runs = {run.run_id: run for run in snap.runs}
        self.pulls = {pull.number: pull for pull in snap.pulls if pull.state == "open"}
        self.inbox = list(snap.needs_human)
        self.paused = self.header.paused = snap.paused
        if self.header.loop.state == "starting":
            self.header.loop = LoopStatus("running")  # a snapshot means the loop ticked
        for run_id in list(self._history):
            if run_id not in self.runs and run_id != self.shown_run:
                del self._history[run_id]
                self._last_lines.pop(run_id, None)
        self.refresh_panes()
        self.queue_alerts(self.alerts.from_snapshot(snap))
        if self.shown_run is None and self.runs:
            self.show_run(agent_order(list(self.runs.values()))[0].run_id)

    def on_run_updated(self, message: RunUpdated) -> None:
        self.runs[message.run.run_id] = message.run
        self.refresh_panes()

    def on_human_needed(self, message: HumanNeeded) -> None:
        item = message.item
        if all(inbox_key(existing) != inbox_key(item) for existing in self.inbox):
            self.inbox.append(item)
        self.queue_alerts([self.alerts.from_needs_human(item)])
        self.refresh_panes()

    def on_notice_arrived(self, message: NoticeArrived) -> None:
        notice = message.notice
        if _PM_WORD_RE.search(notice.message):
            self._pm_reported()
        alert = self.alerts.from_notice(notice)
        if alert is not None:
            self.queue_alerts([alert])

    # --- alerts: one toast and one bell per event that needs the operator -----------------------

    def queue_alerts(self, alerts: list[Alert]) -> None:
        """Announce `alerts` not announced before; what arrives within one short batch is shown together."""
        admitted = self.alerts.admit(alerts)
        for alert in admitted:
            if not alert.needs_you:  # an answer to the operator's own intent: at once, no bell
                self.notify(alert.message, title=alert.title, severity=alert.severity, markup=False)
        admitted = [alert for alert in admitted if alert.needs_you]
        if not admitted:
            return
        self._alerts_pending.extend(admitted)
        if not self._alerts_armed:
            self._alerts_armed = True
            self.set_timer(ALERT_BATCH_S, self.flush_alerts, name="alerts")

    def flush_alerts(self) -> None:
        pending, self._alerts_pending = self._alerts_pending, []
        self._alerts_armed = False
        if not pending:
            return
        shown = [summary(pending)] if len(pending) > BURST else pending
        for alert in shown:
            self.notify(alert.message, title=alert.title, severity=alert.severity, markup=False)
        if any(alert.needs_you for alert in pending) and self.config.ui.bell and self.alerts.may_ring():
            self.ring()

    def on_rate_limit_arrived(self, message: RateLimitArrived) -> None:
        self.header.rate_limited_until = message.event.until
        self.notify(f"Rate limited: {clean(message.event.reason, 200)}", severity="warning", markup=False)
        self.update_header()

    def on_loop_state_arrived(self, message: LoopStateArrived) -> None:
        event = message.event
        if self.header.loop.state == "stopped" and self._loop_worker is not None and self._loop_worker.is_finished:
            return  # the host worker ended: its reason stands until the operator restarts it
        self._set_loop(LoopStatus(event.state, event.reason, event.retry_at))

    def on_events_ended(self, message: EventsEnded) -> None:
        if self.header.loop.state != "stopped" and not self._quitting:
            self.notify(f"The fleet's events stopped: {message.reason}", severity="warning", markup=False)

    def ring(self) -> None:
        if self.config.ui.bell:
            self.bells += 1
            self.bell()

    # --- log lines ------------------------------------------------------------------------------

    def on_log_lines_pending(self, _message: LogLinesPending) -> None:
        wait = FRAME_S - (monotonic() - self._last_flush)
        if wait <= 0:
            self.flush_logs()
        elif not self._flush_armed:
            self._flush_armed = True
            self.set_timer(wait, self.flush_logs, name="log flush")

    def flush_logs(self) -> None:
        """Move the buffered lines into the per-run tails and write the shown run's batch at once."""
        self._log_pending = False
        self._flush_armed = False
        self._last_flush = monotonic()
        pending, self._pending = self._pending, {}
        shown: list[str] = []
        agents = self.main.table_if_present("agents")
        update_last = self._last_flush - self._last_line_update >= LAST_LINE_S
        if update_last:
            self._last_line_update = self._last_flush
        elif pending and not self._last_line_timer:
            self._last_line_timer = True
            self.set_timer(LAST_LINE_S, self._refresh_last_lines, name="last lines")
        for run_id, lines in pending.items():
            history = self._history.get(run_id)
            if history is None:
                history = self._history[run_id] = deque(maxlen=self.max_lines)
            history.extend(lines)
            if update_last:
                self._set_last_line(agents, run_id, lines[-1])
            if run_id == self.shown_run:
                shown = [line_for_terminal(line) for line in lines]
        if shown and agents is not None:
            self.main.log_pane.append(shown)

    def _set_last_line(self, agents: PaneTable | None, run_id: str, raw: str) -> None:
        last = clean(raw, 300)
        if self._last_lines.get(run_id) != last:
            self._last_lines[run_id] = last
            run = self.runs.get(run_id)
            shown = agent_last_line(run, last) if run is not None else last
            if agents is not None:
                agents.update_cell_if_present(run_id, "last", Text(shown, style=self.cell_styles.dim, no_wrap=True,
                                                                   overflow="ellipsis"))

    def _refresh_last_lines(self) -> None:
        """The trailing update of the last-line column after a throttled burst."""
        self._last_line_timer = False
        self._last_line_update = monotonic()
        agents = self.main.table_if_present("agents")
        for run_id, history in self._history.items():
            if history:
                self._set_last_line(agents, run_id, history[-1])

    def show_run(self, run_id: str) -> None:
        """Point the log pane at a run: its in-memory tail, or the tail of its log file once finished."""
        if run_id == self.shown_run or not self.main.is_mounted:
            return
        self.shown_run = run_id
        run = self.runs.get(run_id)
        label = f"{run.role.value.upper()} {run_target(run)} · {run_id}" if run else run_id
        history = self._history.get(run_id)
        pending = self._pending.get(run_id)
        if history or pending:
            lines = [line_for_terminal(line) for line in (*(history or ()), *(pending or ()))]
            self._pending.pop(run_id, None)
            if pending:
                self._history.setdefault(run_id, deque(maxlen=self.max_lines)).extend(pending)
            self.main.log_pane.show(label, lines)
            return
        self.main.log_pane.show(label, [])
        path = self.control.log_path(run_id)
        if path is not None:
            self._load_history(run_id, path)
        elif can_read_remote_logs(self.control):
            self._load_remote_history(run_id)

    @work(thread=True, exclusive=True, group="log-history", exit_on_error=False, description="Reading a run's log")
    def _load_history(self, run_id: str, path: Path) -> None:
        if path.is_file():
            self.post_message(HistoryLoaded(run_id, read_log_tail(path, self.max_lines)))

    @work(exclusive=True, group="log-history", exit_on_error=False, description="Reading a run's log")
    async def _load_remote_history(self, run_id: str) -> None:
        lines = await self.control.log_tail(run_id, self.max_lines)  # type: ignore[attr-defined]
        self.post_message(HistoryLoaded(run_id, [history_line(line) for line in lines]))

    def on_history_loaded(self, message: HistoryLoaded) -> None:
        if message.run_id == self.shown_run and not self._history.get(message.run_id):
            self.main.log_pane.append(message.lines)

    # --- panes ----------------------------------------------------------------------------------

    def run_for_pr(self, pr: int) -> AgentRun | None:
        runs = [run for run in self.runs.values() if run.pr == pr]
        live = [run for run in runs if run.state.live]
        return (live or runs or [None])[-1]

    def refresh_panes(self) -> None:
        if self.main.table_if_present("ready") is None:  # not composed yet, or being torn down
            return
        now = self.now()
        styles = self.cell_styles
        snap = self.snapshot
        runs = list(self.runs.values())
        main = self.main
        main.table("proposals").sync(proposal_rows(tuple(self.proposals.values()), snap.approvals if snap else (),
                                                   styles))
        main.table("agents").sync(agent_rows(runs, self._last_lines, now, styles))
        self._follow_new_run()
        self.note_selected_run()
        pulls = list(self.pulls.values())
        statuses = {status.pr: status for status in snap.pull_status} if snap else {}
        ready = [pull for pull in pulls if is_ready(pull, statuses.get(pull.number))]
        review = [pull for pull in pulls if not is_ready(pull, statuses.get(pull.number))]
        main.table("qa").sync(qa_rows(review, runs, self.config.roles.qa.max_qa_rounds, styles, statuses))
        main.table("ready").sync(ready_rows(ready, self.config.policy.max_pr_lines, styles))
        main.update_tabs()
        self.update_header()
        main.update_keys()
        if isinstance(self.screen, InboxScreen):
            self.screen.refresh_rows()

    def note_selected_run(self) -> None:
        """The Agents pane's bottom line: the selected run's id, where it runs and with which engine."""
        agents = self.main.table_if_present("agents")
        if agents is None:
            return
        run = self.runs.get(agents.selected_key or "")
        agents.set_note(" · ".join(clean(part, 40) for part in (run.run_id, run.runner, run.engine) if part)
                        if run is not None else "")

    def follow_next_run(self, issue: int) -> None:
        """Move the Agents cursor to the run an approve starts, unless the operator moves it first."""
        agents = self.main.table_if_present("agents")
        self._follow = (issue, frozenset(self.runs), agents.selected_key if agents is not None else None)

    def _follow_new_run(self) -> None:
        if self._follow is None:
            return
        issue, before, cursor_then = self._follow
        new = [run for run in self.runs.values() if run.issue == issue and run.run_id not in before]
        agents = self.main.table_if_present("agents")
        if not new or agents is None:
            return
        self._follow = None
        if agents.selected_key not in (cursor_then, None) and cursor_then is not None:
            return  # the operator moved the cursor since: leave it where they put it
        run_id = agent_order(new)[0].run_id
        if run_id in agents.rows:
            agents.move_cursor(row=agents.get_row_index(run_id), animate=False)
            self.show_run(run_id)

    def update_header(self) -> None:
        if self.main.is_mounted:
            self.header.repo = self.control.repo  # a deferred control learns its repository once started
            self.header.forge_kind = self.control.forge_kind
            self.header.needs_human = len(self.inbox)
            self.header.extra.update(attached_notes(self.control))
            try:
                bar = self.main.query_one(HeaderBar)
            except NoMatches:  # the screen is being torn down (the clock can tick during shut-down)
                return
            width = bar.content_region.width or None
            bar.update(header_text(self.header, self.config, self.now(), self.cell_styles, width=width))

    def _tick(self) -> None:
        self.update_header()
        agents = self.main.table_if_present("agents")
        if agents is not None and any(run.state.live for run in self.runs.values()):
            agents.sync(agent_rows(list(self.runs.values()), self._last_lines, self.now(), self.cell_styles))

    # --- operator intents: each one a worker; errors surface in on_worker_state_changed --------

    @work(exclusive=True, group="intent-approve", exit_on_error=False, description="Approve")
    async def approve_issue(self, issue: int) -> None:
        self.alerts.intent_sent()
        try:
            await self.control.approve(issue)
        except Exception:
            self._follow = None  # no run will come of it
            raise
        self.notify(f"Approved #{issue}", markup=False)

    @work(exclusive=True, group="intent-reject", exit_on_error=False, description="Reject")
    async def reject_issue(self, issue: int) -> None:
        self.alerts.intent_sent()
        await self.control.reject(issue)
        self.notify(f"Rejected #{issue}", markup=False)

    # One toast per action: where the fleet itself announces an intent's outcome with a Notice (stop, pause,
    # merge, the PM's proposals), the console does not add its own.

    @work(exclusive=True, group="intent-stop", exit_on_error=False, description="Stop agent")
    async def stop_agent(self, run_id: str) -> None:
        self.alerts.intent_sent()
        await self.control.stop_run(run_id)

    @work(exclusive=True, group="intent-retry", exit_on_error=False, description="Retry")
    async def retry_issue(self, issue: int) -> None:
        self.alerts.intent_sent()
        await self.control.retry(issue)
        self.notify(f"Retrying #{issue}", markup=False)

    @work(exclusive=True, group="intent-pm", exit_on_error=False, description="Run PM")
    async def run_pm_now(self) -> None:
        self.alerts.intent_sent()
        self.header.extra["pm"] = "PM requested…"
        self.update_header()
        try:
            await self.control.run_pm()
        except Exception:
            self._pm_reported()
            raise
        # the PM's result ("proposed N", "nothing new") arrives as the fleet's Notice and clears this
        self.set_timer(PM_NOTE_S, self._pm_reported, name="pm note")

    def _pm_reported(self) -> None:
        if self.header.extra.pop("pm", None) is not None:
            self.update_header()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.header.paused = self.paused  # the header shows it at once; the fleet's Notice confirms it
        self.update_header()
        self._set_paused(self.paused)

    @work(exclusive=True, group="intent-pause", exit_on_error=False, description="Pause/resume")
    async def _set_paused(self, paused: bool) -> None:
        self.alerts.intent_sent()
        try:
            await self.control.set_paused(paused)
        except Exception:
            self.paused = self.header.paused = not paused
            self.update_header()
            raise

    @work(exclusive=True, group="intent-merge", exit_on_error=False, description="Merge")
    async def merge_pr(self, pr: int) -> None:
        self.alerts.intent_sent()
        await self.control.merge(pr)

    def open_detail(self, *, issue: int | None, pr: int | None) -> None:
        title = f"PR #{pr}" if pr is not None else f"Issue #{issue}"
        screen = DetailScreen(title)
        self.push_screen(screen)
        self._load_detail(screen, issue, pr)

    @work(exclusive=True, group="detail", exit_on_error=False, description="Loading details")
    async def _load_detail(self, screen: DetailScreen, issue: int | None, pr: int | None) -> None:
        try:
            detail = await self.control.detail(issue=issue, pr=pr)
        except Exception as exc:
            screen.show_error(f"Could not load: {exc}")
            raise
        await screen.load(detail)

    def open_inbox(self) -> None:
        if not isinstance(self.screen, InboxScreen):
            self.push_screen(InboxScreen(self._inbox_details, self.retry_issue))

    def open_stats(self) -> None:
        if not isinstance(self.screen, StatsScreen):
            self.push_screen(StatsScreen(self.control.stats, self.config.policy.budget_day_usd))

    def _inbox_details(self, issue: int | None, pr: int | None) -> None:
        self.open_detail(issue=issue if pr is None else None, pr=pr)

    # --- links ----------------------------------------------------------------------------------

    def open_link(self, url: str) -> None:
        """Open in a browser when one is at hand; on a remote terminal copy it and show it as a link."""
        if is_remote_terminal(self.environ, self.platform):
            self.share_link(url)
        else:
            self.open_url(url)
            self.notify(f"Opened {url}", markup=False)

    def share_link(self, url: str) -> None:
        """Copy with OSC 52 and show the URL as a clickable OSC 8 link and as plain text."""
        self.copy_to_clipboard(url)
        bar = self.main.query_one(LinkBar)
        bar.update(Text.assemble(("copied: ", "dim"), (url, Style(link=url, underline=True))))
        bar.remove_class("hidden")
        self.notify(f"Copied to the clipboard: {url}", markup=False)

    # --- keys -----------------------------------------------------------------------------------

    def key_for(self, action_id: str) -> str:
        keys = self._keymap.get(action_id) if hasattr(self, "_keymap") else None
        return keys or ACTIONS_BY_ID[action_id].key

    def current_keys(self) -> dict[str, str]:
        return {action.id: self.key_for(action.id) for action in ACTIONS}

    async def run_fleet_action(self, action_id: str) -> None:
        """Run an action from the palette on the main screen, as its key would."""
        if self.screen is not self.main:
            return
        if self.main.check_action(action_id, ()) is not True:
            self.notify(f"{ACTIONS_BY_ID[action_id].name}: not available for the selected row",
                        severity="warning", markup=False)
            return
        await self.main.run_action(action_id)


def make_app(control: FleetControl, config: FleetConfig, *, clock: Clock | None = None,
             state_dir: Path | None = None, theme_dir: Path | None = None,
             environ: Mapping[str, str] | None = None, platform: str | None = None,
             first_run: SetupProbe | None = None, hand_off: HandOff | None = None) -> FleetApp:
    """The console for `control`. `state_dir` holds ui.json (the remembered theme); `theme_dir` the user's theme
    files (default: `<user config dir>/themes`); `clock`, `environ` and `platform` are for tests.

    `first_run` (no config file was found) opens the set-up screen instead of starting the fleet: the probe,
    run in a thread, says what is missing (config, agent image, engine API key). `hand_off` (a hosting
    console) starts the fleet as a background process and returns a control attached to it (the detach key)."""
    return FleetApp(control, config, clock=clock, state_dir=state_dir if state_dir is not None else user_state_dir(),
                    theme_dir=theme_dir, environ=environ, platform=platform, first_run=first_run, hand_off=hand_off)


def run_app(control: FleetControl, config: FleetConfig) -> None:
    """Run the console in the terminal until the operator quits."""
    make_app(control, config).run()


__all__ = ["FleetApp", "MainScreen", "history_line", "is_remote_terminal", "make_app", "read_log_tail", "run_app"]

