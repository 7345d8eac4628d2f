"""The embedded local forge: issues, labels, comments, PRs and reviews in SQLite, code in a real git repo.

Owns `LocalForge`, the default `Forge` backend. It needs no account and no network. The work items live in
`<git-common-dir>/fleet/forge.sqlite3`, inside the repository's git directory: they live and die with the
repository and are never committed. A PR is a head branch with a base branch; its size, files and
mergeability come from git. Issue, PR and comment URLs are stable strings of the form
`local:<repo-dir-name>#<number>` (a comment adds `/comment-<id>`), which the console shows as is.

Only the human merges: `LocalForge.merge_as_human` is not part of the `Forge` protocol, and the fleet never
calls it; the console does, after the operator confirmed.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from fleet_tui.forge import local_claims
from fleet_tui.forge.base import DIFF_LIMIT, ClaimLease, ForgeError, GitSource, NotFound, Permission, cut_diff
from fleet_tui.git import GitError, git, git_env
from fleet_tui.model import (
    Actor,
    CIState,
    Comment,
    Issue,
    LabelEvent,
    PullRequest,
    RateLimit,
    Review,
    TextEdit,
)

__all__ = ["FLEET_ACTOR", "LocalForge", "db_path_for"]

T = TypeVar("T")

FLEET_ACTOR = Actor("fleet", type="Bot")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    number      INTEGER PRIMARY KEY,          -- issues and PRs share one numbering, as on GitHub
    is_pull     INTEGER NOT NULL DEFAULT 0,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open', -- open | closed | merged (PRs only)
    author      TEXT NOT NULL,
    author_type TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pulls (
    number     INTEGER PRIMARY KEY REFERENCES items(number),
    head       TEXT NOT NULL,
    base       TEXT NOT NULL,
    merge_sha  TEXT,
    final      TEXT                           -- JSON: head sha and diff stats frozen at merge time
);
CREATE INDEX IF NOT EXISTS pulls_head ON pulls(head);
CREATE TABLE IF NOT EXISTS labels (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS item_labels (
    number INTEGER NOT NULL REFERENCES items(number),
    label  TEXT NOT NULL,
    PRIMARY KEY (number, label)
);
CREATE TABLE IF NOT EXISTS label_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    number     INTEGER NOT NULL REFERENCES items(number),
    kind       TEXT NOT NULL,                 -- labeled | unlabeled
    label      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS label_events_number ON label_events(number);
CREATE TABLE IF NOT EXISTS comments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    number      INTEGER NOT NULL REFERENCES items(number),
    author      TEXT NOT NULL,
    author_type TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_number ON comments(number);
CREATE TABLE IF NOT EXISTS reviews (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    number       INTEGER NOT NULL REFERENCES items(number),
    author       TEXT NOT NULL,
    author_type  TEXT NOT NULL,
    body         TEXT NOT NULL,
    state        TEXT NOT NULL,
    commit_id    TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_number ON reviews(number);
CREATE TABLE IF NOT EXISTS edits (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    number     INTEGER NOT NULL REFERENCES items(number),
    field      TEXT NOT NULL,                 -- title | body
    before     TEXT NOT NULL,
    after      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS edits_number ON edits(number);
CREATE TABLE IF NOT EXISTS claims (           -- one orchestrator's lease per issue (see local_claims.py)
    issue      INTEGER PRIMARY KEY,
    version    TEXT NOT NULL,                 -- a fresh random token at every write: the compare-and-swap key
    holder     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    lease_s    REAL NOT NULL,
    written_at TEXT NOT NULL                  -- for humans reading the table; expiry never reads it
);
"""

# GitHub's closing keywords: "Closes #12", "fixes: #3", ...
_CLOSING = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#(\d+)\b", re.IGNORECASE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def db_path_for(git_common_dir: Path) -> Path:
    """Where the local forge keeps its database for a repository whose common git dir is given."""
    return git_common_dir / "fleet" / "forge.sqlite3"


@dataclass(frozen=True, slots=True)
class _DiffStats:
    additions: int
    deletions: int
    files: tuple[str, ...]


class LocalForge:
    """The `Forge` protocol over a local git repository and a SQLite database in its git directory.

    Use it as an async context manager: `async with LocalForge(path) as forge: ...`. The operator (the
    approver, an `admin`) is `operator`, else `git config user.name`, else `$USER`; the fleet writes as the
    bot `fleet` (`write` permission).
    """

    kind = "local"

    def __init__(self, repo_path: Path, *, operator: str | None = None, base_branch: str = "") -> None:
        self.repo_path = Path(repo_path)
        self.repo = self.repo_path.resolve().name
        self.base_branch = base_branch
        self._operator_arg = operator
        self._operator = Actor(operator or "operator", type="User")
        self._common_dir: Path | None = None
        self._worktree: Path | None = None  # None for a bare repository
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._merge_lock = anyio.Lock()
        self._stats_cache: dict[tuple[str, str], _DiffStats] = {}
        self._mergeable_cache: dict[tuple[str, str], tuple[bool | None, str]] = {}

    # lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> LocalForge:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Check the repository, resolve identities and the base branch, open (or create) the database."""
        if self._conn is not None:
            return
        path = self.repo_path
        if not path.is_dir():
            raise ForgeError(f"{path} is not a directory: pass the path of your git repository "
                             f"(or run `git init` in the directory you want the fleet to work in)")
        try:
            common = await git("rev-parse", "--git-common-dir", cwd=path)
        except GitError as exc:
            raise ForgeError(f"{path} is not a git repository: run `git init` there, or pass the path of "
                             f"your repository ({exc.stderr.splitlines()[-1] if exc.stderr else 'git failed'})"
                             ) from exc
        self._common_dir = (path / common).resolve()
        bare = await git("rev-parse", "--is-bare-repository", cwd=path)
        if bare == "true":
            self._worktree = None
            name = self._common_dir.name
            self.repo = name[:-4] if name.endswith(".git") and len(name) > 4 else name
        else:
            self._worktree = Path(await git("rev-parse", "--show-toplevel", cwd=path)).resolve()
            self.repo = self._worktree.name
        self._operator = Actor(await self._resolve_operator(), type="User")
        if not self.base_branch:
            self.base_branch = await self._resolve_base_branch()
        db_file = db_path_for(self._common_dir)
        self._conn = await anyio.to_thread.run_sync(_connect, db_file)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._db_lock:
                conn.close()

    @property
    def db_path(self) -> Path:
        return db_path_for(self._git_dir)

    def _require_open(self) -> None:
        if self._conn is None or self._common_dir is None:
            raise ForgeError("the local forge is not open: use `async with LocalForge(path) as forge`")

    @property
    def _git_dir(self) -> Path:
        self._require_open()
        assert self._common_dir is not None
        return self._common_dir

    @property
    def _cwd(self) -> Path:
        """Where git commands run: the main worktree, or the git dir of a bare repository."""
        if self._worktree is not None:
            return self._worktree
        if self._common_dir is None:
            raise ForgeError("the local forge is not open: use `async with LocalForge(path) as forge`")
        return self._common_dir

    async def _resolve_operator(self) -> str:
        if self._operator_arg:
            return self._operator_arg
        name = await git("config", "user.name", cwd=self.repo_path, check=False)
        if name.strip():
            return name.strip()
        return os.environ.get("USER") or os.environ.get("USERNAME") or "operator"

    async def _resolve_base_branch(self) -> str:
        candidates: list[str] = []
        origin_head = await git("symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD",
                                cwd=self._cwd, check=False)
        if origin_head.startswith("origin/"):
            candidates.append(origin_head.removeprefix("origin/"))
        configured = await git("config", "init.defaultBranch", cwd=self._cwd, check=False)
        candidates += [c for c in (configured.strip(), "main", "master") if c]
        for name in candidates:
            if await self._branch_sha(name):
                return name
        head = await git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=self._cwd, check=False)
        return head.strip() or "main"

    # database ---------------------------------------------------------------------------------

    async def _db(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run `fn` in one transaction in a worker thread. A write transaction takes the write lock at once
        (BEGIN IMMEDIATE), so a look-up and the insert it guards are atomic even across processes."""
        conn = self._conn
        if conn is None:
            raise ForgeError("the local forge is not open: use `async with LocalForge(path) as forge`")

        def run() -> T:
            with self._db_lock:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

        try:
            return await anyio.to_thread.run_sync(run)
        except sqlite3.Error as exc:
            raise ForgeError(f"the local forge database {self.db_path} failed: {exc}") from exc

    # claims across orchestrators (one transaction each: see local_claims) ------------------------

    async def list_claims(self) -> dict[int, ClaimLease]:
        return await self._db(local_claims.list_claims, write=False)

    async def get_claim(self, issue: int) -> ClaimLease | None:
        return await self._db(lambda conn: local_claims.get_claim(conn, issue), write=False)

    async def acquire_claim(self, issue: int, holder: str, run_id: str, *, lease_s: float) -> ClaimLease | None:
        return await self._db(lambda conn: local_claims.acquire(conn, issue, holder, run_id, lease_s, _now()))

    async def replace_claim(self, seen: ClaimLease, holder: str, run_id: str, *,
                            lease_s: float) -> ClaimLease | None:
        return await self._db(lambda conn: local_claims.replace(conn, seen, holder, run_id, lease_s, _now()))

    async def release_claim(self, lease: ClaimLease) -> None:
        await self._db(lambda conn: local_claims.release(conn, lease))

    # identities -------------------------------------------------------------------------------

    async def fleet_identity(self) -> Actor:
        return FLEET_ACTOR

    async def operator_identity(self) -> Actor:
        self._require_open()
        return self._operator

    async def permission(self, login: str) -> Permission:
        if login.lower() == self._operator.login.lower():
            return "admin"
        if login.lower() == FLEET_ACTOR.login:
            return "write"
        return "none"

    @property
    def rate_limit(self) -> RateLimit:
        return RateLimit()

    # issues -----------------------------------------------------------------------------------

    def _url(self, number: int) -> str:
        return f"local:{self.repo}#{number}"

    def _issue(self, conn: sqlite3.Connection, row: sqlite3.Row, *, with_comments: bool) -> Issue:
        number = row["number"]
        labels = tuple(r[0] for r in conn.execute(
            "SELECT label FROM item_labels WHERE number = ? ORDER BY label", (number,)))
        comments: tuple[Comment, ...] = ()
        if with_comments:
            comments = tuple(self._comment(c) for c in conn.execute(
                "SELECT * FROM comments WHERE number = ? ORDER BY id", (number,)))
        return Issue(
            number=number, title=row["title"], body=row["body"],
            state="open" if row["state"] == "open" else "closed", labels=labels,
            author=Actor(row["author"], type=row["author_type"]),
            created_at=_time(row["created_at"]), updated_at=_time(row["updated_at"]),
            html_url=self._url(number), comments=comments,
        )

    def _comment(self, row: sqlite3.Row) -> Comment:
        return Comment(
            id=str(row["id"]), author=Actor(row["author"], type=row["author_type"]), body=row["body"],
            created_at=datetime.fromisoformat(row["created_at"]),
            html_url=f"{self._url(row['number'])}/comment-{row['id']}",
        )

    @staticmethod
    def _item(conn: sqlite3.Connection, number: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM items WHERE number = ?", (number,)).fetchone()
        if row is None:
            raise NotFound(f"issue #{number} does not exist in the local forge")
        return row

    async def list_issues(
        self, *, labels: Sequence[str] = (), state: Literal["open", "closed", "all"] = "open",
        since: datetime | None = None,
    ) -> list[Issue]:
        wanted = list(dict.fromkeys(labels))
        sql = "SELECT * FROM items WHERE is_pull = 0"
        params: list[Any] = []
        if state != "all":
            sql += " AND state = ?"
            params.append(state)
        if since is not None:
            sql += " AND updated_at >= ?"
            params.append(_iso(since))
        for label in wanted:
            sql += " AND EXISTS (SELECT 1 FROM item_labels l WHERE l.number = items.number AND l.label = ?)"
            params.append(label)
        sql += " ORDER BY number DESC"

        def read(conn: sqlite3.Connection) -> list[Issue]:
            return [self._issue(conn, row, with_comments=False) for row in conn.execute(sql, params)]

        return await self._db(read, write=False)

    async def get_issue(self, number: int) -> Issue:
        return await self._db(lambda conn: self._issue(conn, self._item(conn, number), with_comments=True),
                              write=False)

    async def create_issue(self, title: str, body: str, labels: Sequence[str] = ()) -> Issue:
        def write(conn: sqlite3.Connection) -> Issue:
            now = _now()
            cur = conn.execute(
                "INSERT INTO items (is_pull, title, body, author, author_type, created_at, updated_at) "
                "VALUES (0, ?, ?, ?, ?, ?, ?)", (title, body, FLEET_ACTOR.login, FLEET_ACTOR.type, now, now))
            number = int(cur.lastrowid or 0)
            _add_labels(conn, number, labels, FLEET_ACTOR, now)
            return self._issue(conn, self._item(conn, number), with_comments=True)

        return await self._db(write)

    async def close_issue(self, number: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            row = self._item(conn, number)
            if row["state"] == "open":
                conn.execute("UPDATE items SET state = 'closed', updated_at = ? WHERE number = ?",
                             (_now(), number))

        await self._db(write)

    def _actor_named(self, login: str | None) -> Actor:
        if login is None or login.lower() == FLEET_ACTOR.login:
            return FLEET_ACTOR
        if login.lower() == self._operator.login.lower():
            return self._operator
        return Actor(login, type="User")

    async def edit_issue(self, number: int, *, title: str | None = None, body: str | None = None,
                         as_user: str | None = None) -> None:
        """Change the title and/or body of issue or PR `number`, recording each change (who, when, before and
        after) for `text_edits`; a new title also leaves a `renamed` event, as on GitHub. `as_user`: the
        editor's login (None: the fleet)."""
        actor = self._actor_named(as_user)

        def write(conn: sqlite3.Connection) -> None:
            row = self._item(conn, number)
            now = _now()
            changed = False
            for name, value in (("title", title), ("body", body)):
                if value is None or value == row[name]:
                    continue
                conn.execute(f"UPDATE items SET {name} = ? WHERE number = ?", (value, number))
                conn.execute("INSERT INTO edits (number, field, before, after, actor, actor_type, created_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (number, name, row[name], value, actor.login,
                                                              actor.type, now))
                if name == "title":
                    conn.execute("INSERT INTO label_events (number, kind, label, actor, actor_type, created_at) "
                                 "VALUES (?, 'renamed', ?, ?, ?, ?)", (number, value, actor.login, actor.type,
                                                                       now))
                changed = True
            if changed:
                conn.execute("UPDATE items SET updated_at = ? WHERE number = ?", (now, number))

        await self._db(write)

    async def text_edits(self, number: int) -> list[TextEdit]:
        def read(conn: sqlite3.Connection) -> list[TextEdit]:
            self._item(conn, number)
            return [TextEdit(r["field"], datetime.fromisoformat(r["created_at"]),
                             Actor(r["actor"], type=r["actor_type"]))
                    for r in conn.execute("SELECT * FROM edits WHERE number = ? ORDER BY id", (number,))]

        return await self._db(read, write=False)

    async def add_labels(self, number: int, labels: Sequence[str], *, as_operator: bool = False) -> None:
        actor = self._operator if as_operator else FLEET_ACTOR

        def write(conn: sqlite3.Connection) -> None:
            self._item(conn, number)
            _add_labels(conn, number, labels, actor, _now())

        await self._db(write)

    async def remove_label(self, number: int, label: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            self._item(conn, number)
            gone = conn.execute("DELETE FROM item_labels WHERE number = ? AND label = ?", (number, label))
            if gone.rowcount:
                now = _now()
                conn.execute(
                    "INSERT INTO label_events (number, kind, label, actor, actor_type, created_at) "
                    "VALUES (?, 'unlabeled', ?, ?, ?, ?)",
                    (number, label, FLEET_ACTOR.login, FLEET_ACTOR.type, now))
                conn.execute("UPDATE items SET updated_at = ? WHERE number = ?", (now, number))

        await self._db(write)

    async def label_events(self, number: int) -> list[LabelEvent]:
        def read(conn: sqlite3.Connection) -> list[LabelEvent]:
            self._item(conn, number)
            return [
                LabelEvent(event_id=str(r["id"]), kind=r["kind"], label=r["label"],
                           actor=Actor(r["actor"], type=r["actor_type"]),
                           created_at=datetime.fromisoformat(r["created_at"]))
                for r in conn.execute("SELECT * FROM label_events WHERE number = ? AND kind IN ('labeled', "
                                      "'unlabeled') ORDER BY id", (number,))
            ]

        return await self._db(read, write=False)

    async def ensure_labels(self, names: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(n for n in names if n))

        def write(conn: sqlite3.Connection) -> list[str]:
            now = _now()
            created = []
            for name in wanted:
                cur = conn.execute("INSERT OR IGNORE INTO labels (name, created_at) VALUES (?, ?)", (name, now))
                if cur.rowcount:
                    created.append(name)
            return created

        return await self._db(write)

    async def missing_labels(self, names: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(n for n in names if n))

        def read(conn: sqlite3.Connection) -> list[str]:
            return [n for n in wanted
                    if conn.execute("SELECT 1 FROM labels WHERE name = ?", (n,)).fetchone() is None]

        return await self._db(read, write=False)

    # comments ---------------------------------------------------------------------------------

    async def find_comment(self, number: int, marker_text: str) -> Comment | None:
        def read(conn: sqlite3.Connection) -> Comment | None:
            self._item(conn, number)
            return self._find_comment(conn, number, marker_text)

        return await self._db(read, write=False)

    def _find_comment(self, conn: sqlite3.Connection, number: int, marker_text: str) -> Comment | None:
        if not marker_text:
            return None
        row = conn.execute("SELECT * FROM comments WHERE number = ? AND instr(body, ?) > 0 ORDER BY id LIMIT 1",
                           (number, marker_text)).fetchone()
        return self._comment(row) if row is not None else None

    async def post_comment(self, number: int, body: str, marker_text: str) -> Comment:
        text = body if not marker_text or marker_text in body else f"{body}\n\n{marker_text}"

        def write(conn: sqlite3.Connection) -> Comment:
            self._item(conn, number)
            # Look-up and insert share one transaction: a retried call finds the first one.
            existing = self._find_comment(conn, number, marker_text)
            if existing is not None:
                return existing
            now = _now()
            cur = conn.execute(
                "INSERT INTO comments (number, author, author_type, body, created_at) VALUES (?, ?, ?, ?, ?)",
                (number, FLEET_ACTOR.login, FLEET_ACTOR.type, text, now))
            conn.execute("UPDATE items SET updated_at = ? WHERE number = ?", (now, number))
            row = conn.execute("SELECT * FROM comments WHERE id = ?", (cur.lastrowid,)).fetchone()
            return self._comment(row)

        return await self._db(write)

    # code -------------------------------------------------------------------------------------

    async def _branch_sha(self, branch: str) -> str | None:
        sha = await git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                        cwd=self._cwd, check=False)
        return sha.strip() or None

    async def _check_branch_name(self, branch: str) -> None:
        probe = await anyio.run_process(["git", "check-ref-format", f"refs/heads/{branch}"], check=False,
                                        env=git_env())
        if probe.returncode != 0 or not branch or branch.startswith("-"):
            raise ForgeError(f"{branch!r} is not a valid branch name")

    async def git_source(self) -> GitSource:
        """The repository itself (its worktree, or the git dir of a bare one); no credentials needed."""
        self._require_open()
        return GitSource(str(self._cwd), {})

    async def default_branch(self) -> str:
        """The branch checked out in the repository (HEAD); the configured base branch when HEAD is detached."""
        head = await git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=self._cwd, check=False)
        return head.strip() or self.base_branch

    async def branch_exists(self, name: str) -> bool:
        self._require_open()
        return await self._branch_sha(name) is not None

    async def check_push_access(self) -> None:
        """The repository is readable with git and its git directory writable (where branches land)."""
        self._require_open()
        try:
            await git("rev-parse", "--git-dir", cwd=self._cwd)
        except GitError as exc:
            raise ForgeError(f"{self._cwd} is no longer a git repository: {exc.stderr.strip()[-200:]}") from exc
        for place in (self._git_dir, self._git_dir / "refs" / "heads"):
            if place.exists() and not os.access(place, os.W_OK | os.X_OK):
                raise ForgeError(f"the fleet cannot write to {place}: give this user write access to the "
                                 "repository's git directory")

    async def push_branch(self, source: Path, branch: str, *, force: bool = False,
                          expected: str | None = None) -> str:
        """Bring `branch` from `source` into the repository. `force` with `expected` (the head the caller last
        saw here; "" for none) refuses to replace a branch that moved since."""
        await self._check_branch_name(branch)
        if force and expected is not None:
            current = await self._branch_sha(branch) or ""
            if current != expected:
                raise ForgeError(f"pushing {branch}: the branch moved in {self.repo} since the fleet read it; "
                                 "not overwritten")
        source = Path(source)
        try:
            source_common = (source / await git("rev-parse", "--git-common-dir", cwd=source)).resolve()
        except (GitError, OSError) as exc:
            raise ForgeError(f"cannot push {branch!r}: {source} is not a git repository") from exc
        local_sha = await git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                              cwd=source, check=False)
        if not local_sha.strip():
            raise ForgeError(f"cannot push {branch!r}: no such branch in {source}")
        if source_common != self._git_dir:
            # A worktree of this very repository already shares its branches; anything else is fetched.
            try:
                await git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source.resolve()),
                          f"+refs/heads/{branch}:refs/heads/{branch}", cwd=self._cwd)
            except GitError as exc:
                raise ForgeError(f"cannot push {branch!r} from {source}: {exc.stderr[-300:]}") from exc
        sha = await self._branch_sha(branch)
        if sha is None:
            raise ForgeError(f"cannot push {branch!r}: no such branch in {source}")
        return sha

    async def _diff_stats(self, base_sha: str, head_sha: str) -> _DiffStats:
        key = (base_sha, head_sha)
        if key in self._stats_cache:
            return self._stats_cache[key]
        out = await git("diff", "--numstat", "-z", "-M", f"{base_sha}...{head_sha}", "--", cwd=self._cwd)
        additions = deletions = 0
        files: list[str] = []
        parts = out.split("\0")
        i = 0
        while i < len(parts):
            entry = parts[i]
            i += 1
            if not entry.strip():
                continue
            added, deleted, path = entry.split("\t", 2)
            if path == "" and i + 1 < len(parts):  # a rename: "a\td\t\0old\0new"
                path = parts[i + 1]
                i += 2
            additions += int(added) if added.isdigit() else 0
            deletions += int(deleted) if deleted.isdigit() else 0
            files.append(path)
        stats = _DiffStats(additions, deletions, tuple(files))
        self._stats_cache[key] = stats
        return stats

    async def pull_diff(self, number: int, *, limit: int = DIFF_LIMIT) -> str:
        pull = await self.get_pull(number)
        base_sha, head_sha = await self._branch_sha(pull.base), await self._branch_sha(pull.head)
        if base_sha is None or head_sha is None:
            return ""
        out = await git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "-M", f"{base_sha}...{head_sha}",
                        "--", cwd=self._cwd)
        return cut_diff(out, limit)

    async def _merge_tree(self, base_sha: str, head_sha: str) -> tuple[bool | None, list[str]]:
        """Whether head merges cleanly into base (None: this git cannot tell), and the conflicted files."""
        result = await anyio.run_process(
            ["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", base_sha, head_sha],
            cwd=str(self._cwd), check=False, env=git_env())
        if result.returncode == 0:
            return True, []
        if result.returncode == 1:
            lines = result.stdout.decode(errors="replace").splitlines()[1:]
            return False, list(dict.fromkeys(line for line in lines if line.strip()))
        return None, []  # git older than 2.38 has no `merge-tree --write-tree`

    async def _mergeable(self, base_sha: str, head_sha: str) -> tuple[bool | None, str]:
        key = (base_sha, head_sha)
        if key in self._mergeable_cache:
            return self._mergeable_cache[key]
        clean, _ = await self._merge_tree(base_sha, head_sha)
        if clean is None:
            return None, "unknown"
        verdict = (True, "clean") if clean else (False, "dirty")
        self._mergeable_cache[key] = verdict
        return verdict

    # pull requests ----------------------------------------------------------------------------

    async def _pull(self, row: dict[str, Any]) -> PullRequest:
        number, state = row["number"], row["state"]
        final = json.loads(row["final"]) if row["final"] else None
        mergeable: bool | None = None
        mergeable_state = "unknown"
        head_sha: str | None
        if final is not None:  # merged: the figures as they were at the merge
            head_sha = final["head_sha"]
            stats = _DiffStats(final["additions"], final["deletions"], tuple(final["files"]))
            mergeable_state = "merged"
        else:
            head_sha = await self._branch_sha(row["head"])
            base_sha = await self._branch_sha(row["base"])
            stats = _DiffStats(0, 0, ())
            if head_sha and base_sha:
                stats = await self._diff_stats(base_sha, head_sha)
                if state == "open":
                    mergeable, mergeable_state = await self._mergeable(base_sha, head_sha)
        return PullRequest(
            number=number, title=row["title"], body=row["body"], head=row["head"], base=row["base"],
            head_sha=head_sha or "", html_url=self._url(number), state=state,
            author=Actor(row["author"], type=row["author_type"]),
            additions=stats.additions, deletions=stats.deletions, changed_files=len(stats.files),
            files=stats.files, mergeable=mergeable, mergeable_state=mergeable_state, ci=CIState.NONE,
            ci_summary="no checks", head_repo=self.repo,
            reviews=tuple(row["reviews"]), review_comments=(), draft=False,
            updated_at=_time(row["updated_at"]),
        )

    def _pull_rows(self, conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = []
        for r in conn.execute(
            "SELECT i.*, p.head, p.base, p.merge_sha, p.final FROM items i JOIN pulls p USING (number) "
            f"WHERE {where} ORDER BY i.number DESC", params,
        ):
            row = dict(r)
            row["reviews"] = [
                Review(id=str(v["id"]), author=Actor(v["author"], type=v["author_type"]), body=v["body"],
                       state=v["state"], commit_id=v["commit_id"], submitted_at=_time(v["submitted_at"]))
                for v in conn.execute("SELECT * FROM reviews WHERE number = ? ORDER BY id", (r["number"],))
            ]
            rows.append(row)
        return rows

    async def find_pull(self, head: str) -> PullRequest | None:
        rows = await self._db(lambda conn: self._pull_rows(conn, "p.head = ? AND i.state = 'open'", (head,)),
                              write=False)
        return await self._pull(rows[-1]) if rows else None

    async def open_pull(self, *, title: str, body: str, head: str, base: str) -> PullRequest:
        if head == base:
            raise ForgeError(f"cannot open a PR from {head!r} into itself")
        head_sha = await self._branch_sha(head)
        if head_sha is None:
            raise ForgeError(f"cannot open a PR: branch {head!r} does not exist (push it first)")
        base_sha = await self._branch_sha(base)
        if base_sha is None:
            raise ForgeError(f"cannot open a PR: base branch {base!r} does not exist")

        def write(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            existing = self._pull_rows(conn, "p.head = ? AND i.state = 'open'", (head,))
            if existing:
                return existing[-1:]
            now = _now()
            cur = conn.execute(
                "INSERT INTO items (is_pull, title, body, author, author_type, created_at, updated_at) "
                "VALUES (1, ?, ?, ?, ?, ?, ?)", (title, body, FLEET_ACTOR.login, FLEET_ACTOR.type, now, now))
            number = int(cur.lastrowid or 0)
            conn.execute("INSERT INTO pulls (number, head, base) VALUES (?, ?, ?)", (number, head, base))
            return self._pull_rows(conn, "i.number = ?", (number,))

        existing = await self.find_pull(head)
        if existing is not None:
            return existing
        ahead = await git("rev-list", "--count", f"{base_sha}..{head_sha}", cwd=self._cwd)
        if ahead.strip() == "0":
            raise ForgeError(f"cannot open a PR: {head!r} has no commits that {base!r} does not have")
        rows = await self._db(write)
        return await self._pull(rows[0])

    async def list_pulls(self, *, details_for: Collection[str] | None = None) -> list[PullRequest]:
        """Open PRs, newest first; in full for heads in `details_for` (all when None), else their head, base,
        head sha, title, body and author only."""
        rows = await self._db(lambda conn: self._pull_rows(conn, "i.state = 'open'", ()), write=False)
        wanted = None if details_for is None else set(details_for)
        return [await self._pull(row) if wanted is None or row["head"] in wanted else await self._summary(row)
                for row in rows]

    async def _summary(self, row: dict[str, Any]) -> PullRequest:
        return PullRequest(
            number=row["number"], title=row["title"], body=row["body"], head=row["head"], base=row["base"],
            head_sha=await self._branch_sha(row["head"]) or "", html_url=self._url(row["number"]),
            state=row["state"], author=Actor(row["author"], type=row["author_type"]),
            updated_at=_time(row["updated_at"]), head_repo=self.repo,
        )

    async def get_pull(self, number: int) -> PullRequest:
        rows = await self._db(lambda conn: self._pull_rows(conn, "i.number = ?", (number,)), write=False)
        if not rows:
            raise NotFound(f"pull request #{number} does not exist in the local forge")
        return await self._pull(rows[0])

    async def post_review(self, number: int, body: str, commit_id: str) -> Review:
        pull = await self.get_pull(number)
        commit = commit_id or pull.head_sha

        def write(conn: sqlite3.Connection) -> Review:
            now = _now()
            cur = conn.execute(
                "INSERT INTO reviews (number, author, author_type, body, state, commit_id, submitted_at) "
                "VALUES (?, ?, ?, ?, 'COMMENTED', ?, ?)",
                (number, FLEET_ACTOR.login, FLEET_ACTOR.type, body, commit, now))
            conn.execute("UPDATE items SET updated_at = ? WHERE number = ?", (now, number))
            return Review(id=str(cur.lastrowid), author=FLEET_ACTOR, body=body, state="COMMENTED",
                          commit_id=commit, submitted_at=datetime.fromisoformat(now))

        return await self._db(write)

    # the human's merge (not part of the Forge protocol) ---------------------------------------

    async def merge_as_human(self, number: int) -> str:
        """Merge PR `number` with a real `git merge --no-ff` of head into base; returns the merge commit.

        Only the console calls this, after the operator confirmed. When the base branch is checked out in
        a clean worktree the merge happens there (so that checkout moves with it); otherwise it happens in
        a temporary worktree and the base branch ref is moved. A conflict, a dirty checkout of the base or
        a PR that is not open raises `ForgeError` and changes nothing. Issues named by "Closes #N" (and
        GitHub's other closing keywords) in the PR body are closed.
        """
        async with self._merge_lock:
            pull = await self.get_pull(number)
            if pull.state != "open":
                raise ForgeError(f"PR #{number} is {pull.state}; only an open PR can be merged")
            head_sha = await self._branch_sha(pull.head)
            base_sha = await self._branch_sha(pull.base)
            if head_sha is None or base_sha is None:
                missing = pull.head if head_sha is None else pull.base
                raise ForgeError(f"cannot merge PR #{number}: branch {missing!r} no longer exists")
            mergeable, conflicts = await self._merge_tree(base_sha, head_sha)
            if mergeable is False:
                listed = ", ".join(conflicts[:10]) or "see `git merge-tree`"
                raise ForgeError(f"PR #{number} cannot be merged: {pull.head} conflicts with {pull.base} "
                                 f"in {listed}. Nothing was changed; resolve the conflict on {pull.head} first.")
            stats = await self._diff_stats(base_sha, head_sha)
            message = f"Merge pull request #{number} from {pull.head}\n\n{pull.title}"
            env = await self._committer_env()
            checkout = await self._checkout_of(pull.base)
            if checkout is not None:
                dirty = await git("status", "--porcelain", "--untracked-files=no", cwd=checkout)
                if dirty.strip():
                    raise ForgeError(f"cannot merge PR #{number}: {pull.base} is checked out in {checkout} "
                                     f"with uncommitted changes. Commit or stash them, then merge again. "
                                     f"Nothing was changed.")
                merge_sha = await self._merge_in(checkout, head_sha, message, env, number)
            else:
                merge_sha = await self._merge_in_temporary_worktree(pull.base, base_sha, head_sha, message,
                                                                    env, number)
            final = json.dumps({"head_sha": head_sha, "additions": stats.additions,
                                "deletions": stats.deletions, "files": list(stats.files)})
            closing = sorted({int(n) for n in _CLOSING.findall(pull.body)} - {number})

            def write(conn: sqlite3.Connection) -> None:
                now = _now()
                conn.execute("UPDATE items SET state = 'merged', updated_at = ? WHERE number = ?", (now, number))
                conn.execute("UPDATE pulls SET merge_sha = ?, final = ? WHERE number = ?",
                             (merge_sha, final, number))
                for issue in closing:
                    conn.execute("UPDATE items SET state = 'closed', updated_at = ? "
                                 "WHERE number = ? AND is_pull = 0 AND state = 'open'", (now, issue))

            await self._db(write)
            return merge_sha

    async def _checkout_of(self, branch: str) -> Path | None:
        """The worktree that has `branch` checked out, if any."""
        listing = await git("worktree", "list", "--porcelain", cwd=self._cwd)
        path: Path | None = None
        for line in listing.splitlines():
            if line.startswith("worktree "):
                path = Path(line.removeprefix("worktree "))
            elif line == f"branch refs/heads/{branch}" and path is not None and path.is_dir():
                return path
        return None

    async def _merge_in(self, checkout: Path, head_sha: str, message: str, env: dict[str, str],
                        number: int) -> str:
        try:
            await git("merge", "--no-ff", "--no-edit", "-m", message, head_sha, cwd=checkout, env=env)
        except GitError as exc:
            await git("merge", "--abort", cwd=checkout, check=False)
            raise ForgeError(f"cannot merge PR #{number} in {checkout}: {exc.stderr[-300:]}") from exc
        return await git("rev-parse", "HEAD", cwd=checkout)

    async def _merge_in_temporary_worktree(self, base: str, base_sha: str, head_sha: str, message: str,
                                           env: dict[str, str], number: int) -> str:
        with tempfile.TemporaryDirectory(prefix="fleet-merge-") as tmp:
            place = Path(tmp) / "worktree"
            await git("worktree", "add", "--quiet", "--detach", str(place), base_sha, cwd=self._cwd)
            try:
                try:
                    await git("merge", "--no-ff", "--no-edit", "-m", message, head_sha, cwd=place, env=env)
                except GitError as exc:
                    raise ForgeError(f"cannot merge PR #{number}: {exc.stderr[-300:]}") from exc
                merge_sha = await git("rev-parse", "HEAD", cwd=place)
                try:  # moves the base only if nobody moved it meanwhile
                    await git("update-ref", "-m", f"merge PR #{number}", f"refs/heads/{base}", merge_sha,
                              base_sha, cwd=self._cwd)
                except GitError as exc:
                    raise ForgeError(f"cannot merge PR #{number}: {base} moved during the merge; "
                                     f"try again") from exc
            finally:
                await git("worktree", "remove", "--force", str(place), cwd=self._cwd, check=False)
                await git("worktree", "prune", cwd=self._cwd, check=False)
        return merge_sha

    async def _committer_env(self) -> dict[str, str]:
        """The operator as author and committer when git has no identity configured."""
        env: dict[str, str] = {}
        name = await git("config", "user.name", cwd=self._cwd, check=False)
        email = await git("config", "user.email", cwd=self._cwd, check=False)
        login = self._operator.login
        if not name.strip():
            env.setdefault("GIT_AUTHOR_NAME", os.environ.get("GIT_AUTHOR_NAME", login))
            env.setdefault("GIT_COMMITTER_NAME", os.environ.get("GIT_COMMITTER_NAME", login))
        if not email.strip():
            fallback = f"{re.sub(r'[^A-Za-z0-9._-]', '', login) or 'operator'}@localhost"
            env.setdefault("GIT_AUTHOR_EMAIL", os.environ.get("GIT_AUTHOR_EMAIL", fallback))
            env.setdefault("GIT_COMMITTER_EMAIL", os.environ.get("GIT_COMMITTER_EMAIL", fallback))
        return env


def _add_labels(conn: sqlite3.Connection, number: int, labels: Iterable[str], actor: Actor, now: str) -> None:
    """Put labels on an item, creating unknown labels (as GitHub does); an event for each one added."""
    added = False
    for label in dict.fromkeys(x for x in labels if x):
        conn.execute("INSERT OR IGNORE INTO labels (name, created_at) VALUES (?, ?)", (label, now))
        cur = conn.execute("INSERT OR IGNORE INTO item_labels (number, label) VALUES (?, ?)", (number, label))
        if cur.rowcount:
            added = True
            conn.execute(
                "INSERT INTO label_events (number, kind, label, actor, actor_type, created_at) "
                "VALUES (?, 'labeled', ?, ?, ?, ?)", (number, label, actor.login, actor.type, now))
    if added:
        conn.execute("UPDATE items SET updated_at = ? WHERE number = ?", (now, number))


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if version is None:
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
    elif int(version[0]) > _SCHEMA_VERSION:
        conn.close()
        raise ForgeError(f"{path} was written by a newer fleet-tui (schema {version[0]}); upgrade fleet-tui")
    return conn
