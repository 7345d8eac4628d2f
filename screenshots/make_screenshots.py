"""Generate the README screenshots (SVG) from the console itself, with the fixed sample data of the tests.

    python screenshots/make_screenshots.py [--out screenshots/]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_fleet import NOW, FakeFleet, fixed_clock, sample_detail

from fleet_tui.config import FleetConfig, UiConfig
from fleet_tui.model import RunLogLines
from fleet_tui.tui.app import FleetApp, make_app
from fleet_tui.tui.view import SetupItem

SIZE = (120, 36)
LOG = (
    "reading issue #9: Fix off-by-one in pagination",
    "$ rg -n 'def page' src/",
    "src/pages.py:10:def page(items, size):",
    "editing src/pages.py",
    "$ pytest -q tests/test_pages.py",
    "..............                                                   [100%]",
    "14 passed in 0.42s",
    "writing the fix: end = start + size",
)

# name -> (keys to press, theme, forge kind)
SHOTS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "console": ((), "fleet-dark", "github"),
    "console-light": ((), "fleet-light", "github"),
    "agents": (("tab",), "fleet-dark", "github"),
    "detail": (("tab", "tab", "enter"), "fleet-dark", "github"),
    "detail-diff": (("tab", "tab", "enter", "d"), "fleet-dark", "github"),
    "console-80x24": ((), "fleet-dark", "github"),
    "console-200x50": ((), "fleet-dark", "github"),
    "inbox": (("i",), "fleet-dark", "github"),
    "stats": (("S",), "fleet-dark", "github"),
    "log-full-screen": (("f",), "fleet-dark", "github"),
    "help": (("question_mark",), "fleet-dark", "github"),
    "confirm-merge-local": (("tab", "tab", "tab", "m"), "fleet-dark", "local"),
}


SIZES = {"console-80x24": (80, 24), "console-200x50": (200, 50)}  # the rest: SIZE


async def _until(condition: Callable[[], object], pilot_pause: Callable[..., object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the console did not get ready in time")
        await pilot_pause(0.01)  # type: ignore[misc]


async def shoot(name: str, keys: tuple[str, ...], theme: str, forge: str, out: Path) -> Path:
    fake = FakeFleet(forge_kind=forge, repo="acme/widgets" if forge == "github" else "~/src/widgets")
    fake.details[(None, 40)] = sample_detail()
    state = Path(tempfile.mkdtemp(prefix="fleet-shots-"))
    app: FleetApp = make_app(fake, FleetConfig(ui=UiConfig(theme=theme)), clock=fixed_clock, state_dir=state,
                             theme_dir=state, environ={"DISPLAY": ":0"}, platform="linux")
    async with app.run_test(size=SIZES.get(name, SIZE), notifications=True) as pilot:
        await _until(lambda: app.snapshot is not None and app.main.table("proposals").row_count > 0, pilot.pause)
        agents = app.main.table("agents")  # the Dev run on #9, whose log this is
        agents.move_cursor(row=agents.get_row_index("run-7f3a"), animate=False)
        await _until(lambda: app.shown_run == "run-7f3a", pilot.pause)
        fake.push(RunLogLines(at=NOW, run_id="run-7f3a", lines=LOG))
        await _until(lambda: app.main.query_one("#log").line_count == len(LOG), pilot.pause)  # type: ignore[attr-defined]
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
            if hasattr(app.screen, "loaded"):  # the detail screen: let its worker finish before the next key
                await _until(lambda: app.screen.loaded, pilot.pause)  # type: ignore[attr-defined]
        short_lived = [w for w in app.workers if w.group.startswith(("intent", "detail", "stats"))]
        if short_lived:
            await app.workers.wait_for_complete(short_lived)
        await pilot.pause(0.2)
        path = Path(app.save_screenshot(f"{name}.svg", str(out)))
    return path


FIRST_RUN = [
    SetupItem("config", "missing", "no fleet.toml here or in the user config folder", "fleet-tui init"),
    SetupItem("agent image", "missing", "fleet-agent:latest is not on the Docker engine", "fleet-tui image build"),
    SetupItem("engine API key", "missing", "OPENAI_API_KEY: not set; codex runs may fail to reach their model",
              "export OPENAI_API_KEY=…"),
]


async def shoot_first_run(out: Path) -> Path:
    """The set-up screen a first run (no config file) opens on."""
    state = Path(tempfile.mkdtemp(prefix="fleet-shots-"))
    app: FleetApp = make_app(FakeFleet(), FleetConfig(), clock=fixed_clock, state_dir=state, theme_dir=state,
                             environ={"DISPLAY": ":0"}, platform="linux", first_run=lambda: FIRST_RUN)
    async with app.run_test(size=SIZE) as pilot:
        await _until(lambda: getattr(app.screen, "checked", False), pilot.pause)
        await pilot.pause(0.2)
        return Path(app.save_screenshot("first-run.svg", str(out)))


async def main_async(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (keys, theme, forge) in SHOTS.items():
        path = await shoot(name, keys, theme, forge, out)
        print(path)
    print(await shoot_first_run(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    asyncio.run(main_async(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
