"""The journal (SQLite per repository, migrations, the orchestrator lock, crash safety) and run log files."""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet_tui.model import AgentRun, Role, RunState, Usage, Verdict
from fleet_tui.store import (
    SCHEMA_VERSION,
    Journal,
    JournalError,
    JournalLocked,
    RunLog,
    journal_dir,
    read_all,
    read_tail,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 2, 10, 30, tzinfo=UTC)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), cwd=REPO_ROOT, bufsize=0)


def _read_lines_until(proc: subprocess.Popen[bytes], done: Callable[[list[str]], bool],
                      timeout: float = 20.0) -> list[str]:
    """Lines the child printed, read until `done(lines)` or the child exits; bounded by `timeout`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    lines: list[str] = []
    while not done(lines):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise AssertionError(f"child did not get there in {timeout}s; printed {lines[-3:]}")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in complete)
    return lines


def _run(run_id: str = "dev-7-1", **changes: object) -> AgentRun:
    fields: dict[str, object] = dict(
        run_id=run_id, role=Role.DEV, issue=7, state=RunState.RUNNING, pr=None, branch="fleet/7-fix-login",
        attempt=1, qa_round=0, engine="codex", runner="docker", started_at=T0, last_line="compiling",
    )
    fields.update(changes)
    return AgentRun(**fields)  # type: ignore[arg-type]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "j") as opened:
        yield opened


# --- where journals live ---------------------------------------------------------------------------


def test_journal_dir_is_per_repo_under_the_user_state_dir(tmp_path: Path) -> None:
    state = Path(os.environ["XDG_STATE_HOME"])
    default = journal_dir(None, "octo/Widgets")
    assert default.is_relative_to(state)
    assert default.parent.name == "journals"
    assert re.fullmatch(r"octo-widgets-[0-9a-f]{12}", default.name)
    assert journal_dir("", "octo/Widgets") == default
    # two repos whose names slug alike still get two journals; odd characters never reach the path
    assert journal_dir(tmp_path, "octo/widgets") != journal_dir(tmp_path, "octo/Widgets")
    odd = journal_dir(tmp_path, "/home/me/../../etc/My Repo\n")
    assert odd.parent == tmp_path / "journals"
    assert re.fullmatch(r"[a-z0-9._-]+", odd.name)
    with Journal.for_repo("octo/widgets", state_dir=tmp_path) as journal:
        assert journal.db_path == journal_dir(tmp_path, "octo/widgets") / "journal.sqlite3"
        assert journal.db_path.exists()


# --- round trips -----------------------------------------------------------------------------------


def test_runs_round_trip_and_update_in_place(journal: Journal) -> None:
    first = _run(usage=Usage(1200, 340, 100, 0.0123))
    journal.upsert_run(first)
    assert journal.get_run("dev-7-1") == first
    assert journal.get_run("nope") is None

    ended = _run(state=RunState.SUCCEEDED, ended_at=T0 + timedelta(minutes=9), exit_code=0, pr=41,
                 usage=Usage(5000, 900, 0, 0.25), reason="tests pass", last_line="done")
    journal.upsert_run(ended)
    qa = _run("qa-41-1", role=Role.QA, issue=7, pr=41, qa_round=1, started_at=T0 + timedelta(minutes=10))
    other = _run("dev-8-1", issue=8, state=RunState.QUEUED, started_at=None)
    journal.upsert_run(qa)
    journal.upsert_run(other)

    assert journal.get_run("dev-7-1") == ended
    assert journal.runs() == [ended, qa, other]  # first-saved order, updates keep their place
    assert journal.runs(live_only=True) == [qa, other]
    assert journal.runs(issue=7) == [ended, qa]
    assert journal.runs(pr=41, live_only=True) == [qa]
    assert journal.runs(limit=2) == [qa, other]
    back = journal.get_run("dev-7-1")
    assert back is not None and back.ended_at is not None and back.ended_at.tzinfo is not None


def test_times_are_stored_as_iso_utc(journal: Journal) -> None:
    plus_two = timezone(timedelta(hours=2))
    journal.upsert_run(_run(started_at=datetime(2024, 5, 2, 12, 30, tzinfo=plus_two)))
    raw = sqlite3.connect(journal.db_path).execute("SELECT started_at FROM runs").fetchone()[0]
    assert raw == "2024-05-02T10:30:00.000000+00:00"
    assert journal.get_run("dev-7-1").started_at == T0  # type: ignore[union-attr]


def test_duplicate_claim_is_refused(journal: Journal) -> None:
    assert journal.add_claim(7, "LE_1", "dev-7-1", at=T0) is True
    assert journal.add_claim(7, "LE_1", "dev-7-1") is False
    assert journal.add_claim(7, "LE_1", "dev-7-2") is False  # the same approval cannot be claimed twice
    assert journal.add_claim(7, "LE_2", "dev-7-2", at=T0 + timedelta(hours=1)) is True  # a fresh approval can
    assert journal.add_claim(8, "LE_1", "dev-8-1") is True
    claims = journal.claims_for(7)
    assert [(c.approval_event_id, c.run_id, c.claimed_at) for c in claims] == [
        ("LE_1", "dev-7-1", T0), ("LE_2", "dev-7-2", T0 + timedelta(hours=1))]
    assert journal.claims_for(99) == []


def test_spend_windows_per_day_and_per_issue(journal: Journal) -> None:
    midnight = datetime(2024, 5, 2, tzinfo=UTC)
    journal.add_usage("dev-7-1", 7, Usage(1000, 100, 50, 0.10), at=midnight - timedelta(seconds=1))
    journal.add_usage("dev-7-1", 7, Usage(2000, 200, 0, 0.20), at=midnight)
    journal.add_usage("qa-41-1", 7, Usage(300, 30, 0, 0.03), at=midnight + timedelta(hours=12))
    journal.add_usage("pm-1", None, Usage(10, 1, 0, 0.001), at=midnight + timedelta(hours=23))

    today = journal.spend_since(midnight)
    assert (today.input_tokens, today.output_tokens, today.cached_tokens) == (2310, 231, 0)
    assert today.cost_usd == pytest.approx(0.231)
    # the same instant in another zone is the same window
    assert journal.spend_since(datetime(2024, 5, 2, 2, 0, tzinfo=timezone(timedelta(hours=2)))) == today
    morning = journal.spend_since(midnight, until=midnight + timedelta(hours=6))
    assert morning.tokens == 2200
    assert journal.spend_since(midnight + timedelta(days=1)) == Usage()

    issue = journal.spend_for_issue(7)
    assert issue.tokens == 1100 + 2200 + 330 and issue.cost_usd == pytest.approx(0.33)
    assert journal.spend_for_issue(8) == Usage()
    assert journal.spend_for_run("qa-41-1").cost_usd == pytest.approx(0.03)


def test_qa_rounds_events_flags_and_approval_pins(journal: Journal) -> None:
    journal.record_qa_round(41, 1, head_sha="a" * 40, verdict=Verdict.CHANGES, findings_hash="f1",
                            review_id="R1", at=T0)
    journal.record_qa_round(41, 2, head_sha="b" * 40, at=T0 + timedelta(hours=1))
    journal.record_qa_round(41, 2, head_sha="b" * 40, verdict=Verdict.PASS, review_id="R2",
                            at=T0 + timedelta(hours=2))  # the round's verdict arrives later
    rounds = journal.qa_rounds(41)
    assert [(r.round, r.verdict, r.review_id) for r in rounds] == [(1, Verdict.CHANGES, "R1"), (2, Verdict.PASS, "R2")]
    assert journal.qa_rounds(42) == []

    for i in range(5):
        journal.append_event("tick", {"i": i, "at": T0, "state": RunState.RUNNING})
    journal.append_event("operator.approve", {"issue": 7})
    recent = journal.recent_events(3)
    assert [e.kind for e in recent] == ["tick", "tick", "operator.approve"]
    assert recent[0].data == {"i": 3, "at": "2024-05-02T10:30:00.000000+00:00", "state": "running"}
    assert [e.data["i"] for e in journal.recent_events(2, kind="tick")] == [3, 4]
    assert recent[0].id < recent[1].id < recent[2].id

    assert journal.get_kv("paused") is None
    assert journal.get_kv("paused", False) is False
    journal.set_kv("paused", True)
    journal.set_kv("budget", {"day_usd": 5.0})
    journal.set_kv("paused", False)
    assert journal.get_kv("paused") is False
    assert journal.get_kv("budget") == {"day_usd": 5.0}
    journal.delete_kv("budget")
    assert journal.get_kv("budget") is None

    assert journal.approval_pin(7) is None
    journal.pin_approval(7, "LE_1", title="Fix login", body="Steps: ...", operator="alice", at=T0)
    pin = journal.approval_pin(7)
    assert pin is not None and pin.operator == "alice" and pin.event_id == "LE_1"
    assert pin.matches("Fix login", "Steps: ...")
    assert not pin.matches("Fix login", "Steps: ... and also push to main")
    journal.pin_approval(7, "LE_2", title="Fix login", body="v2", operator="bob")
    assert journal.approval_pin(7).event_id == "LE_2"  # type: ignore[union-attr]
    assert [p.operator for p in journal.approval_pins(7)] == ["alice", "bob"]


def test_data_survives_reopening(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.upsert_run(_run())
        journal.add_claim(7, "LE_1", "dev-7-1")
        journal.set_kv("paused", True)
    with Journal.open(tmp_path) as journal:
        assert journal.get_run("dev-7-1") == _run()
        assert journal.add_claim(7, "LE_1", "dev-7-1") is False
        assert journal.get_kv("paused") is True


# --- schema versions -------------------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, role TEXT NOT NULL, issue INTEGER, pr INTEGER, state TEXT NOT NULL,
  branch TEXT NOT NULL DEFAULT '', attempt INTEGER NOT NULL DEFAULT 1, qa_round INTEGER NOT NULL DEFAULT 0,
  engine TEXT NOT NULL DEFAULT '', runner TEXT NOT NULL DEFAULT '', started_at TEXT, ended_at TEXT,
  exit_code INTEGER, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', last_line TEXT NOT NULL DEFAULT '');
CREATE INDEX runs_issue ON runs(issue);
CREATE INDEX runs_state ON runs(state);
CREATE TABLE claims (issue INTEGER NOT NULL, approval_event_id TEXT NOT NULL, run_id TEXT NOT NULL,
  claimed_at TEXT NOT NULL, UNIQUE(issue, approval_event_id));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,
  data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _build_v1(directory: Path, *, extra_sql: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "journal.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(_V1_SCHEMA + extra_sql)
    conn.execute("INSERT INTO runs (run_id, role, issue, pr, state, branch, started_at, ended_at, exit_code, "
                 "input_tokens, output_tokens, cost_usd, reason) VALUES ('dev-7-1', 'dev', 7, 41, 'succeeded', "
                 "'fleet/7-x', '2024-05-02T10:30:00.000000+00:00', '2024-05-02T10:40:00.000000+00:00', 0, "
                 "5000, 900, 0.25, 'ok')")
    conn.execute("INSERT INTO claims VALUES (7, 'LE_1', 'dev-7-1', '2024-05-02T10:29:00.000000+00:00')")
    conn.execute("INSERT INTO events (at, kind, data) VALUES ('2024-05-02T10:29:00.000000+00:00', 'claimed', "
                 "'{\"issue\": 7}')")
    conn.execute("INSERT INTO kv VALUES ('paused', 'true')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    return db


def test_an_older_journal_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    _build_v1(tmp_path)
    with Journal.open(tmp_path) as journal:
        assert journal.schema_version() == SCHEMA_VERSION
        run = journal.get_run("dev-7-1")
        assert run is not None
        assert (run.state, run.pr, run.usage, run.ended_at) == (
            RunState.SUCCEEDED, 41, Usage(5000, 900, 0, 0.25), T0 + timedelta(minutes=10))
        assert [c.run_id for c in journal.claims_for(7)] == ["dev-7-1"]
        assert journal.add_claim(7, "LE_1", "dev-7-2") is False
        assert [(e.kind, e.data) for e in journal.recent_events(5)] == [("claimed", {"issue": 7})]
        assert journal.get_kv("paused") is True
        # spend recorded before the usage ledger existed still counts
        assert journal.spend_for_issue(7) == Usage(5000, 900, 0, 0.25)
        assert journal.spend_since(T0) == Usage(5000, 900, 0, 0.25)
        # and the tables the old version lacked work
        journal.record_qa_round(41, 1, head_sha="c" * 40, verdict=Verdict.PASS)
        journal.pin_approval(7, "LE_1", title="t", body="b", operator="alice")
        journal.upsert_run(_run("dev-7-2", usage=Usage(1, 2, 3, 0.5)))
        assert journal.get_run("dev-7-2").usage == Usage(1, 2, 3, 0.5)  # type: ignore[union-attr]
        assert journal.integrity_check() == "ok"


def test_a_failed_migration_leaves_the_old_journal_untouched(tmp_path: Path) -> None:
    # a stray table named like one the migration creates makes that step fail half way
    db = _build_v1(tmp_path, extra_sql="CREATE TABLE qa_rounds (x INTEGER);")
    with pytest.raises(JournalError) as raised:
        Journal.open(tmp_path)
    assert str(db) in str(raised.value)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
    assert "cached_tokens" not in columns  # the step's earlier statements were rolled back
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'usage'").fetchone() is None
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    conn.close()
    with pytest.raises(JournalError) as again:  # the same failure, not a lock left behind by the first
        Journal.open(tmp_path)
    assert not isinstance(again.value, JournalLocked)


def test_a_newer_journal_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    expected = (f"journal schema v{SCHEMA_VERSION + 5} is newer than this fleet-tui (v{SCHEMA_VERSION}): "
                "upgrade fleet-tui")
    for _ in range(2):  # refused every time, and the refusal does not leave the lock held
        with pytest.raises(JournalError) as raised:
            Journal.open(tmp_path)
        assert not isinstance(raised.value, JournalLocked)
        assert expected in str(raised.value)


def test_a_corrupt_journal_gives_a_journal_error_that_says_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite3"
    db.write_bytes(b"these bytes are not a database\n" * 200)
    with pytest.raises(JournalError) as raised:
        Journal.open(tmp_path)
    message = str(raised.value)
    assert str(db) in message and "move the file aside" in message
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    db.rename(tmp_path / "journal.sqlite3.broken")
    with Journal.open(tmp_path) as journal:  # following the advice works
        assert journal.integrity_check() == "ok"


def test_a_closed_journal_says_so(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.get_run("x")


# --- the orchestrator lock -------------------------------------------------------------------------

_TRY_LOCK = """
import sys
from fleet_tui.store import Journal, JournalLocked
try:
    journal = Journal.open(sys.argv[1])
except JournalLocked as exc:
    print(exc, flush=True)
    sys.exit(3)
print("locked", flush=True)
"""


def test_a_second_orchestrator_is_refused_in_process_and_from_another_process(tmp_path: Path) -> None:
    holder = Journal.open(tmp_path)
    assert holder.locked
    assert (tmp_path / "orchestrator.lock").read_text().strip() == str(os.getpid())
    expected = (f"another fleet-tui (pid {os.getpid()}) is already running on this repository's journal "
                f"({tmp_path}); stop it first, or use it")

    with pytest.raises(JournalLocked) as raised:
        Journal.open(tmp_path)
    assert str(raised.value) == expected and raised.value.pid == os.getpid()

    other = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(tmp_path)], capture_output=True, env=_env(),
                           cwd=REPO_ROOT, timeout=30)
    assert other.returncode == 3, other.stderr.decode()
    assert other.stdout.decode().strip() == expected

    # a reader that does not dispatch may look while the orchestrator runs, and sees committed rows
    holder.upsert_run(_run())
    with Journal.open(tmp_path, lock=False) as reader:
        assert not reader.locked
        assert reader.get_run("dev-7-1") == _run()

    holder.close()
    after = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(tmp_path)], capture_output=True, env=_env(),
                           cwd=REPO_ROOT, timeout=30)
    assert after.returncode == 0 and after.stdout.decode().strip() == "locked", after.stderr.decode()


def test_an_agent_process_that_outlives_a_killed_orchestrator_does_not_keep_the_lock(tmp_path: Path) -> None:
    proc = _spawn(
        """
        import os, signal, subprocess, sys
        from fleet_tui.store import Journal
        journal = Journal.open(sys.argv[1])
        agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False)
        print(agent.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(tmp_path),
    )
    lines = _read_lines_until(proc, lambda lines: len(lines) >= 1)
    agent_pid = int(lines[0])
    try:
        assert proc.wait(timeout=20) == -signal.SIGKILL
        os.kill(agent_pid, 0)  # the agent is still alive
        with Journal.open(tmp_path) as journal:
            assert journal.locked
    finally:
        os.kill(agent_pid, signal.SIGKILL)


_WRITER = """
import sys
from datetime import UTC, datetime
from fleet_tui.model import AgentRun, Role, RunState, Usage
from fleet_tui.store import Journal

journal = Journal.open(sys.argv[1])
i = 0
while True:
    journal.upsert_run(AgentRun(run_id=f"dev-{i}", role=Role.DEV, issue=i, state=RunState.RUNNING,
                                started_at=datetime.now(UTC), usage=Usage(i, i, 0, i / 1000),
                                last_line="x" * (i % 500)))
    print(f"run {i}", flush=True)
    journal.append_event("tick", {"i": i, "pad": "y" * 300})
    print(f"event {i}", flush=True)
    journal.add_usage(f"dev-{i}", i, Usage(10, 1, 0, 0.01))
    print(f"usage {i}", flush=True)
    i += 1
"""


def test_kill_9_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    proc = _spawn(_WRITER, str(tmp_path))
    try:
        lines = _read_lines_until(proc, lambda lines: len(lines) >= 600, timeout=30)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        errors = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert len(lines) >= 600, errors

    committed: dict[str, set[int]] = {"run": set(), "event": set(), "usage": set()}
    for line in lines:
        what, number = line.split()
        committed[what].add(int(number))

    with Journal.open(tmp_path) as journal:  # the dead writer's lock is gone
        assert journal.integrity_check() == "ok"
        stored_runs = {run.run_id for run in journal.runs()}
        assert {f"dev-{i}" for i in committed["run"]} <= stored_runs
        fifth = journal.get_run("dev-5")
        assert fifth is not None and (fifth.issue, fifth.usage) == (5, Usage(5, 5, 0, 0.005))
        stored_events = {event.data["i"] for event in journal.recent_events(100_000, kind="tick")}
        assert committed["event"] <= stored_events
        stored_usage = journal.spend_since(datetime(2000, 1, 1, tzinfo=UTC))
        assert stored_usage.input_tokens >= 10 * len(committed["usage"])
        # still writable after recovery
        journal.upsert_run(_run("after-crash"))
        assert journal.get_run("after-crash") is not None


# --- run logs --------------------------------------------------------------------------------------

_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _text(line: str) -> str:
    """A log line without its timestamp."""
    assert _STAMP.match(line), line
    return line.split(" ", 1)[1]


def test_run_log_writes_one_timestamped_raw_line_per_call_visible_at_once(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "dev-7-1.log"
    log = RunLog(path)
    log.write("first")
    assert [_text(line) for line in read_tail(path, 10)] == ["first"]  # seen before close
    log.write("two\nlines\r\nhere\rtoo")
    log.write("\x1b[31mred\x1b[0m and [bold]markup[/bold] kept as is")
    log.close()
    lines = read_all(path)
    assert len(lines) == 3
    assert all(_STAMP.match(line) for line in lines)
    stamp = datetime.fromisoformat(lines[0][:23] + "+00:00")
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)
    assert _text(lines[1]) == "two lines here too"
    assert _text(lines[2]) == "\x1b[31mred\x1b[0m and [bold]markup[/bold] kept as is"
    with pytest.raises(ValueError):
        log.write("after close")


def test_run_log_rotation_and_tail_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "dev-7-1.log"
    with RunLog(path, max_bytes=2000, backups=2) as log:
        for i in range(300):
            log.write(f"line {i:04d}")
    for part in (path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")):
        assert 0 < part.stat().st_size <= 2000
    assert not path.with_name(path.name + ".3").exists()

    everything = [_text(line) for line in read_all(path)]
    numbers = [int(text.split()[1]) for text in everything]
    assert numbers == list(range(numbers[0], 300))  # oldest first, nothing missing in what is kept
    assert numbers[0] > 0  # the oldest part was dropped
    current_lines = len(path.read_bytes().splitlines())
    want = current_lines + 20  # reaches into .1
    assert [_text(line) for line in read_tail(path, want)] == everything[-want:]
    assert [_text(line) for line in read_tail(path, 10_000)] == everything
    assert read_tail(path, 0) == []
    assert read_tail(tmp_path / "missing.log", 5) == []
    assert read_all(tmp_path / "missing.log") == []


def test_run_log_tail_after_a_fresh_rotation_comes_from_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    with RunLog(path, max_bytes=200, backups=1) as log:
        for i in range(8):
            log.write(f"entry {i} " + "z" * 20)
    tail = [_text(line).split()[1] for line in read_tail(path, 3)]
    assert tail == ["5", "6", "7"]


def test_run_log_100k_lines_tail_50(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with RunLog(path) as log:
        for i in range(100_000):
            log.write(f"step {i:06d} " + "." * 60)
    assert path.with_name("big.log.1").exists()  # 100k lines of ~100 bytes pass the 8 MiB default
    tail = read_tail(path, 50)
    assert [_text(line)[:11] for line in tail] == [f"step {i:06d}" for i in range(99_950, 100_000)]
    assert len(read_all(path)) == 100_000


def test_run_log_reopened_after_a_cut_line_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(b"2024-05-02T10:30:00.000Z complete\n2024-05-02T10:30:01.000Z cut in the mid")
    with RunLog(path) as log:
        log.write("next")
    lines = read_all(path)
    assert lines[:2] == ["2024-05-02T10:30:00.000Z complete", "2024-05-02T10:30:01.000Z cut in the mid"]
    assert _text(lines[2]) == "next" and len(lines) == 3


def test_log_paths_stay_inside_the_journal(journal: Journal) -> None:
    assert journal.log_path("dev-7-1") == journal.dir / "logs" / "dev-7-1.log"
    for bad in ("../escape", "a/b", "", ".hidden", "x\n"):
        with pytest.raises(JournalError):
            journal.log_path(bad)
    with journal.open_run_log("dev-7-1") as log:
        log.write("hello")
    assert read_tail(journal.log_path("dev-7-1"), 1)[0].endswith(" hello")


def test_run_log_tail_is_exact_with_lines_longer_than_a_read_block(tmp_path: Path) -> None:
    path = tmp_path / "wide.log"
    with RunLog(path) as log:
        for i in range(6):
            log.write(f"{i} " + "w" * (70_000 + i * 9_000))  # agents do print whole JSON documents on one line
    tail = read_tail(path, 3)
    assert [(_text(line).split()[0], len(line)) for line in tail] == [
        (str(i), 25 + 2 + 70_000 + i * 9_000) for i in (3, 4, 5)]


def test_run_log_tail_matches_the_whole_log_for_every_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fleet_tui.store as store

    monkeypatch.setattr(store, "_TAIL_BLOCK", 37)  # many block edges inside lines, on line ends, in .1
    path = tmp_path / "mixed.log"
    with RunLog(path, max_bytes=900, backups=3) as log:
        for i in range(60):
            log.write(f"{i} " + "m" * (i * 7 % 23) + ("é" if i % 4 == 0 else ""))
    everything = read_all(path)
    for n in range(1, len(everything) + 3):
        assert read_tail(path, n) == everything[-n:], n
