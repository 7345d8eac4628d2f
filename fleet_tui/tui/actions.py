"""The console's action table: one entry per operator key. Bindings, the help screen and the command palette
are all built from it, and every entry has an id that fleet.toml's `[ui.keys]` can remap."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True, slots=True)
class FleetAction:
    id: str
    key: str
    description: str
    help: str
    show: bool = True
    long_name: str = ""  # the palette's name when the footer's label is shortened to fit

    @property
    def name(self) -> str:
        return self.long_name or self.description

    @property
    def action(self) -> str:
        return self.id

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.description, show=self.show, id=self.id,
                       key_display=KEY_DISPLAY.get(self.key))


KEY_DISPLAY = {"space": "space", "slash": "/", "question_mark": "?", "enter": "⏎", "tab": "tab"}

ACTIONS: tuple[FleetAction, ...] = (
    FleetAction("approve", "a", "Approve", "Approve the selected proposal (you apply the approval label)"),
    FleetAction("reject", "x", "Reject", "Reject the selected proposal (asks first)"),
    FleetAction("details", "enter", "View", "Open the issue or PR: body, QA thread, diff",
                long_name="Details"),
    FleetAction("tail_log", "l", "Log", "Tail the selected run's log in the log pane"),
    FleetAction("stop", "s", "Stop", "Stop the selected agent run (asks first)"),
    FleetAction("retry", "r", "Retry", "Retry the issue of the selected finished run"),
    FleetAction("run_pm", "p", "PM", "Run the PM now to propose issues", long_name="Run PM"),
    FleetAction("open", "o", "Open", "Open the issue or PR in the browser (local forge: merge it)"),
    FleetAction("merge", "m", "Merge", "Local forge: merge the selected ready PR as you (asks first)"),
    FleetAction("copy_url", "y", "Copy", "Copy the selected issue's or PR's URL (OSC 52)",
                long_name="Copy URL"),
    FleetAction("restart_loop", "R", "Restart", "Restart the fleet loop after it stopped",
                long_name="Restart the fleet loop"),
    FleetAction("pause", "space", "Pause", "Pause or resume dispatching new runs"),
    FleetAction("inbox", "i", "Inbox", "Open the needs-human inbox"),
    FleetAction("stats", "S", "Stats", "Spend, merges, QA pass rate, latency and cost per merged PR",
                show=False),
    FleetAction("filter", "slash", "Filter", "Filter the focused pane, or search the log"),
    FleetAction("switch_pane", "tab", "Pane", "Focus the next pane", show=False),
    FleetAction("fullscreen", "f", "Full log", "Toggle the log pane full screen", show=False),
    FleetAction("help", "question_mark", "Help", "Show every key"),
    FleetAction("detach", "D", "Detach", "Run the fleet in the background; it outlives this console",
                show=False, long_name="Detach the fleet to a background process"),
    FleetAction("quit", "q", "Quit", "Quit the console (agents keep running)", show=False),
)

ACTIONS_BY_ID = {action.id: action for action in ACTIONS}


def bindings() -> list[Binding]:
    return [action.binding() for action in ACTIONS]
