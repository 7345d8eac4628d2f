"""Typed messages the console's workers post to the app (one per fleet event kind, log lines coalesced)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from fleet_tui.model import AgentRun, LoopState, NeedsHuman, Notice, RateLimited, SnapshotPublished


@dataclass
class SnapshotArrived(Message):
    """A fresh view of the fleet."""

    snapshot: SnapshotPublished


@dataclass
class RunUpdated(Message):
    """One run changed state between snapshots."""

    run: AgentRun


@dataclass
class HumanNeeded(Message):
    """Something stopped and waits for the operator."""

    item: NeedsHuman


@dataclass
class NoticeArrived(Message):
    """A message for the operator from the fleet."""

    notice: Notice


@dataclass
class LoopStateArrived(Message):
    """The fleet says whether its loop runs."""

    event: LoopState


@dataclass
class RateLimitArrived(Message):
    """The forge asked the fleet to slow down."""

    event: RateLimited


class LogLinesPending(Message):
    """New log lines wait in the app's buffer; only one of these is ever queued at a time."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LogLinesPending)


@dataclass
class HistoryLoaded(Message):
    """The tail of a finished run's log file, read off the event loop."""

    run_id: str
    lines: list[str]


@dataclass
class EventsEnded(Message):
    """The fleet's event stream ended."""

    reason: str = ""
