"""What a front end (the console, `--headless`) may ask of the fleet, and what it hears back.

The console depends on this protocol only: it never imports the forge or the runners.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from fleet_tui.model import Comment, Event, Issue, PullRequest, Review

log = logging.getLogger("fleet_tui.control")


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in this environment
        return f"uid {os.geteuid()}"


def record_intent(control: object, action: str, args: dict[str, Any], *, user: str, console: str) -> None:
    """Journal who asked for an operator intent (the OS user and the console's id) before it runs. A control
    without a journal (a test double, an attached client) records nothing: the fleet's host records it."""
    append = getattr(getattr(control, "journal", None), "append_event", None)
    if append is None:
        return
    try:
        append("operator_intent", {"action": action, **args, "user": user, "console": console})
    except Exception as exc:  # noqa: BLE001 - a journal hiccup must not block the intent itself
        log.warning("could not journal %s by %s: %s", action, user, exc)


@dataclass(frozen=True, slots=True)
class Detail:
    """Everything the detail screen shows for one issue or PR."""

    issue: Issue | None = None
    pull: PullRequest | None = None
    reviews: tuple[Review, ...] = ()
    comments: tuple[Comment, ...] = ()
    diffstat: str = ""  # shown when there is no diff (e.g. "3 files, +42 -7")
    diff: str = ""  # the PR's unified diff (`git diff base...head` form); untrusted, any size: the console
    # sanitizes it, lists its files with their sizes and shows at most its first 4,000 lines


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
    async def stats(self) -> Any:
        """The fleet's numbers from its journal (`fleet_tui.stats.Stats`)."""
        ...


class DeferredFleet:
    """A `FleetControl` whose real fleet is built inside `run()`, so the console draws its first frame before
    any slow set-up (creating the demo repository, reaching the forge). Until then it reports "starting".

    `run()` may be called again after it returned or failed (the console's restart key): each call builds a
    fresh fleet. While no fleet runs, intents fail with the reason it stopped, and `events()` waits for the
    next one instead of ending.
    """

    def __init__(self, factory: Callable[[], AbstractAsyncContextManager[FleetControl]], *, repo: str,
                 forge_kind: str) -> None:
        self._factory = factory
        self._inner: FleetControl | None = None
        self._changed = anyio.Event()
        self._stop = anyio.Event()
        self.state = "idle"  # idle | starting | running | stopped
        self.stopped_reason = ""
        self.repo = repo
        self.forge_kind = forge_kind
        self.user = local_user()
        self.console = f"local-{os.getpid()}"  # the hosting console, in the journal's record of intents

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.stopped_reason = state, reason
        self._changed.set()
        self._changed = anyio.Event()

    async def _fleet(self) -> FleetControl:
        """The running fleet; waits while one starts; fails at once when none runs."""
        while True:
            if self._inner is not None:
                return self._inner
            if self.state == "stopped":
                raise RuntimeError(f"the fleet is not running ({self.stopped_reason}); restart it first")
            await self._changed.wait()

    async def run(self) -> None:
        if self._stop.is_set():
            return
        self._set_state("starting")
        reason = "the fleet loop returned"
        try:
            async with self._factory() as inner:
                self._inner = inner
                self.repo, self.forge_kind = inner.repo, inner.forge_kind
                self._set_state("running")
                if self._stop.is_set():
                    return
                await inner.run()
        except BaseException as exc:
            reason = str(exc) or type(exc).__name__
            raise
        finally:
            self._inner = None  # a closed fleet answers nothing: intents now say it stopped, and why
            self._set_state("stopped", "shut down" if self._stop.is_set() else reason)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            while self._inner is None:
                await self._changed.wait()
            fleet = self._inner
            async for event in fleet.events():
                yield event
            while self._inner is fleet:  # that fleet's stream ended: wait for it to go, then follow the next
                await self._changed.wait()

    async def shutdown(self) -> None:
        self._stop.set()
        if self._inner is not None:
            await self._inner.shutdown()

    def allow_restart(self) -> None:
        """Undo `shutdown()` for the next `run()` (a hand-off to a background fleet that did not happen)."""
        self._stop = anyio.Event()

    async def _intent(self, action: str, **args: Any) -> None:
        fleet = await self._fleet()
        record_intent(fleet, action, args, user=self.user, console=self.console)
        await getattr(fleet, action)(**args)

    async def approve(self, issue: int) -> None:
        await self._intent("approve", issue=issue)

    async def reject(self, issue: int) -> None:
        await self._intent("reject", issue=issue)

    async def stop_run(self, run_id: str) -> None:
        await self._intent("stop_run", run_id=run_id)

    async def retry(self, issue: int) -> None:
        await self._intent("retry", issue=issue)

    async def run_pm(self) -> None:
        await self._intent("run_pm")

    async def set_paused(self, paused: bool) -> None:
        await self._intent("set_paused", paused=paused)

    async def merge(self, pr: int) -> None:
        await self._intent("merge", pr=pr)

    def log_path(self, run_id: str) -> Path | None:
        return self._inner.log_path(run_id) if self._inner is not None else None

    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail:
        return await (await self._fleet()).detail(issue=issue, pr=pr)

    async def stats(self) -> Any:
        return await (await self._fleet()).stats()
