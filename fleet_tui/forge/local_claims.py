"""Claims on the local forge: the `claims` table of forge.sqlite3, one row per claimed issue, each change one
transaction (the forge's `BEGIN IMMEDIATE` holds SQLite's write lock, across processes too). Acquire inserts
only if no row exists; renew, take over and release name the version they saw and touch the row only if it is
still at that version, so of two orchestrators racing exactly one wins. Same semantics as GitHub's claim refs.
"""

from __future__ import annotations

import sqlite3
import uuid

from fleet_tui.forge.base import ClaimLease


def _lease(row: sqlite3.Row) -> ClaimLease:
    return ClaimLease(int(row["issue"]), str(row["version"]), str(row["holder"]), str(row["run_id"]))


def list_claims(conn: sqlite3.Connection) -> dict[int, ClaimLease]:
    return {int(row["issue"]): _lease(row) for row in conn.execute("SELECT * FROM claims ORDER BY issue")}


def get_claim(conn: sqlite3.Connection, issue: int) -> ClaimLease | None:
    row = conn.execute("SELECT * FROM claims WHERE issue = ?", (issue,)).fetchone()
    return None if row is None else _lease(row)


def acquire(conn: sqlite3.Connection, issue: int, holder: str, run_id: str, lease_s: float,
            now: str) -> ClaimLease | None:
    version = uuid.uuid4().hex
    cursor = conn.execute("INSERT OR IGNORE INTO claims (issue, version, holder, run_id, lease_s, written_at) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (issue, version, holder, run_id, lease_s, now))
    return ClaimLease(issue, version, holder, run_id) if cursor.rowcount == 1 else None


def replace(conn: sqlite3.Connection, seen: ClaimLease, holder: str, run_id: str, lease_s: float,
            now: str) -> ClaimLease | None:
    version = uuid.uuid4().hex
    cursor = conn.execute("UPDATE claims SET version = ?, holder = ?, run_id = ?, lease_s = ?, written_at = ? "
                          "WHERE issue = ? AND version = ?",
                          (version, holder, run_id, lease_s, now, seen.issue, seen.version))
    return ClaimLease(seen.issue, version, holder, run_id) if cursor.rowcount == 1 else None


def release(conn: sqlite3.Connection, lease: ClaimLease) -> None:
    conn.execute("DELETE FROM claims WHERE issue = ? AND version = ?", (lease.issue, lease.version))
