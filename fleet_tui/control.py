"""What a front end (the console, `--headless`) may ask of the fleet, and what it hears back.

The console depends on this protocol only: it never imports the forge or the runners.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

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


class DeferredFleet:
    """A `FleetControl` whose real fleet is built inside `run()`, so the console draws its first frame before
    any slow set-up (creating the demo repository, reaching the forge). Until then it reports "starting"."""

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[FleetControl]], *, repo: str,
                 forge_kind: str) -> None:
        self._factory = factory
        self._inner: FleetControl | None = None
        self._ready = anyio.Event()
        self._failed: BaseException | None = None
        self._stop = anyio.Event()
        self.repo = repo
        self.forge_kind = forge_kind

    async def _fleet(self) -> FleetControl:
        await self._ready.wait()
        if self._inner is None:
            raise RuntimeError(f"the fleet did not start: {self._failed}")
        return self._inner

    async def run(self) -> None:
        try:
            async with self._factory() as inner:
                self._inner = inner
                self.repo, self.forge_kind = inner.repo, inner.forge_kind
                self._ready.set()
                if self._stop.is_set():
                    return
                await inner.run()
        except BaseException as exc:
            self._failed = exc
            raise
        finally:
            self._ready.set()

    async def events(self) -> AsyncIterator[Event]:
        fleet = await self._fleet()
        async for event in fleet.events():
            yield event

    async def shutdown(self) -> None:
        self._stop.set()
        if self._inner is not None:
            await self._inner.shutdown()

    async def approve(self, issue: int) -> None:
        await (await self._fleet()).approve(issue)

    async def reject(self, issue: int) -> None:
        await (await self._fleet()).reject(issue)

    async def stop_run(self, run_id: str) -> None:
        await (await self._fleet()).stop_run(run_id)

    async def retry(self, issue: int) -> None:
        await (await self._fleet()).retry(issue)

    async def run_pm(self) -> None:
        await (await self._fleet()).run_pm()

    async def set_paused(self, paused: bool) -> None:
        await (await self._fleet()).set_paused(paused)

    async def merge(self, pr: int) -> None:
        await (await self._fleet()).merge(pr)

    def log_path(self, run_id: str) -> Path | None:
        return self._inner.log_path(run_id) if self._inner is not None else None

    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail:
        return await (await self._fleet()).detail(issue=issue, pr=pr)
