"""What a front end (the console, `--headless`) may ask of the fleet, and what it hears back.

The console depends on this protocol only: it never imports the forge or the runners.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleet_tui.model import Comment, Event, Issue, PullRequest, Review


@dataclass(frozen=True, slots=True)
class Detail:
    """Everything the detail screen shows for one issue or PR."""

    issue: Issue | None = None
    pull: PullRequest | None = None
    reviews: tuple[Review, ...] = ()
    comments: tuple[Comment, ...] = ()
    diffstat: str = ""
    diff: str = ""


class FleetControl(Protocol):
    repo: str  # shown in the header
    forge_kind: str  # "local" | "github"

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on (a fresh `SnapshotPublished` first). A slow reader loses old log lines,
        never snapshots."""
        ...

    async def run(self) -> None:
        """Run the loop until `shutdown()`; the console hosts this in a worker."""
        ...

    async def shutdown(self) -> None:
        """Stop dispatching and return from `run()`; live agents keep running and are re-attached later."""
        ...

    # operator intents: each acts, then wakes the loop at once
    async def approve(self, issue: int) -> None: ...
    async def reject(self, issue: int) -> None: ...
    async def stop_run(self, run_id: str) -> None: ...
    async def retry(self, issue: int) -> None: ...
    async def run_pm(self) -> None: ...
    async def set_paused(self, paused: bool) -> None: ...
    async def merge(self, pr: int) -> None:
        """Local forge only: the human's merge (`git merge --no-ff`), after the console asked to confirm."""
        ...

    # reads for the console
    def log_path(self, run_id: str) -> Path | None: ...
    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail: ...
