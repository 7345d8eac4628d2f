"""Leases on claims across orchestrators: the pure decisions of when a holder renews and when another
orchestrator may break a lease. No I/O and no clock inside: `now` is the caller's own monotonic clock.

Expiry never compares clocks of two machines. A lease carries no deadline anyone checks; what expires is
what *this* orchestrator has watched: it may break a lease only after it has seen the same lease version,
unchanged, for `lease_s` seconds of its own monotonic clock. A live holder renews every `lease_s / 3` (each
renewal is a new version), so a watcher never sees one version that long while the holder lives, whatever
the two wall clocks say, and a clock stepped by NTP or a suspended laptop cannot shorten the wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RENEWALS_PER_LEASE = 3  # the holder renews this many times per lease period


@dataclass(frozen=True, slots=True)
class Sighting:
    """A claim's version as this orchestrator first saw it, and when (its monotonic clock)."""

    version: str
    since: float


def watch(previous: Mapping[int, Sighting], current: Mapping[int, str], now: float) -> dict[int, Sighting]:
    """The sightings after one look at the forge's claims (`current`: issue -> version): a version seen before
    keeps the time it was first seen; a new version (a renewal, a takeover) starts its watch at `now`; a claim
    that is gone is forgotten."""
    seen: dict[int, Sighting] = {}
    for issue, version in current.items():
        before = previous.get(issue)
        seen[issue] = before if before is not None and before.version == version else Sighting(version, now)
    return seen


def may_break(sighting: Sighting | None, version: str, now: float, lease_s: float) -> bool:
    """Whether this orchestrator may take over the claim now at `version`: it has watched that very version,
    unchanged, for at least `lease_s` seconds."""
    return sighting is not None and sighting.version == version and now - sighting.since >= lease_s


def expired(sightings: Mapping[int, Sighting], current: Mapping[int, str], now: float,
            lease_s: float) -> dict[int, str]:
    """The claims in `current` this orchestrator may break now, with the version each was seen at (the
    compare-and-swap names that version, so a renewal that lands meanwhile makes the takeover fail)."""
    return {issue: version for issue, version in current.items()
            if may_break(sightings.get(issue), version, now, lease_s)}


def renewal_due(renewed_at: float, now: float, lease_s: float) -> bool:
    """Whether a held lease last renewed at `renewed_at` should be renewed now."""
    return now - renewed_at >= lease_s / RENEWALS_PER_LEASE


def still_holds(*, listed: bool, open_: bool, needs_human: bool, pr_ended: bool = False) -> bool:
    """Whether the fleet should keep its lease on an issue it claimed: while the issue is open and still the
    fleet's to work (listed with a fleet label), not stopped for a human, and its PR (if any) was not merged or
    closed. Once released, the in-progress label alone keeps other orchestrators off (they take over only a
    lease seen expired); the operator's retry takes the lease again."""
    return listed and open_ and not needs_human and not pr_ended
