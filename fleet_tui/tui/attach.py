"""What the console shows of its link to a fleet it attached to (`fleet_tui.remote.client.RemoteFleet`): the
header notes, and a run's log history read by the fleet, since the fleet's files may be on another machine."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio

HandOff = Callable[[], Any]  # blocking: starts the background fleet, returns a control attached to it


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


async def hand_off_fleet(app: Any, start: HandOff) -> None:
    """Stop hosting the fleet in this console, start it as a background process (`start`, in a thread) and
    attach to it. If the background fleet does not come up, this console hosts the fleet again."""
    hosting = app.control
    await hosting.shutdown()
    worker = app._loop_worker
    if worker is not None:
        with contextlib.suppress(Exception):  # how it ended was reported already; only that it ended matters
            await worker.wait()  # the journal lock is released only once the hosted fleet has closed
    try:
        attached = await anyio.to_thread.run_sync(start)
    except BaseException:
        allow = getattr(hosting, "allow_restart", None)
        if allow is not None:
            allow()
        app.restart_loop()
        raise
    app.control = attached
    app.header.extra.pop("dropped", None)
    app.restart_loop()


def can_hand_off(control: Any, start: HandOff | None) -> bool:
    return start is not None and not getattr(control, "attached", False)


__all__ = ["HandOff", "attached_notes", "can_hand_off", "can_read_remote_logs", "hand_off_fleet"]
