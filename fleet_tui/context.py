"""What the orchestrator's parts share: the forge, runner, journal and workspaces they drive, the identities
learnt at start, the event outlet, and the journal's per-run extras. One object, handed to the observer, the
executor and the run supervisor, so none of them reaches into another's state.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fleet_tui.config import FleetConfig
from fleet_tui.forge.base import Forge
from fleet_tui.model import Event, Notice
from fleet_tui.runners.base import Runner

log = logging.getLogger("fleet_tui.orchestrator")
NOTICE_REPEAT_S = 60.0  # an identical notice within this window is not shown again


def now_utc() -> datetime:
    return datetime.now(UTC)


def short_id() -> str:
    return uuid.uuid4().hex[:6]


def findings_hash(findings: Iterable[str]) -> str:
    canon = sorted({" ".join(f.lower().split()) for f in findings})
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]


@dataclass
class FleetContext:
    """The collaborators and the facts learnt at start that every part of the orchestrator reads."""

    config: FleetConfig
    forge: Forge
    runner: Runner
    journal: Any  # fleet_tui.store.Journal
    workspaces: Any  # fleet_tui.workspace.WorkspaceManager
    repo_path: Path
    publish: Callable[[Event], None]
    wake: Callable[[], None]
    clock: Callable[[], datetime] = now_utc
    # learnt in `Orchestrator.start()`
    fleet_login: str = ""
    fleet_separate: bool = False
    operator_login: str = ""
    approvers: list[str] = field(default_factory=list)
    base: str = ""
    # issues this orchestrator flagged needs-human and has not seen cleared yet
    flagged: set[int] = field(default_factory=set)
    # since start: actions that failed and issues sent to needs-human (`--headless --once` exit codes)
    failed_actions: int = 0
    needs_human_raised: int = 0
    # this orchestrator's leases on the forge (`fleet_tui.claims.ClaimKeeper`); None: the forge keeps no claims
    claims: Any = None
    _said: dict[tuple[str, str], float] = field(default_factory=dict)

    def notice(self, message: str, level: Literal["info", "warning", "error"] = "info", bell: bool = False) -> None:
        """Tell the operator; the same notice again within `NOTICE_REPEAT_S` is logged only, so a fault
        that repeats every tick does not flood the console."""
        (log.warning if level != "info" else log.info)("%s", message)
        now = time.monotonic()
        said = self._said.get((level, message))
        if said is not None and now - said < NOTICE_REPEAT_S:
            return
        if len(self._said) > 500:
            self._said = {k: v for k, v in self._said.items() if now - v < NOTICE_REPEAT_S}
        self._said[(level, message)] = now
        self.publish(Notice(at=self.clock(), level=level, message=message, bell=bell))

    # --- the journal's extras of a run: what its result means (commits, verdict, pushed, ...) ------

    def extras(self, run_id: str) -> dict[str, Any]:
        return dict(self.journal.get_kv(f"run:{run_id}") or {})

    def set_extras(self, run_id: str, **values: Any) -> None:
        extras = self.extras(run_id)
        extras.update(values)
        self.journal.set_kv(f"run:{run_id}", extras)
        if "workspace" in values:
            open_ws = [r for r in self.journal.get_kv("open-workspaces", []) if r != run_id]
            if values["workspace"]:
                open_ws.append(run_id)
            self.journal.set_kv("open-workspaces", open_ws)

    def retry_at(self, number: int) -> datetime | None:
        """When the operator last cleared a needs-human stop of `number` (runs before it count no more)."""
        value = self.journal.get_kv(f"retry:{number}")
        return datetime.fromisoformat(value) if value else None
