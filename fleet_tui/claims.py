"""Keeping this orchestrator's claims: acquiring an issue's lease on the forge (an atomic compare-and-swap),
renewing it while the fleet works the issue, releasing it when the work is done, watching other orchestrators'
leases, and noticing when a lease of ours was taken over. The decisions (when to renew, when a lease may be
broken) are `fleet_tui.leases`'s; this module does the forge calls and keeps the state between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from fleet_tui import leases
from fleet_tui.forge.base import ClaimLease

log = logging.getLogger("fleet_tui.claims")


def supports_claims(forge: Any) -> bool:
    """Whether `forge` holds claims itself (both shipped forges do; a test double may not)."""
    return all(callable(getattr(forge, name, None))
               for name in ("list_claims", "acquire_claim", "replace_claim", "release_claim", "get_claim"))


def claim_holder(repo: str, journal: Any, runner: Any) -> str:
    """The name this orchestrator holds leases under: its fleet instance (repository and journal directory),
    stable across restarts and different for every orchestrator with a journal of its own."""
    from fleet_tui.runners.base import fleet_instance_id

    where = getattr(journal, "dir", None)
    if where is not None:
        return fleet_instance_id(repo, where)
    return str(getattr(runner, "instance", "") or "fleet")


class ClaimKeeper:
    """This orchestrator's leases on the forge. `holder` names the orchestrator (its fleet instance: the
    repository and its state dir), so a restarted orchestrator recognizes and keeps its own leases."""

    def __init__(self, forge: Any, holder: str, lease_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.forge = forge
        self.holder = holder
        self.lease_s = float(lease_s)
        self.monotonic = monotonic
        self.held: dict[int, ClaimLease] = {}
        self.renewed_at: dict[int, float] = {}
        self.sightings: dict[int, leases.Sighting] = {}
        self.seen: dict[int, ClaimLease] = {}  # the forge's claims at the last look
        self.lost: set[int] = set()  # issues whose lease another orchestrator took; drained by `take_lost`
        self.active: set[int] = set()  # claimed issues still being worked, as of the last `settle`
        self._lock = anyio.Lock()

    # --- reading ------------------------------------------------------------------------------------

    async def look(self) -> dict[int, ClaimLease]:
        """Read every claim (one request) and update the watch on each; a held lease that moved or vanished
        is lost."""
        async with self._lock:
            claims = await self.forge.list_claims()
            now = self.monotonic()
            self.sightings = leases.watch(self.sightings, {n: c.version for n, c in claims.items()}, now)
            for issue, lease in list(self.held.items()):
                found = claims.get(issue)
                if found is None or found.version != lease.version:
                    self._lose(issue)
            self.seen = dict(claims)
            return claims

    def elsewhere(self) -> frozenset[int]:
        """Issues another orchestrator holds a lease on (live or expired), as of the last look."""
        return frozenset(n for n in self.seen if n not in self.held)

    def breakable(self) -> dict[int, str]:
        """Other orchestrators' leases this one may take over now, with the version seen unchanged."""
        others = {n: c.version for n, c in self.seen.items() if n not in self.held}
        return leases.expired(self.sightings, others, self.monotonic(), self.lease_s)

    # --- writing ------------------------------------------------------------------------------------

    async def acquire(self, issue: int, run_id: str, *, seen_version: str = "") -> ClaimLease | None:
        """The lease of `issue` for this orchestrator, or None when another one holds it. `seen_version`: take
        over the lease seen expired at that version (fails when it was renewed or taken meanwhile)."""
        async with self._lock:
            if issue in self.held:
                return self.held[issue]
            if seen_version:
                lease = await self.forge.replace_claim(ClaimLease(issue, seen_version), self.holder, run_id,
                                                       lease_s=self.lease_s)
            else:
                lease = await self.forge.acquire_claim(issue, self.holder, run_id, lease_s=self.lease_s)
                if lease is None:  # it exists: ours when a previous run of this orchestrator made it
                    current = await self.forge.get_claim(issue)
                    lease = current if current is not None and current.holder == self.holder else None
            if lease is None:
                return None
            self.held[issue] = lease
            self.renewed_at[issue] = self.monotonic()
            self.lost.discard(issue)
            return lease

    async def renew_due(self) -> set[int]:
        """Renew every held lease whose renewal is due; the issues whose lease turned out taken are returned
        (and kept in `lost`). A renewal that fails on the network is tried again at the next call."""
        taken: set[int] = set()
        async with self._lock:
            for issue, lease in list(self.held.items()):
                if not leases.renewal_due(self.renewed_at.get(issue, 0.0), self.monotonic(), self.lease_s):
                    continue
                fresh = await self.forge.replace_claim(lease, self.holder, lease.run_id, lease_s=self.lease_s)
                if fresh is None:
                    self._lose(issue)
                    taken.add(issue)
                    continue
                self.held[issue] = fresh
                self.renewed_at[issue] = self.monotonic()
        return taken

    async def release(self, issue: int) -> None:
        """Drop the lease of `issue` (the work on it is done or stopped for a human)."""
        async with self._lock:
            lease = self.held.pop(issue, None)
            self.renewed_at.pop(issue, None)
            if lease is not None:
                await self.forge.release_claim(lease)

    async def settle(self, snapshot: Any, labels: Any, journal: Any = None) -> set[int]:
        """Bring the leases in line with this orchestrator's claims in `snapshot` (a `reconcile.Snapshot`): take
        the lease of every claimed issue still being worked (a claim from before leases, or one back from a
        needs-human stop), release those whose work is done (closed, needs-human, its PR merged or closed: the
        journal's `pr_ended:<issue>`), renew those due. Returns the issues found held by
        another orchestrator: this one must stand down on them. An acquire that fails on the network leaves
        the issue out of `held`; the caller keeps such claims from dispatching until a later tick takes it."""
        issues = {issue.number: issue for issue in snapshot.issues}
        self.active = set()
        for number in snapshot.claims:
            issue = issues.get(number)
            ended = bool(journal.get_kv(f"pr_ended:{number}")) if journal is not None else False
            if issue is not None and leases.still_holds(listed=True, open_=issue.state == "open",
                                                        needs_human=issue.has_label(labels.needs_human),
                                                        pr_ended=ended):
                self.active.add(number)
        for number in [n for n in self.held if n not in self.active]:
            await self.release(number)
        for number in sorted(self.active - set(self.held) - self.lost):
            if await self.acquire(number, snapshot.claims[number].run_id) is None:
                self.lost.add(number)
        await self.renew_due()
        return self.take_lost()

    def unheld(self) -> set[int]:
        """Issues the last `settle` found ours to work but could not take the lease of."""
        return {n for n in self.active if n not in self.held}

    def take_lost(self) -> set[int]:
        lost, self.lost = self.lost, set()
        return lost

    def next_renewal_in(self) -> float:
        """Seconds until the next held lease is due for renewal (a third of the lease when none is held)."""
        period = self.lease_s / leases.RENEWALS_PER_LEASE
        if not self.renewed_at:
            return period
        now = self.monotonic()
        return max(0.0, min(at + period - now for at in self.renewed_at.values()))

    def _lose(self, issue: int) -> None:
        self.held.pop(issue, None)
        self.renewed_at.pop(issue, None)
        self.lost.add(issue)
        log.warning("the lease of issue #%s was taken by another orchestrator", issue)
