"""What the console shows of its link to a fleet it attached to (`fleet_tui.remote.client.RemoteFleet`): the
header notes, and a run's log history read by the fleet, since the fleet's files may be on another machine."""

from __future__ import annotations

from typing import Any


def attached_notes(control: Any) -> dict[str, str]:
    """Header notes for an attached console: that it is attached, and how many log lines it lost by falling
    behind (none for a console that hosts its fleet)."""
    if not getattr(control, "attached", False):
        return {}
    notes = {"attached": "attached"}
    dropped = int(getattr(control, "dropped_lines", 0) or 0)
    if dropped:
        notes["dropped"] = f"{dropped:,} log lines dropped"
    return notes


def can_read_remote_logs(control: Any) -> bool:
    return callable(getattr(control, "log_tail", None))


__all__ = ["attached_notes", "can_read_remote_logs"]
