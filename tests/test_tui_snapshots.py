"""Snapshot tests of every console screen at a fixed size with fixed data (pytest-textual-snapshot).

Update with `pytest tests/test_tui_snapshots.py --snapshot-update`, then look at the SVGs before committing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fake_fleet import NOW, FakeFleet, fixed_clock, sample_detail
from textual.pilot import Pilot
from textual.widgets import Input, Log

from fleet_tui.config import FleetConfig, UiConfig
from fleet_tui.model import RunLogLines
from fleet_tui.tui.app import FleetApp, make_app
from fleet_tui.tui.view import SetupItem

SIZE = (120, 36)
LOG_LINES = tuple(
    line for n in range(12) for line in (
        f"[{n:02d}] reading src/pages.py (lines {n * 40}-{n * 40 + 39})",
        f"[{n:02d}] running: pytest -q tests/test_pages.py -k page_{n}",
    )
) + ("14 passed in 0.42s", "writing the fix: end = start + size")

Snap = Callable[..., bool]


async def _until(pilot: Pilot[None], condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


def _steady(app: FleetApp) -> None:
    for box in app.screen.query(Input):
        box.cursor_blink = False


def scenario(*keys: str, then: Callable[[Pilot[None]], Awaitable[None]] | None = None
             ) -> Callable[[Pilot[None]], Awaitable[None]]:
    """Wait for the first snapshot and the sample log lines, press `keys`, and freeze blinking cursors."""

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, FleetApp)
        await _until(pilot, lambda: app.snapshot is not None and app.main.table("proposals").row_count > 0)
        app.control.push(RunLogLines(at=NOW, run_id=app.shown_run or "", lines=LOG_LINES))  # type: ignore[attr-defined]
        await _until(pilot, lambda: app.main.query_one("#log", Log).line_count == len(LOG_LINES))
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        if then is not None:
            await then(pilot)
        short_lived = [w for w in app.workers if w.group.startswith(("intent", "detail"))]
        if short_lived:
            await app.workers.wait_for_complete(short_lived)
        await pilot.pause()
        _steady(app)
        await pilot.pause()

    return run_before


def console(tmp_path: Path, *, fake: FakeFleet | None = None, theme: str = "fleet-dark") -> FleetApp:
    fake = fake or FakeFleet()
    fake.details[(None, 40)] = sample_detail()
    return make_app(fake, FleetConfig(ui=UiConfig(theme=theme)), clock=fixed_clock, state_dir=tmp_path,
                    theme_dir=tmp_path, environ={"DISPLAY": ":0"}, platform="linux")


def test_main_screen(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_main_screen_sizes(snap_compare: Snap, tmp_path: Path, size: tuple[int, int]) -> None:
    assert snap_compare(console(tmp_path), terminal_size=size, run_before=scenario())


def test_small_terminal_agents_tab(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=(80, 24), run_before=scenario("tab"))


@pytest.mark.parametrize("tabs", [1, 2, 3, 4], ids=["agents", "qa", "ready", "log"])
def test_pane_focused(snap_compare: Snap, tmp_path: Path, tabs: int) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario(*["tab"] * tabs))


def test_log_full_screen(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("f"))


def test_detail_screen(snap_compare: Snap, tmp_path: Path) -> None:
    async def loaded(pilot: Pilot[None]) -> None:
        await _until(pilot, lambda: getattr(pilot.app.screen, "loaded", False))

    assert snap_compare(console(tmp_path), terminal_size=SIZE,
                        run_before=scenario("tab", "tab", "enter", then=loaded))


def test_detail_screen_diff(snap_compare: Snap, tmp_path: Path) -> None:
    async def at_the_diff(pilot: Pilot[None]) -> None:
        await _until(pilot, lambda: getattr(pilot.app.screen, "loaded", False))
        await pilot.press("d")
        await pilot.pause()

    assert snap_compare(console(tmp_path), terminal_size=(80, 24),
                        run_before=scenario("tab", "tab", "enter", then=at_the_diff))


def test_help(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("question_mark"))


def test_command_palette(snap_compare: Snap, tmp_path: Path) -> None:
    async def searched(pilot: Pilot[None]) -> None:
        await pilot.press(*"retry")
        await pilot.pause(0.3)

    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("ctrl+p", then=searched))


def test_confirm_reject(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("x"))


def test_confirm_stop(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("tab", "s"))


def test_confirm_local_merge(snap_compare: Snap, tmp_path: Path) -> None:
    app = console(tmp_path, fake=FakeFleet(forge_kind="local", repo="~/src/widgets"))
    assert snap_compare(app, terminal_size=SIZE, run_before=scenario("tab", "tab", "tab", "m"))


def test_inbox(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("i"))


def test_stats(snap_compare: Snap, tmp_path: Path) -> None:
    async def loaded(pilot: Pilot[None]) -> None:
        await _until(pilot, lambda: "cost per merged PR" in str(pilot.app.screen.query_one("#stats-body").render()))
        await pilot.pause()

    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("S", then=loaded))


def test_error_state(snap_compare: Snap, tmp_path: Path) -> None:
    fake = FakeFleet()
    fake.fail["approve"] = RuntimeError("403 Forbidden: the token cannot add labels on acme/widgets")
    assert snap_compare(console(tmp_path, fake=fake), terminal_size=SIZE, run_before=scenario("a"))


def test_light_theme(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path, theme="fleet-light"), terminal_size=SIZE, run_before=scenario())


def test_filter(snap_compare: Snap, tmp_path: Path) -> None:
    assert snap_compare(console(tmp_path), terminal_size=SIZE, run_before=scenario("slash", "c", "a", "c"))


def test_first_run(snap_compare: Snap, tmp_path: Path) -> None:
    items = [
        SetupItem("config", "missing", "no fleet.toml here or in the user config folder", "fleet-tui init"),
        SetupItem("agent image", "missing", "fleet-agent:latest is not on the Docker engine", "fleet-tui image build"),
        SetupItem("engine API key", "missing", "OPENAI_API_KEY: not set; codex runs may fail to reach their model",
                  "export OPENAI_API_KEY=…"),
    ]
    app = make_app(FakeFleet(), FleetConfig(), clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"DISPLAY": ":0"}, platform="linux", first_run=lambda: items)

    async def checked(pilot: Pilot[None]) -> None:
        await _until(pilot, lambda: getattr(pilot.app.screen, "checked", False))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=checked)


def test_first_run_console_behind(snap_compare: Snap, tmp_path: Path) -> None:
    app = make_app(FakeFleet(), FleetConfig(), clock=fixed_clock, state_dir=tmp_path, theme_dir=tmp_path,
                   environ={"DISPLAY": ":0"}, platform="linux", first_run=list)

    async def closed(pilot: Pilot[None]) -> None:
        await _until(pilot, lambda: getattr(pilot.app.screen, "checked", False))
        await pilot.press("escape")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=closed)


def test_attached_console_on_a_pool(snap_compare: Snap, tmp_path: Path) -> None:
    """A console attached to a fleet whose runs are on a pool of hosts, one of which stopped answering: the
    header says attached and how many log lines this console lost; each run names its host."""
    import dataclasses

    from fake_fleet import sample_snapshot

    snapshot = sample_snapshot()
    hosts = ("build-2", "build-3", "local", "build-2")
    runs = tuple(dataclasses.replace(run, host=host, host_unreachable=host == "build-2" and run.state.live)
                 for run, host in zip(snapshot.runs, hosts))
    fake = FakeFleet(dataclasses.replace(snapshot, runs=runs))
    fake.attached = True  # type: ignore[attr-defined]
    fake.dropped_lines = 1234  # type: ignore[attr-defined]
    assert snap_compare(console(tmp_path, fake=fake), terminal_size=SIZE, run_before=scenario())
