"""The local journal: one SQLite database per repository (runs, claims, QA rounds, usage, events,
approval pins, flags), the lock that keeps a second orchestrator off it, and the per-run log files.

The forge holds the truth; the journal holds what only this machine knows (run history, spend, what the
operator pressed) so that it survives restarts and `kill -9`. Log files hold raw, unsanitized agent text:
whoever shows them sanitizes them (`fleet_tui.untrusted`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from fleet_tui.model import AgentRun, Role, RunState, Usage, Verdict

DB_FILENAME = "journal.sqlite3"
LOCK_FILENAME = "orchestrator.lock"
LOGS_DIRNAME = "logs"

P = ParamSpec("P")
T = TypeVar("T")


class JournalError(Exception):
    """The journal cannot be used; `str()` names the path and says what to do."""


class JournalLocked(JournalError):
    """Another orchestrator holds this repository's journal."""

    def __init__(self, message: str, *, pid: int | None, path: Path) -> None:
        super().__init__(message)
        self.pid = pid
        self.path = path


# --- where a repository's journal lives ------------------------------------------------------------


def journal_dir(state_dir: Path | str | None, repo_id: str) -> Path:
    """`<state>/journals/<slug>-<hash>`: readable, and distinct even when two repo ids slug alike.

    `state_dir` None or empty means the user state dir (fleet.toml's `state_dir` left empty).
    """
    if state_dir is None or str(state_dir) == "":
        from fleet_tui.config import user_state_dir

        base = user_state_dir()
    else:
        base = Path(state_dir).expanduser()
    slug = re.sub(r"[^a-z0-9._-]+", "-", repo_id.lower()).strip("-._")[:48].strip("-._") or "repo"
    digest = hashlib.sha256(repo_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return base / "journals" / f"{slug}-{digest}"


def text_sha(text: str) -> str:
    """The hash an approval pin keeps of an issue's title or body."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --- schema ------------------------------------------------------------------------------------------
# _MIGRATIONS[n] takes a database from `user_version` n to n + 1, inside one transaction.
# Never edit a released step: append a new one.

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v0 -> v1: runs, claims, events, flags
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            issue INTEGER,
            pr INTEGER,
            state TEXT NOT NULL,
            branch TEXT NOT NULL DEFAULT '',
            attempt INTEGER NOT NULL DEFAULT 1,
            qa_round INTEGER NOT NULL DEFAULT 0,
            engine TEXT NOT NULL DEFAULT '',
            runner TEXT NOT NULL DEFAULT '',
            started_at TEXT,
            ended_at TEXT,
            exit_code INTEGER,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            last_line TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX runs_issue ON runs(issue)",
        "CREATE INDEX runs_state ON runs(state)",
        """CREATE TABLE claims (
            issue INTEGER NOT NULL,
            approval_event_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            claimed_at TEXT NOT NULL,
            UNIQUE(issue, approval_event_id)
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    # v1 -> v2: cached tokens per run, a usage ledger (seeded from the runs), QA rounds, approval pins
    (
        "ALTER TABLE runs ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            issue INTEGER,
            at TEXT NOT NULL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX usage_at ON usage(at)",
        "CREATE INDEX usage_issue ON usage(issue)",
        """INSERT INTO usage (run_id, issue, at, input_tokens, output_tokens, tokens, cost_usd)
           SELECT run_id, issue, COALESCE(ended_at, started_at, strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')),
                  input_tokens, output_tokens, input_tokens + output_tokens, cost_usd
           FROM runs WHERE input_tokens + output_tokens > 0 OR cost_usd > 0""",
        """CREATE TABLE qa_rounds (
            pr INTEGER NOT NULL,
            round INTEGER NOT NULL,
            head_sha TEXT NOT NULL DEFAULT '',
            verdict TEXT,
            findings_hash TEXT NOT NULL DEFAULT '',
            review_id TEXT NOT NULL DEFAULT '',
            at TEXT NOT NULL,
            PRIMARY KEY (pr, round)
        )""",
        """CREATE TABLE approvals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            issue INTEGER NOT NULL,
            event_id TEXT NOT NULL DEFAULT '',
            title_sha TEXT NOT NULL,
            body_sha TEXT NOT NULL,
            operator TEXT NOT NULL DEFAULT '',
            at TEXT NOT NULL
        )""",
        "CREATE INDEX approvals_issue ON approvals(issue)",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)

_LIVE_STATES = tuple(state.value for state in RunState if state.live)
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


# --- records that have no home in fleet_tui.model -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    issue: int
    approval_event_id: str
    run_id: str
    claimed_at: datetime


@dataclass(frozen=True, slots=True)
class QaRound:
    pr: int
    round: int
    head_sha: str
    verdict: Verdict | None
    findings_hash: str
    review_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalPin:
    """What the issue said when it was approved, and who approved it."""

    issue: int
    event_id: str
    title_sha: str
    body_sha: str
    operator: str
    at: datetime

    def matches(self, title: str, body: str) -> bool:
        """True when the issue text is still the text that was approved."""
        return text_sha(title) == self.title_sha and text_sha(body) == self.body_sha


@dataclass(frozen=True, slots=True)
class JournalEvent:
    id: int
    at: datetime
    kind: str
    data: Any


# --- time and JSON ---------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    """Fixed-width ISO-8601 UTC, so string order is time order. A naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _ts_opt(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in the journal as JSON")


def _to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


# --- error translation -----------------------------------------------------------------------------


def _advice(exc: sqlite3.Error, db_path: Path) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return (f"the journal is damaged; stop fleet-tui, move the file aside (mv '{db_path}' '{db_path}.broken') "
                "and start again: issues, PRs and claims live on the forge, only local run history and spend "
                "totals are lost")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "another process kept the journal busy for too long; try again, and check for a stuck fleet-tui"
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "the disk is full; free some space (or set state_dir in fleet.toml to another disk) and try again"
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN", "SQLITE_AUTH")) or "readonly" in text:
        return "check that this user can read and write the journal directory, or set state_dir in fleet.toml"
    if name.startswith("SQLITE_IOERR"):
        return "the disk reported an I/O error; check the disk and its free space"
    return "if this repeats, move the journal aside and start again (the forge holds the truth)"


def _guarded(what: str) -> Callable[[Callable[Concatenate[Journal, P], T]], Callable[Concatenate[Journal, P], T]]:
    """Run a Journal method under its mutex and turn sqlite errors into a JournalError."""

    def decorate(method: Callable[Concatenate[Journal, P], T]) -> Callable[Concatenate[Journal, P], T]:
        @functools.wraps(method)
        def wrapper(self: Journal, /, *args: P.args, **kwargs: P.kwargs) -> T:
            with self._mutex:
                if self._conn is None:
                    raise JournalError(f"{self.db_path}: the journal is closed")
                try:
                    return method(self, *args, **kwargs)
                except sqlite3.Error as exc:
                    raise JournalError(f"{self.db_path}: cannot {what}: {exc}; {_advice(exc, self.db_path)}") from exc

        return wrapper

    return decorate


# --- the orchestrator lock -------------------------------------------------------------------------


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0)
    except OSError:
        return None
    try:
        return int(raw.decode("ascii", "replace").strip())
    except ValueError:
        return None


def _take_lock(directory: Path) -> int:
    """An exclusive, non-blocking flock on `<dir>/orchestrator.lock`, holding our pid.

    The descriptor is not inherited by child processes (os.open's default), so an agent process that
    outlives a killed orchestrator does not keep the lock; the OS drops it when the holder dies.
    """
    lock_path = directory / LOCK_FILENAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise JournalError(f"{lock_path}: cannot open the orchestrator lock: {exc.strerror}; check that this "
                           "user can write the journal directory, or set state_dir in fleet.toml") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f"pid {pid}" if pid is not None else "pid unknown"
            raise JournalLocked(f"another fleet-tui ({who}) is already running on this repository's journal "
                                f"({directory}); stop it first, or use it", pid=pid, path=directory) from None
        raise JournalError(f"{lock_path}: cannot lock: {exc.strerror}") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise JournalError(f"{lock_path}: cannot write the orchestrator lock: {exc.strerror}") from exc
    return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # before unlocking, so a stale pid is never read by the next holder's rival
    os.close(fd)


# --- the journal -----------------------------------------------------------------------------------


class Journal:
    """One repository's journal. Every write is one committed transaction; reads are plain selects.

    The API is synchronous (calls are small); it is safe to share between threads.
    """

    def __init__(self, directory: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.dir = directory
        self.db_path = directory / DB_FILENAME
        self.logs_dir = directory / LOGS_DIRNAME
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()

    # opening and closing ------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, *, lock: bool = True) -> Journal:
        """Open (creating and migrating as needed) the journal in `directory`.

        `lock=True` is for the orchestrator: a second one on the same journal raises `JournalLocked`.
        Readers that never dispatch (`fleet-tui check`) pass `lock=False`.
        """
        directory = Path(directory).expanduser()
        try:
            (directory / LOGS_DIRNAME).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{directory}: cannot create the journal directory: {exc.strerror}; check "
                               "permissions, or set state_dir in fleet.toml") from exc
        lock_fd = _take_lock(directory) if lock else None
        db_path = directory / DB_FILENAME
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(db_path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{db_path}: the filesystem does not support SQLite's WAL mode (got {mode!r}); "
                                   "set state_dir in fleet.toml to a local disk")
            conn.execute("PRAGMA synchronous = FULL")
            _migrate(conn, db_path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if lock_fd is not None:
                _release_lock(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"{db_path}: cannot open the journal: {exc}; {_advice(exc, db_path)}") from exc
            raise
        return cls(directory, conn, lock_fd)

    @classmethod
    def for_repo(cls, repo_id: str, *, state_dir: Path | str | None = None, lock: bool = True) -> Journal:
        """The journal of one repository (GitHub `owner/name`, or the local repository's path)."""
        return cls.open(journal_dir(state_dir, repo_id), lock=lock)

    @property
    def locked(self) -> bool:
        """True when this journal holds the orchestrator lock."""
        return self._lock_fd is not None

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the database and release the orchestrator lock. Safe to call twice."""
        with self._mutex:
            conn, self._conn = self._conn, None
            fd, self._lock_fd = self._lock_fd, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if fd is not None:
            _release_lock(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        assert self._conn is not None
        with _transaction(self._conn) as conn:
            yield conn

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    # health ---------------------------------------------------------------------------------------

    @_guarded("check the journal")
    def integrity_check(self) -> str:
        """`ok`, or SQLite's description of what is damaged."""
        rows = self._db().execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)

    @_guarded("read the schema version")
    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    # runs -----------------------------------------------------------------------------------------

    @_guarded("save a run")
    def upsert_run(self, run: AgentRun) -> None:
        values = (
            run.run_id, run.role.value, run.issue, run.pr, run.state.value, run.branch, run.attempt,
            run.qa_round, run.engine, run.runner, _ts_opt(run.started_at), _ts_opt(run.ended_at),
            run.exit_code, run.usage.input_tokens, run.usage.output_tokens, run.usage.cached_tokens,
            run.usage.cost_usd, run.reason, run.last_line,
        )
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
                "ON CONFLICT(run_id) DO UPDATE SET "
                + ", ".join(f"{col} = excluded.{col}" for col in _RUN_COLUMN_LIST[1:]),
                values,
            )

    @_guarded("read a run")
    def get_run(self, run_id: str) -> AgentRun | None:
        row = self._db().execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _run_from_row(row)

    @_guarded("read runs")
    def runs(self, *, live_only: bool = False, issue: int | None = None, pr: int | None = None,
             limit: int | None = None) -> list[AgentRun]:
        """Runs in the order they were first saved; `limit` keeps the newest ones."""
        where: list[str] = []
        params: list[Any] = []
        if live_only:
            where.append(f"state IN ({', '.join('?' * len(_LIVE_STATES))})")
            params.extend(_LIVE_STATES)
        if issue is not None:
            where.append("issue = ?")
            params.append(issue)
        if pr is not None:
            where.append("pr = ?")
            params.append(pr)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        rows = self._db().execute(sql, params).fetchall()
        return [_run_from_row(row) for row in reversed(rows)]

    # claims ---------------------------------------------------------------------------------------

    @_guarded("record a claim")
    def add_claim(self, issue: int, approval_event_id: str, run_id: str, *, at: datetime | None = None) -> bool:
        """Record that `run_id` took `issue` on the strength of one approval event.

        False (and nothing written) when this approval of this issue was already claimed.
        """
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO claims (issue, approval_event_id, run_id, claimed_at) VALUES (?, ?, ?, ?)",
                (issue, approval_event_id, run_id, _ts(at or _now())),
            )
            return cursor.rowcount == 1

    @_guarded("read claims")
    def claims_for(self, issue: int) -> list[Claim]:
        rows = self._db().execute(
            "SELECT issue, approval_event_id, run_id, claimed_at FROM claims WHERE issue = ? ORDER BY rowid",
            (issue,),
        ).fetchall()
        return [Claim(row[0], row[1], row[2], _dt(row[3]) or _now()) for row in rows]

    # QA rounds ------------------------------------------------------------------------------------

    @_guarded("record a QA round")
    def record_qa_round(self, pr: int, round: int, *, head_sha: str, verdict: Verdict | None = None,
                        findings_hash: str = "", review_id: str = "", at: datetime | None = None) -> QaRound:
        """Record (or update, when the same round is recorded again) one QA round of a PR."""
        record = QaRound(pr, round, head_sha, verdict, findings_hash, review_id, at or _now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO qa_rounds (pr, round, head_sha, verdict, findings_hash, review_id, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pr, round) DO UPDATE SET head_sha = excluded.head_sha, "
                "verdict = excluded.verdict, findings_hash = excluded.findings_hash, "
                "review_id = excluded.review_id, at = excluded.at",
                (pr, round, head_sha, None if verdict is None else verdict.value, findings_hash, review_id,
                 _ts(record.at)),
            )
        return record

    @_guarded("read QA rounds")
    def qa_rounds(self, pr: int) -> list[QaRound]:
        rows = self._db().execute(
            "SELECT pr, round, head_sha, verdict, findings_hash, review_id, at FROM qa_rounds WHERE pr = ? "
            "ORDER BY round",
            (pr,),
        ).fetchall()
        return [QaRound(row[0], row[1], row[2], None if row[3] is None else Verdict(row[3]), row[4], row[5],
                        _dt(row[6]) or _now()) for row in rows]

    # usage and spend ------------------------------------------------------------------------------

    @_guarded("record usage")
    def add_usage(self, run_id: str, issue: int | None, usage: Usage, *, at: datetime | None = None) -> None:
        """Add an increment of spend (not a running total) to the ledger."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO usage (run_id, issue, at, input_tokens, output_tokens, cached_tokens, tokens, cost_usd)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, issue, _ts(at or _now()), usage.input_tokens, usage.output_tokens, usage.cached_tokens,
                 usage.tokens, usage.cost_usd),
            )

    @_guarded("sum spend")
    def spend_since(self, since: datetime, until: datetime | None = None) -> Usage:
        """Spend recorded at or after `since` (and before `until`, when given)."""
        sql = _USAGE_SUM + " WHERE at >= ?"
        params: list[Any] = [_ts(since)]
        if until is not None:
            sql += " AND at < ?"
            params.append(_ts(until))
        return _usage_from_row(self._db().execute(sql, params).fetchone())

    @_guarded("sum spend")
    def spend_for_issue(self, issue: int) -> Usage:
        return _usage_from_row(self._db().execute(_USAGE_SUM + " WHERE issue = ?", (issue,)).fetchone())

    @_guarded("sum spend")
    def spend_for_run(self, run_id: str) -> Usage:
        return _usage_from_row(self._db().execute(_USAGE_SUM + " WHERE run_id = ?", (run_id,)).fetchone())

    # events ---------------------------------------------------------------------------------------

    @_guarded("append an event")
    def append_event(self, kind: str, data: Any = None, *, at: datetime | None = None) -> int:
        """Append one event (data: anything JSON can hold, plus datetimes, enums, dataclasses); its id."""
        payload = _to_json({} if data is None else data)
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO events (at, kind, data) VALUES (?, ?, ?)",
                                  (_ts(at or _now()), kind, payload))
            return int(cursor.lastrowid or 0)

    @_guarded("read events")
    def recent_events(self, n: int = 100, *, kind: str | None = None) -> list[JournalEvent]:
        """The last `n` events, oldest first."""
        sql = "SELECT id, at, kind, data FROM events"
        params: list[Any] = []
        if kind is not None:
            sql += " WHERE kind = ?"
            params.append(kind)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, n))
        rows = self._db().execute(sql, params).fetchall()
        return [JournalEvent(row[0], _dt(row[1]) or _now(), row[2], json.loads(row[3])) for row in reversed(rows)]

    @_guarded("read events")
    def events_since(self, since: datetime, kinds: tuple[str, ...] = ()) -> list[JournalEvent]:
        """Events at or after `since` (of `kinds` when given), oldest first."""
        sql = "SELECT id, at, kind, data FROM events WHERE at >= ?"
        params: list[Any] = [_ts(since)]
        if kinds:
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params.extend(kinds)
        rows = self._db().execute(sql + " ORDER BY id", params).fetchall()
        return [JournalEvent(row[0], _dt(row[1]) or _now(), row[2], json.loads(row[3])) for row in rows]

    @_guarded("read spend")
    def usage_since(self, since: datetime) -> list[tuple[datetime, str, float, int]]:
        """(at, run id, USD, tokens) of every spend recorded at or after `since`, oldest first."""
        rows = self._db().execute("SELECT at, run_id, cost_usd, tokens FROM usage WHERE at >= ? ORDER BY id",
                                  (_ts(since),)).fetchall()
        return [(_dt(row[0]) or _now(), row[1], float(row[2]), int(row[3])) for row in rows]

    # approvals ------------------------------------------------------------------------------------

    @_guarded("pin an approval")
    def pin_approval(self, issue: int, event_id: str, *, title: str, body: str, operator: str = "",
                     at: datetime | None = None) -> ApprovalPin:
        """Remember the text an approval was given for (hashes only) and who gave it."""
        pin = ApprovalPin(issue, event_id, text_sha(title), text_sha(body), operator, at or _now())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO approvals (issue, event_id, title_sha, body_sha, operator, at) VALUES (?, ?, ?, ?, ?, ?)",
                (issue, event_id, pin.title_sha, pin.body_sha, operator, _ts(pin.at)),
            )
        return pin

    @_guarded("read an approval pin")
    def approval_pin(self, issue: int) -> ApprovalPin | None:
        """The latest pin of an issue, or None."""
        pins = self._approval_pins(issue, latest_only=True)
        return pins[0] if pins else None

    @_guarded("read approval pins")
    def approval_pins(self, issue: int) -> list[ApprovalPin]:
        """Every pin of an issue, oldest first."""
        return self._approval_pins(issue, latest_only=False)

    def _approval_pins(self, issue: int, *, latest_only: bool) -> list[ApprovalPin]:
        sql = "SELECT issue, event_id, title_sha, body_sha, operator, at FROM approvals WHERE issue = ? ORDER BY id"
        if latest_only:
            sql += " DESC LIMIT 1"
        rows = self._db().execute(sql, (issue,)).fetchall()
        return [ApprovalPin(row[0], row[1], row[2], row[3], row[4], _dt(row[5]) or _now()) for row in rows]

    # flags ----------------------------------------------------------------------------------------

    @_guarded("read a flag")
    def get_kv(self, key: str, default: Any = None) -> Any:
        row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @_guarded("save a flag")
    def set_kv(self, key: str, value: Any) -> None:
        payload = _to_json(value)
        with self._write() as conn:
            conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, payload))

    def kv_keys(self, prefix: str = "") -> list[str]:
        """The keys of saved flags that start with `prefix`."""
        rows = self._db().execute("SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                                  (len(prefix), prefix)).fetchall()
        return [row[0] for row in rows]

    @_guarded("delete a flag")
    def delete_kv(self, key: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    # run logs -------------------------------------------------------------------------------------

    def log_path(self, run_id: str) -> Path:
        """`<dir>/logs/<run_id>.log`; a run id that is not a plain file name is refused."""
        if not _RUN_ID_RE.fullmatch(run_id):
            raise JournalError(f"run id {run_id!r} cannot name a log file (letters, digits, '.', '_', '-' only)")
        return self.logs_dir / f"{run_id}.log"

    def open_run_log(self, run_id: str, *, max_bytes: int = 8 * 1024 * 1024, backups: int = 2) -> RunLog:
        return RunLog(self.log_path(run_id), max_bytes=max_bytes, backups=backups)


_RUN_COLUMN_LIST = (
    "run_id", "role", "issue", "pr", "state", "branch", "attempt", "qa_round", "engine", "runner", "started_at",
    "ended_at", "exit_code", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "reason", "last_line",
)
_RUN_COLUMNS = ", ".join(_RUN_COLUMN_LIST)
_USAGE_SUM = ("SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
              "COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0.0) FROM usage")


def _run_from_row(row: tuple[Any, ...]) -> AgentRun:
    return AgentRun(
        run_id=row[0], role=Role(row[1]), issue=row[2], pr=row[3], state=RunState(row[4]), branch=row[5],
        attempt=row[6], qa_round=row[7], engine=row[8], runner=row[9], started_at=_dt(row[10]),
        ended_at=_dt(row[11]), exit_code=row[12],
        usage=Usage(int(row[13]), int(row[14]), int(row[15]), float(row[16])),
        reason=row[17], last_line=row[18],
    )


def _usage_from_row(row: tuple[Any, ...]) -> Usage:
    return Usage(int(row[0]), int(row[1]), int(row[2]), float(row[3]))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode, so
    DDL in a migration is part of the transaction too)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _newer_error(db_path: Path, version: int) -> JournalError:
    return JournalError(f"{db_path}: journal schema v{version} is newer than this fleet-tui (v{SCHEMA_VERSION}): "
                        "upgrade fleet-tui")


def _migrate(conn: sqlite3.Connection, db_path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, one step per transaction; refuse a newer one."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise _newer_error(db_path, version)
    while version < SCHEMA_VERSION:
        with _transaction(conn):
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > SCHEMA_VERSION:
                raise _newer_error(db_path, current)
            if current == version:  # else another process migrated meanwhile: look again
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
                current = version + 1
        version = current


# --- run log files ---------------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


class RunLog:
    """An append-only log file of one run: one timestamped line per `write`, rotated to `.1`, `.2`, ...

    Each line reaches the file in a single write(2) call, so a tail never sees half a line. The text is
    stored as given (raw, untrusted); only line breaks inside it become spaces.
    """

    def __init__(self, path: Path | str, max_bytes: int = 8 * 1024 * 1024, backups: int = 2) -> None:
        self.path = Path(path)
        self.max_bytes = max(1, max_bytes)
        self.backups = max(0, backups)
        self._mutex = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        self._fd, self._size = fd, size
        if size and not _ends_with_newline(self.path):
            # a writer died mid-line: end that fragment so the next line stands on its own
            self._raw_write(b"\n")

    def _raw_write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def write(self, line: str) -> None:
        """Append `<ISO UTC time> <line>` as one line."""
        text = line.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
        data = _encode(f"{_stamp()} {text}\n")
        with self._mutex:
            if self._fd is None:
                raise ValueError(f"{self.path}: run log is closed")
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._raw_write(data)

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            _rotated(self.path, self.backups).unlink(missing_ok=True)
            for index in range(self.backups - 1, 0, -1):
                older = _rotated(self.path, index)
                if older.exists():
                    older.replace(_rotated(self.path, index + 1))
            self.path.replace(_rotated(self.path, 1))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = 0

    def close(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rotated(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


_TAIL_BLOCK = 64 * 1024


def _tail_of(path: Path, n: int) -> list[bytes]:
    """The last `n` lines of one file, reading backwards from its end in blocks."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return []
    with handle:
        pos = handle.seek(0, os.SEEK_END)
        chunks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= n:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            handle.seek(pos)
            chunk = handle.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    lines = b"".join(reversed(chunks)).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    # more than n line ends were read when pos > 0, so the first piece (maybe half a line) is cut off here
    return lines[-n:] if n else []


def _decode(lines: list[bytes]) -> list[str]:
    return [line.decode("utf-8", "replace") for line in lines]


def read_tail(path: Path | str, n: int) -> list[str]:
    """The last `n` lines of a run log, reaching into `.1`, `.2`, ... when the current file is short.

    Lines are raw text: sanitize before showing them.
    """
    path = Path(path)
    if n <= 0:
        return []
    lines = _tail_of(path, n)
    index = 1
    while len(lines) < n:
        older = _rotated(path, index)
        if not older.exists():
            break
        lines = _tail_of(older, n - len(lines)) + lines
        index += 1
    return _decode(lines)


def read_all(path: Path | str) -> list[str]:
    """Every line of a run log, rotated parts first (oldest to newest). Raw text: sanitize before showing."""
    path = Path(path)
    parts: list[Path] = []
    index = 1
    while _rotated(path, index).exists():
        parts.append(_rotated(path, index))
        index += 1
    parts.reverse()
    parts.append(path)
    lines: list[bytes] = []
    for part in parts:
        try:
            data = part.read_bytes()
        except FileNotFoundError:
            continue
        pieces = data.split(b"\n")
        if pieces and pieces[-1] == b"":
            pieces.pop()
        lines.extend(pieces)
    return _decode(lines)
