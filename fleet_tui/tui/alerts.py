"""Which fleet events interrupt the operator, and how often: a proposal to approve, a PR ready to merge, a
needs-human issue or PR, a spent budget. Each is one toast and one bell; the same event heard twice (the fleet's
event and its notice, or the next snapshot) is one; a burst is summed up in one toast; the bell is rate-limited.
Routine progress (a PR opened, a run re-attached) never interrupts. Pure: no Textual, the clock is passed in."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import monotonic
from typing import Literal

from fleet_tui.model import NeedsHuman, Notice, SnapshotPublished
from fleet_tui.untrusted import line_for_terminal

Severity = Literal["information", "warning", "error"]

REPEAT_S = 600.0  # an event that comes back sooner than this (without having cleared) is not announced again
BELL_GAP_S = 5.0  # at most one bell this often
BURST = 3  # more alerts than this at once become one toast
ANSWER_S = 60.0  # an informational notice this soon after an operator intent answers it, so it is shown

_READY_RE = re.compile(r"^PR #(\d+) passed QA and is ready")
_NEEDS_HUMAN_RE = re.compile(r"^issue #(\d+) needs a human")
_BUDGET_RE = re.compile(r"^budget stop:")


@dataclass(frozen=True, slots=True)
class Alert:
    key: str  # what makes two alerts the same event
    message: str  # sanitized, one line
    severity: Severity = "information"
    needs_you: bool = True  # a proposal, a ready PR, a needs-human item, a budget stop: rings the bell
    title: str = ""


def _needs_human_key(item: NeedsHuman) -> str:
    return f"needs-human:{item.issue}" if item.issue is not None else f"needs-human:pr{item.pr}"


def _text(value: str, limit: int = 200) -> str:
    return line_for_terminal(value or "", limit)


@dataclass
class AlertGate:
    """Turns snapshots and events into the alerts worth a toast (see the module docstring)."""

    clock: Callable[[], float] = monotonic
    repeat_s: float = REPEAT_S
    bell_gap_s: float = BELL_GAP_S
    _active: set[str] | None = None  # keys the last snapshot held (None before the first one)
    _fired: dict[str, float] = field(default_factory=dict)
    _last_bell: float | None = None
    _last_intent: float | None = None

    # --- where alerts come from ---------------------------------------------------------------

    def from_snapshot(self, snap: SnapshotPublished) -> list[Alert]:
        """What the snapshot holds that the previous one did not. The first snapshot is the baseline: what the
        console shows when it opens is on screen, not news."""
        current: dict[str, Alert] = {}
        for issue in snap.proposals:
            current[f"proposal:{issue.number}"] = Alert(
                f"proposal:{issue.number}", f"Proposal #{issue.number} awaits your approval: {_text(issue.title)}",
                title="proposal")
        for status in snap.pull_status:
            if status.ready:
                title = next((pull.title for pull in snap.pulls if pull.number == status.pr), "")
                current[f"ready:{status.pr}"] = Alert(
                    f"ready:{status.pr}", f"PR #{status.pr} is ready for you to merge: {_text(title)}".rstrip(": "),
                    title="ready to merge")
        for item in snap.needs_human:
            alert = self.from_needs_human(item)
            current[alert.key] = alert
        if snap.budget_stop:
            current["budget"] = Alert("budget", f"Budget stop: {_text(snap.budget_stop)}", "error", title="budget")
        before, self._active = self._active, set(current)
        if before is None:
            for key in current:  # a baseline key fires again only after it clears
                self._fired.setdefault(key, self.clock())
            return []
        for key in before - set(current):
            self._fired.pop(key, None)  # cleared: if it comes back, it is news again
        return [alert for key, alert in current.items() if key not in before]

    def from_needs_human(self, item: NeedsHuman) -> Alert:
        target = f"PR #{item.pr}" if item.pr is not None and item.issue is None else f"#{item.issue}"
        return Alert(_needs_human_key(item), f"Needs you: {target} {_text(item.reason)}".strip(), "warning",
                     title="needs-human")

    def from_notice(self, notice: Notice) -> Alert | None:
        """The fleet's notice as an alert, or None for routine progress nobody asked about."""
        message = _text(notice.message, 500)
        for pattern, key, title in ((_READY_RE, "ready:{}", "ready to merge"),
                                    (_NEEDS_HUMAN_RE, "needs-human:{}", "needs-human")):
            match = pattern.match(message)
            if match:
                return Alert(key.format(match.group(1)), message, "warning" if title == "needs-human"
                             else "information", title=title)
        if _BUDGET_RE.match(message):
            return Alert("budget", message, "error", title="budget")
        severity: Severity = {"warning": "warning", "error": "error"}.get(notice.level, "information")  # type: ignore[assignment]
        if notice.bell:
            return Alert(f"notice:{message}", message, severity)
        if severity == "information" and not self._answers_intent():
            return None  # routine progress: the panes show it
        return Alert(f"notice:{message}", message, severity, needs_you=False)

    def intent_sent(self) -> None:
        """The operator just asked for something: the fleet's next informational notices answer it."""
        self._last_intent = self.clock()

    def _answers_intent(self) -> bool:
        return self._last_intent is not None and self.clock() - self._last_intent <= ANSWER_S

    # --- what gets through --------------------------------------------------------------------

    def admit(self, alerts: Iterable[Alert]) -> list[Alert]:
        """The alerts not already announced (within `repeat_s`, or while their event has not cleared)."""
        now = self.clock()
        out = []
        for alert in alerts:
            fired = self._fired.get(alert.key)
            if fired is not None and now - fired < self.repeat_s:
                continue
            self._fired[alert.key] = now
            out.append(alert)
        return out

    def may_ring(self) -> bool:
        now = self.clock()
        if self._last_bell is not None and now - self._last_bell < self.bell_gap_s:
            return False
        self._last_bell = now
        return True


def summary(alerts: list[Alert]) -> Alert:
    """One toast for a burst: how many, and the first few."""
    shown = "; ".join(alert.message for alert in alerts[:BURST])
    more = len(alerts) - BURST
    tail = f"; and {more} more (i: inbox)" if more > 0 else ""
    worst: Severity = "error" if any(a.severity == "error" for a in alerts) else \
        "warning" if any(a.severity == "warning" for a in alerts) else "information"
    return Alert("burst", f"{len(alerts)} things need you: {shown}{tail}", worst, title="needs you")
