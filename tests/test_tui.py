"""Console behaviour through Pilot: every key's effect on the control, confirmations, greyed-out keys,
remapping, log batching and follow mode, links, themes, and that untrusted text never escapes as control
sequences or markup."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fake_fleet import NOW, FakeFleet, fixed_clock, sample_detail, sample_snapshot
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Log

from fleet_tui.config import FleetConfig, UiConfig
from fleet_tui.control import DeferredFleet
from fleet_tui.model import (
    AgentRun,
    Issue,
    LoopState,
    NeedsHuman,
    Notice,
    Role,
    RunLogLines,
    RunState,
)
from fleet_tui.tui.app import FleetApp, history_line, is_remote_terminal, make_app
from fleet_tui.tui.screens import ConfirmScreen, DetailScreen, HelpScreen, InboxScreen, SetupScreen
from fleet_tui.tui.view import SetupItem
from fleet_tui.tui.widgets import HeaderBar, LinkBar, LogPane, PaneTable, TextLines

SIZE = (120, 36)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def build(fake: FakeFleet | None = None, tmp_path: Path | None = None, **ui: object) -> tuple[FleetApp, FakeFleet]:
    fake = fake or FakeFleet()
    config = FleetConfig(ui=UiConfig(**ui)) if ui else FleetConfig()  # type: ignore[arg-type]
    app = make_app(fake, config, clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"DISPLAY": ":0"}, platform="linux")
    return app, fake


async def wait_for(pilot: Pilot[None], condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the app run until `condition()` holds, within a bounded number of frames."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


async def ready(pilot: Pilot[None]) -> FleetApp:
    app = pilot.app
    assert isinstance(app, FleetApp)
    await wait_for(pilot, lambda: app.snapshot is not None and app.main.table("proposals").row_count > 0)
    await pilot.pause()
    return app


LONG_LIVED = {"fleet-loop", "fleet-events"}


async def settle(pilot: Pilot[None]) -> None:
    """Wait for the intent and detail workers (the loop and event workers run until the app exits)."""
    await pilot.pause()
    short_lived = [w for w in pilot.app.workers if w.group not in LONG_LIVED]
    if short_lived:  # an empty list would mean "all workers"
        await pilot.app.workers.wait_for_complete(short_lived)
    await pilot.pause()


def pane(app: FleetApp, name: str) -> PaneTable:
    return app.main.table(name)


# --- keys -> intents ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_start_focuses_proposals_and_a_approves_the_first_row(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.focused is pane(app, "proposals")
        assert pane(app, "proposals").cursor_row == 0
        await pilot.press("a")
        await settle(pilot)
        assert fake.called("approve") == [12]
        await pilot.press("down", "a")
        await settle(pilot)
        assert fake.called("approve") == [12, 14]


@pytest.mark.anyio
async def test_reject_asks_first(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for answer in ("n", "escape"):
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press(answer)
            await settle(pilot)
            assert not isinstance(app.screen, ConfirmScreen)
        assert fake.called("reject") == []
        await pilot.press("x")
        asked = str(app.screen.query_one("#confirm-question").render())
        assert "The issue is closed (policy.reject_action)" in asked  # the configured action, by name
        await pilot.press("y")
        await settle(pilot)
        assert fake.called("reject") == [12]


@pytest.mark.anyio
async def test_copy_on_the_local_forge_copies_the_branch_name_and_says_so(tmp_path: Path) -> None:
    snap = sample_snapshot()
    local = replace(snap, pulls=tuple(replace(p, html_url="") for p in snap.pulls))  # the local forge has no pages
    app, fake = build(FakeFleet(local, forge_kind="local"), tmp_path=tmp_path)
    copied: list[str] = []
    app.copy_to_clipboard = copied.append  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for _ in range(3):
            await pilot.press("tab")  # to Ready to merge
        await pilot.press("y")
        await settle(pilot)
        assert copied and copied[-1].startswith("fleet/")
        assert any("copied the branch name" in str(n.message) for n in app._notifications)


@pytest.mark.anyio
async def test_stop_asks_then_stops_the_selected_live_run(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab")
        assert app.focused is pane(app, "agents")
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert fake.called("stop_run") == ["run-81c0"]


@pytest.mark.anyio
async def test_keys_that_do_not_apply_are_greyed_out_and_do_nothing(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main = app.main
        # on a proposal: stop, retry and tail-log do not apply
        for action in ("stop", "retry", "tail_log"):
            assert main.check_action(action, ()) is None
        await pilot.press("s", "r")
        await settle(pilot)
        assert isinstance(app.screen, type(main)) and fake.called("stop_run") == [] and fake.called("retry") == []
        # on the finished PM run: stop and approve do not apply; retry does not either (it succeeded)
        await pilot.press("tab", "down", "down", "down")  # live runs first, newest first; then finished ones
        assert pane(app, "agents").selected_key == "run-6d2e"
        for action in ("stop", "approve", "reject", "retry"):
            assert main.check_action(action, ()) is None
        await pilot.press("s", "a", "x", "r")
        await settle(pilot)
        assert app.screen is main
        assert fake.called("stop_run") == fake.called("approve") == fake.called("reject") == fake.called("retry") == []
        # merge is never offered on GitHub
        assert main.check_action("merge", ()) is False


@pytest.mark.anyio
async def test_retry_on_a_failed_run(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "r")  # live run: retry does nothing
        await pilot.press("down", "down", "r")
        await settle(pilot)
        assert pane(app, "agents").selected_key == "run-5b91"
        assert fake.called("retry") == [11]


@pytest.mark.anyio
async def test_p_reports_what_the_pm_proposed_in_one_toast(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(160, 36), notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert fake.called("run_pm") == [None]
        assert "PM requested…" in header_of(app) and not list(app._notifications)
        fake.push(Notice(at=NOW, message="the PM proposed 2 issue(s)"))
        await wait_for(pilot, lambda: "PM requested" not in header_of(app))
        assert [n.message for n in app._notifications] == ["the PM proposed 2 issue(s)"]
        await pilot.press("p")
        await settle(pilot)
        fake.push(Notice(at=NOW, message="the PM proposed nothing new"))
        await wait_for(pilot, lambda: "PM requested" not in header_of(app))
        assert [n.message for n in app._notifications][-1] == "the PM proposed nothing new"


@pytest.mark.anyio
async def test_pause_shows_at_once_and_toasts_once(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(160, 36), notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("space")
        assert "⏸ paused" in header_of(app)
        await settle(pilot)
        fake.push(Notice(at=NOW, message="dispatch paused"))
        await wait_for(pilot, lambda: bool(list(app._notifications)))
        await pilot.pause()
        assert [n.message for n in app._notifications] == ["dispatch paused"]


@pytest.mark.anyio
async def test_greyed_keys_look_unlike_live_ones(tmp_path: Path) -> None:
    from textual.widgets._footer import FooterKey

    app, _ = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        keys = {key.action: key for key in app.main.query(FooterKey)}
        live, greyed = keys["approve"], keys["stop"]  # on a proposal: approve applies, stop does not
        assert greyed.has_class("-disabled") and not live.has_class("-disabled")
        live_style = live.get_component_rich_style("footer-key--key")
        greyed_style = greyed.get_component_rich_style("footer-key--key")
        assert greyed_style.color != live_style.color and live_style.bold and not greyed_style.bold


@pytest.mark.anyio
async def test_run_pm_and_pause_toggle(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("p")
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert fake.called("run_pm") == [None]
        assert fake.called("set_paused") == [True, False]


@pytest.mark.anyio
async def test_keys_remap_from_config(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path, keys={"approve": "z", "run_pm": "ctrl+r"})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert fake.called("approve") == []
        await pilot.press("z", "ctrl+r")
        await settle(pilot)
        assert fake.called("approve") == [12]
        assert fake.called("run_pm") == [None]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert app.screen.keys["approve"] == "z"


@pytest.mark.anyio
async def test_details_screen_shows_the_control_detail(tmp_path: Path) -> None:
    fake = FakeFleet()
    fake.details[(None, 40)] = sample_detail()
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen) and app.screen.loaded
        await pilot.press("escape")
        await pilot.press("tab", "tab", "enter")  # QA pane, PR 40
        await settle(pilot)
        assert fake.called("detail") == [(12, None), (None, 40)]
        assert isinstance(app.screen, DetailScreen)
        text = app.export_screenshot()
        assert "Please&#160;keep" in text
        assert "end = start + size" in app.screen.query_one("#detail-diff", TextLines).plain()


@pytest.mark.anyio
async def test_the_stats_view_shows_the_numbers_that_matter(tmp_path: Path) -> None:
    from fleet_tui.tui.screens import StatsScreen

    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("S")
        assert isinstance(app.screen, StatsScreen)
        await settle(pilot)
        shown = str(app.screen.query_one("#stats-body").render())
        assert "65% passed (11 of 17)" in shown and "codex $1.84" in shown and "dev $1.91" in shown
        assert "median 21 min" in shown and "spend today       $3.76" in shown
        assert fake.called("stats") == [None]
        await pilot.press("escape")
        assert app.screen is app.main


@pytest.mark.anyio
async def test_inbox_lists_needs_human_and_retries(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("i")
        assert isinstance(app.screen, InboxScreen)
        assert app.screen.query_one("#inbox", PaneTable).row_count == 2
        await pilot.press("r")
        await settle(pilot)
        assert fake.called("retry") == [11]
        await pilot.press("escape")
        assert app.screen is app.main


@pytest.mark.anyio
async def test_open_on_a_remote_terminal_copies_and_links(tmp_path: Path) -> None:
    fake = FakeFleet()
    app = make_app(fake, FleetConfig(), clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"SSH_CONNECTION": "10.0.0.1 5000 10.0.0.2 22"}, platform="linux")
    opened: list[str] = []
    app.open_url = lambda url, *, new_tab=True: opened.append(url)  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "tab", "tab", "o")  # Ready pane, PR 38
        await pilot.pause()
        url = "https://github.com/acme/widgets/pull/38"
        assert opened == []
        assert app.clipboard == url
        bar = app.main.query_one(LinkBar)
        assert bar.display
        rendered = bar.render()
        assert any(span.style.link == url for span in rendered.spans if hasattr(span.style, "link"))  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_open_with_a_local_display_opens_the_browser(tmp_path: Path) -> None:
    app, _fake = build(tmp_path=tmp_path)
    opened: list[str] = []
    app.open_url = lambda url, *, new_tab=True: opened.append(url)  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("o")
        await pilot.press("y")
        await pilot.pause()
        assert opened == ["https://github.com/acme/widgets/issues/12"]
        assert app.clipboard == "https://github.com/acme/widgets/issues/12"


@pytest.mark.anyio
async def test_local_forge_merge_is_confirmed(tmp_path: Path) -> None:
    app, fake = build(FakeFleet(forge_kind="local", repo="/srv/widgets"), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "tab", "tab", "o")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.press("m")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert fake.called("merge") == [38]


@pytest.mark.anyio
async def test_worker_error_is_a_notification_not_a_crash(tmp_path: Path) -> None:
    fake = FakeFleet()
    fake.fail["approve"] = RuntimeError("the forge said no")
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert app.errors == ["Approve failed: the forge said no"]
        assert any("the forge said no" in n.message for n in app._notifications)
        await pilot.press("p")
        await settle(pilot)
        assert fake.called("run_pm") == [None]  # still alive and answering


@pytest.mark.anyio
async def test_an_error_inside_a_task_group_is_shown_by_its_own_message(tmp_path: Path) -> None:
    fake = FakeFleet()
    fake.fail["approve"] = ExceptionGroup("unhandled errors in a TaskGroup",
                                          [RuntimeError("cannot reach the Docker engine at tcp://x")])
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert app.errors == ["Approve failed: cannot reach the Docker engine at tcp://x"]


@pytest.mark.anyio
async def test_palette_runs_an_action(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: CommandPalette.is_open(app))
        await pilot.press(*"run pm")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot)
        await wait_for(pilot, lambda: fake.called("run_pm") == [None])


@pytest.mark.anyio
async def test_quit_shuts_the_loop_down(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert fake.running
        await pilot.press("q")
        await pilot.pause()
    assert ("shutdown", None) in fake.calls


# --- tables, filter, bell -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tables_update_in_place_keeping_the_cursor(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("down")
        assert pane(app, "proposals").selected_key == "issue-14"
        snap = sample_snapshot()
        extra = Issue(number=16, title="A new proposal", body="", created_at=NOW)
        renamed = replace(snap.proposals[1], title="Document budget keys (edited)")
        fake.publish(replace(snap, proposals=(snap.proposals[0], renamed, snap.proposals[2], extra)))
        await wait_for(pilot, lambda: pane(app, "proposals").row_count == 4)
        table = pane(app, "proposals")
        assert table.selected_key == "issue-14"
        assert table.get_cell("issue-14", "title").plain == "Document budget keys (edited)"
        fake.publish(replace(snap, proposals=(snap.proposals[1], snap.proposals[2])))
        await wait_for(pilot, lambda: pane(app, "proposals").row_count == 2)
        assert table.selected_key == "issue-14"


@pytest.mark.anyio
async def test_filter_narrows_the_focused_pane(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("slash", *"cache")
        await pilot.pause()
        assert pane(app, "proposals").row_count == 1
        await pilot.press("enter")
        assert app.focused is pane(app, "proposals")
        await pilot.press("a")
        await settle(pilot)
        assert fake.called("approve") == [15]
        # escape clears the filter and its prompt: every row is back
        await pilot.press("slash")
        assert app.main.query_one("#filter", Input).value == "cache"
        await pilot.press("escape")
        await pilot.pause()
        assert pane(app, "proposals").row_count == 3 and pane(app, "proposals").filter_text == ""
        assert app.main.query_one("#filter", Input).value == "" and app.focused is pane(app, "proposals")


@pytest.mark.anyio
async def test_bell_rings_when_something_needs_the_human(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        fake.push(NeedsHuman(at=NOW, issue=20, reason="tests failed twice"))
        fake.push(Notice(at=NOW, level="info", message="opened PR #44 for issue #19"))  # routine: no toast
        fake.push(Notice(at=NOW, level="error", message="over budget", bell=True))
        await wait_for(pilot, lambda: app.bells == 1)
        await pilot.pause(0.3)
        assert len(app.inbox) == 3
        assert app.bells == 1  # one burst, one bell
        assert sorted(n.message for n in app._notifications) == ["Needs you: #20 tests failed twice", "over budget"]
    quiet, fake2 = build(tmp_path=tmp_path, bell=False)
    async with quiet.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        fake2.push(NeedsHuman(at=NOW, issue=20, reason="budget stop"))
        await wait_for(pilot, lambda: len(list(quiet._notifications)) == 1)
        assert quiet.bells == 0


@pytest.mark.anyio
async def test_one_event_heard_three_ways_is_one_toast_and_one_bell(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        item = NeedsHuman(at=NOW, issue=20, pr=45, reason="QA rounds exhausted (3/3)")
        fake.push(item)  # the event, the fleet's notice of it, and the next snapshot holding it
        fake.push(Notice(at=NOW, level="warning", message="issue #20 needs a human: QA rounds exhausted (3/3)",
                         bell=True))
        fake.publish(replace(sample_snapshot(), needs_human=(*sample_snapshot().needs_human, item)))
        await wait_for(pilot, lambda: app.bells == 1)
        await pilot.pause(0.3)
        assert [n.message for n in app._notifications] == ["Needs you: #20 QA rounds exhausted (3/3)"]
        assert app.bells == 1


@pytest.mark.anyio
async def test_new_proposals_ready_prs_and_a_budget_stop_each_toast_once(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        await pilot.pause(0.3)
        assert not list(app._notifications) and app.bells == 0  # what is on screen at start is not news
        clock = [1000.0]
        app.alerts.clock = lambda: clock[0]
        snap = sample_snapshot()
        status = [replace(s, ready=True) if s.pr == 39 else s for s in snap.pull_status]
        newer = replace(snap, proposals=(*snap.proposals, replace(snap.proposals[0], number=16, title="Add a CLI")),
                        pull_status=tuple(status))
        fake.publish(newer)
        await wait_for(pilot, lambda: len(list(app._notifications)) == 2)
        assert sorted(n.message for n in app._notifications) == [
            "PR #39 is ready for you to merge: Bump the lock file", "Proposal #16 awaits your approval: Add a CLI"]
        assert app.bells == 1
        fake.publish(newer)  # the same again: nothing
        clock[0] += 10
        fake.publish(replace(newer, budget_stop="spent $20.00 of $20.00 today"))
        fake.push(Notice(at=NOW, level="error", message="budget stop: spent $20.00 of $20.00 today; dispatch is "
                                                        "paused until you resume or the day ends", bell=True))
        await wait_for(pilot, lambda: len(list(app._notifications)) == 3)
        await pilot.pause(0.3)
        assert [n.message for n in app._notifications][-1] == "Budget stop: spent $20.00 of $20.00 today"
        assert len(list(app._notifications)) == 3 and app.bells == 2


@pytest.mark.anyio
async def test_a_burst_of_alerts_is_one_toast_and_bells_are_rate_limited(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        for issue in range(50, 56):
            fake.push(NeedsHuman(at=NOW, issue=issue, reason="run timed out"))
        await wait_for(pilot, lambda: app.bells == 1)
        await pilot.pause(0.3)
        messages = [n.message for n in app._notifications]
        assert len(messages) == 1 and messages[0].startswith("6 things need you: Needs you: #50 run timed out")
        assert messages[0].endswith("and 3 more (i: inbox)")
        fake.push(NeedsHuman(at=NOW, issue=60, reason="run timed out"))  # a new event within the bell gap
        await wait_for(pilot, lambda: len(list(app._notifications)) == 2)
        await pilot.pause(0.3)
        assert app.bells == 1


def test_an_event_that_cleared_and_came_back_is_news_again() -> None:
    from fleet_tui.tui.alerts import AlertGate

    clock = [0.0]
    gate = AlertGate(clock=lambda: clock[0])
    snap = sample_snapshot()
    assert gate.from_snapshot(snap) == []  # the baseline
    assert gate.admit(gate.from_snapshot(snap)) == []
    without = replace(snap, proposals=snap.proposals[1:])
    assert gate.from_snapshot(without) == []
    back = gate.admit(gate.from_snapshot(snap))
    assert [alert.key for alert in back] == ["proposal:12"]
    assert gate.may_ring() and not gate.may_ring()
    clock[0] += 6
    assert gate.may_ring()


# --- log pane -------------------------------------------------------------------------------------


def log_of(app: FleetApp) -> Log:
    return app.main.query_one("#log", Log)


@pytest.mark.anyio
async def test_log_flood_is_batched_and_bounded(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path, log_lines=1000)
    flushes = 0
    original = app.flush_logs

    def counting_flush() -> None:
        nonlocal flushes
        flushes += 1
        original()

    app.flush_logs = counting_flush  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.shown_run == "run-81c0"
        for n in range(10_000):  # the worst case: one line per event
            fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=(f"line {n}",)))
        await pilot.press("p")
        await wait_for(pilot, lambda: bool(log_of(app).lines) and log_of(app).lines[-1] == "line 9999", timeout=20)
        await settle(pilot)
        assert fake.called("run_pm") == [None]
        assert log_of(app).line_count <= 1000
        assert flushes < 500, flushes  # batched per frame, not per line
        await wait_for(pilot, lambda: pane(app, "agents").get_cell("run-81c0", "last").plain == "line 9999")


@pytest.mark.anyio
async def test_log_follow_mode_stops_when_scrolled_up_and_resumes_at_the_end(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=tuple(f"a{n}" for n in range(300))))
        await wait_for(pilot, lambda: log_of(app).line_count == 300)
        await pilot.pause()
        log = log_of(app)
        logpane = app.main.query_one(LogPane)
        assert log.scroll_y == log.max_scroll_y and logpane.following
        log.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        assert not logpane.following
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=tuple(f"b{n}" for n in range(50))))
        await wait_for(pilot, lambda: log_of(app).line_count == 350)
        await pilot.pause()
        assert log.scroll_y == 0
        log.scroll_end(animate=False, immediate=True)
        await pilot.pause()
        assert logpane.following
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=("c",)))
        await wait_for(pilot, lambda: log_of(app).line_count == 351)
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y


@pytest.mark.anyio
async def test_log_search_and_fullscreen(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        lines = tuple("needle here" if n == 40 else f"hay {n}" for n in range(400))
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=lines))
        await wait_for(pilot, lambda: log_of(app).line_count == 400)
        await pilot.press("f")
        assert app.main.has_class("-log-full") and app.focused is log_of(app)
        await pilot.press("slash", *"needle", "enter")
        await pilot.pause()
        log = log_of(app)
        assert log.scroll_y <= 40 < log.scroll_y + log.size.height
        assert "line 41" in str(app.main.query_one(LogPane).border_subtitle)
        await pilot.press("escape", "f")
        assert not app.main.has_class("-log-full")


@pytest.mark.anyio
@pytest.mark.parametrize("term", ["[/]x", "[@click=app.bell]ring[/]", "[b", "$var"])
async def test_a_search_term_shows_as_typed_and_never_as_markup(tmp_path: Path, term: str) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=("plain", f"has {term} in it")))
        await wait_for(pilot, lambda: log_of(app).line_count == 2)
        await pilot.press("f", "slash", *term, "enter")
        await pilot.pause()
        subtitle = app.main.query_one(LogPane)._border_subtitle
        assert subtitle is not None and "line 2 of 2" in subtitle.plain
        await pilot.press("escape")
        await pilot.press("slash", *("nomatch" + term), "enter")
        await pilot.pause()
        subtitle = app.main.query_one(LogPane)._border_subtitle
        assert subtitle is not None and ("nomatch" + term.lower())[:29] in subtitle.plain
        assert not any(span.style and "@click" in str(span.style) for span in subtitle.spans)
        assert app.is_running and app.bells == 0 and not app.errors


@pytest.mark.anyio
async def test_a_run_id_with_markup_titles_the_log_pane_as_text(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        from fleet_tui.model import RunChanged

        evil_id = "run-[@click=app.quit]x[/]"
        fake.push(RunChanged(at=NOW, run=AgentRun(evil_id, Role.DEV, 31, RunState.RUNNING, started_at=NOW)))
        await wait_for(pilot, lambda: evil_id in pane(app, "agents").rows)
        app.show_run(evil_id)
        await pilot.pause()
        title = app.main.query_one(LogPane)._border_title
        assert title is not None and evil_id in title.plain
        assert app.is_running


@pytest.mark.anyio
async def test_a_huge_hostile_body_opens_without_freezing_the_console(tmp_path: Path) -> None:
    fake = FakeFleet()
    body = "x" + " " * 300_000 + "<!-- fleet:run=r1 -->\n" + "\x1b]52;c;" + "A" * 200_000 + "\nvisible tail"
    fake.details[(12, None)] = replace(sample_detail(), pull=None, issue=replace(fake.snapshot.proposals[0],
                                                                                 body=body))
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        start = time.monotonic()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.loaded, timeout=10)
        assert time.monotonic() - start < 5
        content = str(app.screen.query_one("#detail-content").render())
        assert "\x1b" not in content and "more characters not shown" in content


@pytest.mark.anyio
async def test_finished_run_history_comes_from_its_log_file(tmp_path: Path) -> None:
    fake = FakeFleet()
    log_file = tmp_path / "run-5b91.log"
    log_file.write_text("2026-03-14T09:10:00.123456+00:00 collecting tests\n"
                        "2026-03-14T09:10:01+00:00 \x1b[31merror\x1b[0m: 3 tests failed\n", encoding="utf-8")
    fake.log_files["run-5b91"] = log_file
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "down", "down", "l")
        await wait_for(pilot, lambda: log_of(app).line_count == 2)
        assert list(log_of(app).lines) == ["09:10:00 collecting tests", "09:10:01 error: 3 tests failed"]
        assert app.focused is log_of(app)


# --- safety ---------------------------------------------------------------------------------------

EVIL = ("\x1b]52;c;ZXZpbA==\x07\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
        "\x1b]0;pwned title\x07\x1b[2J\x9b31m [/] [@click=app.quit]Q[/] [link=https://evil.example]L[/link] [b]B")


def _evil_snapshot() -> object:
    snap = sample_snapshot()
    issue = replace(snap.proposals[0], title="T1 " + EVIL, body="BODY " + EVIL)
    run = replace(snap.runs[0], last_line="R1 " + EVIL)  # not the run shown in the log (that one's lines change)
    pull = replace(snap.pulls[2], title="P1 " + EVIL)
    return replace(snap, proposals=(issue, *snap.proposals[1:]), runs=(run, *snap.runs[1:]),
                   pulls=(*snap.pulls[:2], pull, snap.pulls[3]))


def _assert_inert(svg: str, *, shown_in_full: bool = True) -> None:
    """No escape sequence survived; where a line is wide enough, the markup is shown literally."""
    for bad in ("\x1b", "\x07", "\x9b", "]52;", "]8;;", "]0;", "pwned", "evil.example/"):
        assert bad not in svg
    if shown_in_full:
        assert "[@click=app.quit]Q[/]" in svg
        assert "[link=https://evil.example]L[/link]" in svg


@pytest.mark.anyio
async def test_untrusted_text_reaches_every_pane_inert(tmp_path: Path) -> None:
    fake = FakeFleet(_evil_snapshot())  # type: ignore[arg-type]
    fake.details[(12, None)] = replace(sample_detail(), pull=None, issue=fake.snapshot.proposals[0],
                                       diff="+ added " + EVIL)
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=(200, 50), notifications=True) as pilot:
        await ready(pilot)
        fake.push(RunLogLines(at=NOW, run_id="run-81c0", lines=("L1 " + EVIL, "L2 " + EVIL)))
        fake.push(Notice(at=NOW, level="warning", message="N1 " + EVIL))
        await wait_for(pilot, lambda: log_of(app).line_count == 2 and len(app.screen.query("Toast")) == 1)
        await pilot.pause()
        svg = app.export_screenshot()
        _assert_inert(svg)
        for marker in ("T1", "R1", "P1", "L1", "N1"):
            assert f"{marker}&#160;" in svg or f">{marker}" in svg, marker
        assert all("\x1b" not in line and "\x07" not in line for line in log_of(app).lines)
        assert "[b]B" in log_of(app).lines[0]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen) and app.screen.loaded
        svg = app.export_screenshot()
        _assert_inert(svg)
        assert "BODY" in svg
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running and app.return_code is None


@pytest.mark.anyio
async def test_run_changed_and_inbox_reasons_are_sanitized(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        from fleet_tui.model import RunChanged

        run = AgentRun("run-new", Role.DEV, 30, RunState.RUNNING, started_at=NOW - timedelta(seconds=5),
                       last_line="X1 " + EVIL)
        fake.push(RunChanged(at=NOW, run=run), NeedsHuman(at=NOW, issue=30, reason="Y1 " + EVIL))
        await wait_for(pilot, lambda: "run-new" in pane(app, "agents").rows and len(app.inbox) == 3)
        svg = app.export_screenshot()
        _assert_inert(svg, shown_in_full=False)
        assert "X1&#160;" in svg
        await pilot.press("i")
        await pilot.pause()
        svg = app.export_screenshot()
        _assert_inert(svg)
        assert "Y1&#160;" in svg


# --- the Agents pane follows the work ---------------------------------------------------------------


def agent_keys(app: FleetApp) -> list[str]:
    return [row.key.value for row in pane(app, "agents").ordered_rows]  # type: ignore[misc]


@pytest.mark.anyio
async def test_agents_pane_lists_live_runs_first_newest_first_with_round_and_runner(tmp_path: Path) -> None:
    from fleet_tui.model import RunChanged

    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        # QA (2 min) and Dev (6 min) are live; the failed Dev run ended after the PM run did
        assert agent_keys(app) == ["run-81c0", "run-7f3a", "run-5b91", "run-6d2e"]
        assert app.shown_run == "run-81c0"
        agents = pane(app, "agents")
        assert agents.get_cell("run-81c0", "round").plain == "r2"
        new = AgentRun("run-new", Role.DEV, 15, RunState.RUNNING, started_at=NOW, runner="docker", engine="codex")
        fake.push(RunChanged(at=NOW, run=new))
        await wait_for(pilot, lambda: agent_keys(app)[:1] == ["run-new"])
        await pilot.press("tab", "home")  # the selected run's id, runner and engine under the pane
        await wait_for(pilot, lambda: agents.selected_key == "run-new")
        assert "run-new · docker" in str(agents.border_subtitle)
        finished = replace(sample_snapshot().runs[1], state=RunState.SUCCEEDED, ended_at=NOW)
        fake.push(RunChanged(at=NOW, run=finished))
        await wait_for(pilot, lambda: agent_keys(app) == ["run-new", "run-7f3a", "run-81c0", "run-5b91", "run-6d2e"])


@pytest.mark.anyio
async def test_after_an_approve_the_cursor_follows_the_new_run(tmp_path: Path) -> None:
    from fleet_tui.model import RunChanged

    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")  # approve #12 from the Proposals pane
        await settle(pilot)
        assert fake.called("approve") == [12]
        assert pane(app, "agents").selected_key == "run-81c0"
        older = AgentRun("run-old", Role.DEV, 14, RunState.RUNNING, started_at=NOW)  # another issue's run
        fake.push(RunChanged(at=NOW, run=older))
        await wait_for(pilot, lambda: "run-old" in pane(app, "agents").rows)
        assert pane(app, "agents").selected_key == "run-81c0"
        run = AgentRun("run-12a", Role.DEV, 12, RunState.STARTING, started_at=NOW + timedelta(seconds=1))
        fake.push(RunChanged(at=NOW, run=run))
        await wait_for(pilot, lambda: pane(app, "agents").selected_key == "run-12a")
        assert app.shown_run == "run-12a" and app.focused is pane(app, "proposals")
        await wait_for(pilot, lambda: "run-12a" in str(app.main.query_one(LogPane).border_title))


@pytest.mark.anyio
async def test_after_an_approve_a_cursor_the_operator_moved_stays(tmp_path: Path) -> None:
    from fleet_tui.model import RunChanged

    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a", "tab", "down")
        await settle(pilot)
        assert pane(app, "agents").selected_key == "run-7f3a"
        fake.push(RunChanged(at=NOW, run=AgentRun("run-12a", Role.DEV, 12, RunState.RUNNING, started_at=NOW)))
        await wait_for(pilot, lambda: "run-12a" in pane(app, "agents").rows)
        await pilot.pause()
        assert pane(app, "agents").selected_key == "run-7f3a" and app.shown_run == "run-7f3a"
        await pilot.press("down", "l")  # l tails the selected run (a finished one: its log file)
        await pilot.pause()
        assert app.shown_run == pane(app, "agents").selected_key == "run-5b91"
        assert app.focused is log_of(app)


# --- the loop: the header tells the truth -----------------------------------------------------------


class LoopFleet(FakeFleet):
    """A fake whose `run()` fails (an exception) or returns (None) the first times it is called."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        super().__init__()
        self.outcomes = outcomes
        self.starts = 0

    async def run(self) -> None:
        self.starts += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome
            return
        await super().run()


def header_of(app: FleetApp) -> str:
    return str(app.main.query_one(HeaderBar).render())


@pytest.mark.anyio
async def test_a_failed_loop_says_stopped_with_its_reason_and_r_restarts_it(tmp_path: Path) -> None:
    fake = LoopFleet([RuntimeError("cannot reach the Docker engine at unix:///var/run/docker.sock")])
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=(160, 36)) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: "■ stopped" in header_of(app))
        assert "cannot reach the Docker engine" in header_of(app) and "running" not in header_of(app)
        assert app.main.check_action("restart_loop", ()) is True
        assert app.main.check_action("run_pm", ()) is None  # nothing would answer it
        await pilot.press("p")
        await settle(pilot)
        assert fake.called("run_pm") == []
        await pilot.press("R")
        await wait_for(pilot, lambda: fake.running and "▶ running" in header_of(app))
        assert fake.starts == 2 and "stopped" not in header_of(app)
        assert app.main.check_action("restart_loop", ()) is None  # greyed out while the loop runs
        await pilot.press("p")
        await settle(pilot)
        assert fake.called("run_pm") == [None]


@pytest.mark.anyio
async def test_a_loop_that_returns_is_stopped_too(tmp_path: Path) -> None:
    fake = LoopFleet([None])
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=(160, 36)) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: "■ stopped: the fleet loop returned" in header_of(app))


@pytest.mark.anyio
async def test_loop_state_events_drive_the_header(tmp_path: Path) -> None:
    app, fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(160, 36)) as pilot:
        await ready(pilot)
        assert "▶ running" in header_of(app)
        retry_at = NOW + timedelta(seconds=30)
        fake.push(LoopState(at=NOW, state="stopped", reason="the Docker engine does not answer", retry_at=retry_at))
        await wait_for(pilot, lambda: "■ stopped" in header_of(app))
        assert "the Docker engine does not answer" in header_of(app)
        assert f"restarting at {retry_at.astimezone().strftime('%H:%M:%S')}" in header_of(app)
        assert "running" not in header_of(app).replace("restarting", "")
        fake.push(LoopState(at=NOW, state="starting"))
        await wait_for(pilot, lambda: "… starting" in header_of(app))
        fake.push(LoopState(at=NOW, state="running"))
        await wait_for(pilot, lambda: "▶ running" in header_of(app))


@pytest.mark.anyio
async def test_a_deferred_fleet_restarts_with_a_fresh_fleet_and_says_why_it_stopped(tmp_path: Path) -> None:
    built: list[LoopFleet] = []

    @asynccontextmanager
    async def factory() -> AsyncIterator[LoopFleet]:
        fleet = LoopFleet([RuntimeError("the journal is locked")] if not built else [])
        built.append(fleet)
        yield fleet

    control = DeferredFleet(factory, repo="acme/widgets", forge_kind="github")
    app = make_app(control, FleetConfig(), clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"DISPLAY": ":0"}, platform="linux")
    async with app.run_test(size=(160, 36)) as pilot:
        await wait_for(pilot, lambda: "■ stopped: the journal is locked" in header_of(app))
        with pytest.raises(RuntimeError, match="not running .the journal is locked"):
            await control.run_pm()
        await pilot.press("R")
        await wait_for(pilot, lambda: len(built) == 2 and built[1].running and "▶ running" in header_of(app))
        await pilot.press("p")
        await settle(pilot)
        assert built[1].called("run_pm") == [None] and built[0].called("run_pm") == []


# --- first run -------------------------------------------------------------------------------------

FIRST_RUN = [
    SetupItem("config", "missing", "no fleet.toml here or in the user config folder", "fleet-tui init"),
    SetupItem("agent image", "missing", "fleet-agent:latest is not on the Docker engine", "fleet-tui image build"),
    SetupItem("engine API key", "missing", "OPENAI_API_KEY: not set", "export OPENAI_API_KEY=…"),
]


@pytest.mark.anyio
async def test_a_first_run_shows_what_is_missing_and_starts_nothing(tmp_path: Path) -> None:
    fake = FakeFleet()
    app = make_app(fake, FleetConfig(), clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"DISPLAY": ":0"}, platform="linux", first_run=lambda: FIRST_RUN)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, SetupScreen) and app.screen.checked)
        shown = str(app.screen.query_one("#setup-content").render())
        for command in ("fleet-tui init", "fleet-tui image build", "fleet-tui check", "export OPENAI_API_KEY"):
            assert command in shown
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main
        assert "not set up" in header_of(app) and "running" not in header_of(app)
        for action in ("restart_loop", "run_pm", "pause"):
            assert app.main.check_action(action, ()) is None
        await pilot.press("R", "p")
        await settle(pilot)
        assert not fake.running and fake.called("run_pm") == [] and "running" not in header_of(app)


# --- themes ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_theme_choice_is_remembered_and_user_themes_load(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('name = "mine"\nprimary = "#ff8800"\ndark = true\n', encoding="utf-8")
    app, _ = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.theme == "fleet-dark"
        assert {"fleet-dark", "fleet-light", "mine"} <= set(app.available_themes)
        app.theme = "fleet-light"
        await pilot.pause()
    assert json.loads((tmp_path / "ui.json").read_text())["theme"] == "fleet-light"
    again, _ = build(tmp_path=tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert again.theme == "fleet-light"


@pytest.mark.anyio
async def test_a_broken_theme_file_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text('name = "broken"\nprimary = 3\ncolour = "x"\n', encoding="utf-8")
    app, _ = build(tmp_path=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any("broken.toml" in problem for problem in app.theme_problems)
        assert app.theme == "fleet-dark"


# --- helpers without an app -----------------------------------------------------------------------


def test_history_line_keeps_the_time_and_strips_control_sequences() -> None:
    assert history_line("2026-03-14T09:10:00.5+00:00 hello\n") == "09:10:00 hello"
    assert history_line("no stamp \x1b]0;t\x07here") == "no stamp here"


@pytest.mark.parametrize(("environ", "platform", "remote"), [
    ({"DISPLAY": ":0"}, "linux", False),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", False),
    ({}, "linux", True),
    ({}, "darwin", False),
    ({"DISPLAY": ":0", "SSH_CONNECTION": "a b c d"}, "linux", True),
    ({"SSH_TTY": "/dev/pts/1"}, "darwin", True),
])
def test_remote_terminal_detection(environ: dict[str, str], platform: str, remote: bool) -> None:
    assert is_remote_terminal(environ, platform) is remote


def test_no_markup_is_built_from_data_in_the_console_source() -> None:
    """Markup is parsed from constants only: every toast says markup=False, every border title or subtitle is
    a literal, Content, Text or None, and nothing calls Content.from_markup or Text.from_markup."""
    import ast

    import fleet_tui.tui as tui_package

    problems = []
    for path in sorted(Path(tui_package.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "notify":
                    markup = [kw for kw in node.keywords if kw.arg == "markup"]
                    if not (markup and isinstance(markup[0].value, ast.Constant) and markup[0].value.value is False):
                        problems.append(f"{where}: notify without markup=False")
                if node.func.attr in ("from_markup", "render_str"):
                    problems.append(f"{where}: {node.func.attr}")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr in ("border_title", "border_subtitle"):
                        values = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) \
                            else [node.value]
                        for value in values:
                            literal = isinstance(value, ast.Constant)
                            wrapped = (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                                       and value.func.id in ("Content", "Text"))
                            if not (literal or wrapped):
                                problems.append(f"{where}: {target.attr} from data")
    assert not problems, problems


# --- every size -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_at_80x24_the_panes_are_tabs_and_each_one_is_reachable_with_rows(tmp_path: Path) -> None:
    app, _fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert app.main.compact
        seen = []
        for _ in range(4):
            await pilot.pause()
            table = app.focused
            assert isinstance(table, PaneTable)
            shown = [name for name in ("proposals", "agents", "qa", "ready") if pane(app, name).display]
            assert shown == [table.pane]  # one pane on screen: the focused one
            assert table.size.height >= 5 and table.row_count > 0
            assert table.region.bottom <= 23  # above the footer
            seen.append(table.pane)
            await pilot.press("tab")
        assert seen == ["proposals", "agents", "qa", "ready"]
        await pilot.pause()
        assert app.focused is app.main.log_pane.log_widget
        assert app.main.log_pane.log_widget.size.height >= 5  # the log keeps the rest of the screen
        await pilot.click("#tab-qa")
        await pilot.pause()
        assert app.focused is pane(app, "qa") and pane(app, "qa").display


@pytest.mark.anyio
async def test_at_80x24_the_header_keeps_the_needs_human_count_and_the_footer_only_live_keys(tmp_path: Path) -> None:
    app, _fake = build(tmp_path=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.pause()
        header = app.main.query_one(HeaderBar).render_line(0).text
        assert "needs-human 2" in header and "running" in header
        footer = app.screen.query_one("Footer")
        footer_text = " ".join(widget.render_line(0).text for widget in footer.query("FooterKey"))
        assert "Approve" in footer_text and "Help" in footer_text
        assert "Stop" not in footer_text  # no live run is selected in Proposals: the key is left out
        assert sum(widget.size.width for widget in footer.query("FooterKey")) <= 80
        # Ready to merge, full width: its last column shows whole
        await pilot.press("tab", "tab", "tab")
        await pilot.pause()
        ready_pane = pane(app, "ready")
        assert "Mergeable" in ready_pane.render_line(0).text  # the header row
        assert "clean" in ready_pane.render_line(1).text


@pytest.mark.anyio
@pytest.mark.parametrize("size", [(120, 36), (200, 50)])
async def test_wide_terminals_give_the_spare_width_to_titles_and_last_lines(tmp_path: Path,
                                                                          size: tuple[int, int]) -> None:
    app, _fake = build(tmp_path=tmp_path)
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.pause()
        assert not app.main.compact
        for name in ("proposals", "agents", "qa", "ready"):
            table = pane(app, name)
            used = sum(column.get_render_width(table) for column in table.columns.values())
            assert table.scrollable_content_region.width - 2 <= used <= table.scrollable_content_region.width
        if size[0] >= 200:
            row = pane(app, "proposals").render_line(1).text
            assert "Add retry with jitter to the webhook client" in row
            assert "Add --json output to the report command" in pane(app, "ready").render_line(1).text


def test_column_widths_share_the_spare_room_by_weight() -> None:
    from fleet_tui.tui.widgets import column_widths

    columns = [("#", "number", 4), ("Title", "title", 12), ("Verdict", "verdict", 9)]
    assert column_widths(columns, {"title": 3, "verdict": 1}, 10, 2) == {"title": 12, "verdict": 9}
    widths = column_widths(columns, {"title": 3, "verdict": 1}, 6 + 14 + 11 + 40, 2)
    assert widths == {"title": 42, "verdict": 19}


def test_a_narrow_header_drops_the_least_needed_parts_first() -> None:
    from fleet_tui.tui.view import HeaderState, LoopStatus, Styles, header_text

    state = HeaderState(repo="acme/widgets", forge_kind="github", polled_at=NOW, snapshot=sample_snapshot(),
                        needs_human=3, loop=LoopStatus("running"))
    wide = header_text(state, FleetConfig(), NOW, Styles(), width=200).plain
    assert wide.startswith("fleet-tui acme/widgets (github)") and "rate 4,812" in wide
    for width in (80, 60, 40, 30):
        text = header_text(state, FleetConfig(), NOW, Styles(), width=width)
        assert text.cell_len <= width
        assert text.plain.endswith("needs-human 3"), text.plain
    assert "running" in header_text(state, FleetConfig(), NOW, Styles(), width=40).plain


# --- the detail screen: Markdown, files, diff -------------------------------------------------------


def test_a_diff_lists_its_files_with_sizes_even_when_a_line_looks_like_a_header() -> None:
    from fleet_tui.tui.rendering import parse_diff

    diff = ("diff --git a/notes.md b/notes.md\n--- a/notes.md\n+++ b/notes.md\n@@ -1,3 +1,3 @@\n keep\n"
            "--- a deleted line that looks like a header\n+++ an added one that does too\n keep\n"
            "diff --git a/old.py b/new.py\nsimilarity index 90%\nrename from old.py\nrename to new.py\n"
            "diff --git a/logo.png b/logo.png\nBinary files a/logo.png and b/logo.png differ\n"
            "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n"
            "@@ -1,2 +0,0 @@\n-one\n-two\n")
    files = parse_diff(diff)
    assert [(f.path, f.additions, f.deletions, f.status) for f in files] == [
        ("notes.md", 1, 1, "modified"), ("old.py → new.py", 0, 0, "renamed"), ("logo.png", 0, 0, "binary"),
        ("gone.txt", 0, 2, "deleted")]


def test_markdown_shows_links_as_text_and_target_never_as_actions_or_markup() -> None:
    from fleet_tui.tui.rendering import TextStyles, markdown_text

    source = ("## Plan\n\nSee [the docs](https://example.com/docs) and **[@click=app.quit]bold[/]**.\n\n"
              "- `code` \x1b]8;;https://evil.example\x07here\x1b]8;;\x07\n- [x](javascript:alert(1))\n")
    text = markdown_text(source, TextStyles())
    plain = text.plain
    assert "Plan" in plain and "##" not in plain
    assert "the docs (https://example.com/docs)" in plain
    assert "[@click=app.quit]bold[/]" in plain  # shown as typed
    assert "\x1b" not in plain and "here" in plain
    assert "• code here" in plain
    assert all(not span.style.link and not (span.style.meta or {}) for span in text.spans
               if not isinstance(span.style, str))


def test_a_huge_diff_is_cut_with_a_line_that_says_so() -> None:
    from fleet_tui.tui.rendering import MAX_DIFF_LINES, TextStyles, diff_text

    diff = "diff --git a/big.txt b/big.txt\n--- a/big.txt\n+++ b/big.txt\n@@ -0,0 +1,9000 @@\n"
    diff += "".join(f"+line {n}\n" for n in range(9000))
    text = diff_text(diff, TextStyles()).plain
    assert text.count("\n") == MAX_DIFF_LINES + 1
    assert text.rstrip().endswith(f"diff truncated: {MAX_DIFF_LINES:,} of 9,004 lines shown; the whole diff is on "
                                  "the forge")


@pytest.mark.anyio
async def test_the_detail_of_a_pr_shows_its_files_and_diff_and_d_jumps_to_the_diff(tmp_path: Path) -> None:
    fake = FakeFleet()
    fake.details[(None, 40)] = sample_detail()
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "tab", "enter")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DetailScreen) and screen.loaded
        files = str(screen.query_one("#detail-files").render())
        assert "2 files · +7 −1" in files and "tests/test_pages.py" in files and "(added)" in files
        content = str(screen.query_one("#detail-content").render())
        assert "What changed" in content and "the issue (https://github.com/acme/widgets/issues/10)" in content
        body = screen.query_one("#detail-body")
        assert body.scroll_y == 0
        await pilot.press("d")
        await pilot.pause()
        assert body.scroll_y > 0
        diff = screen.query_one("#detail-diff", TextLines)
        assert diff.region.y <= body.region.y + body.scrollable_content_region.height
        assert "+    end = start + size" in diff.plain()
        drawn = [diff.render_line(y).text for y in range(diff.line_count)]
        assert any(line.startswith("-    end = start + size + 1") for line in drawn)


@pytest.mark.anyio
async def test_a_huge_diff_loads_in_the_background_and_says_it_was_cut(tmp_path: Path) -> None:
    fake = FakeFleet()
    diff = "diff --git a/big.txt b/big.txt\n--- a/big.txt\n+++ b/big.txt\n@@ -0,0 +1,200000 @@\n"
    diff += "".join(f"+line {n} \x1b[2J\n" for n in range(200_000))
    fake.details[(None, 40)] = replace(sample_detail(), diff=diff)
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        start = time.monotonic()
        await pilot.press("tab", "tab", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.loaded, timeout=20)
        assert time.monotonic() - start < 10
        files = str(app.screen.query_one("#detail-files").render())
        shown = app.screen.query_one("#detail-diff", TextLines).plain()
        assert "big.txt" in files
        assert "\x1b" not in shown and "diff truncated" in shown


@pytest.mark.anyio
async def test_a_long_diff_line_folds_at_the_screen_width(tmp_path: Path) -> None:
    fake = FakeFleet()
    long_line = "+" + "x" * 299
    diff = f"diff --git a/min.js b/min.js\n--- a/min.js\n+++ b/min.js\n@@ -0,0 +1,1 @@\n{long_line}\n"
    fake.details[(None, 40)] = replace(sample_detail(), diff=diff)
    app, _ = build(fake, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("tab", "tab", "enter")
        await settle(pilot)
        diff_view = app.screen.query_one("#detail-diff", TextLines)
        width = diff_view.size.width
        drawn = [diff_view.render_line(y).text for y in range(diff_view.line_count)]
        folded = [line.rstrip() for line in drawn if set(line.strip()) <= {"x", "+"} and line.strip()]
        assert "".join(folded) == long_line
        assert all(len(line) <= width for line in drawn)
