"""Per-run workspaces: a fresh clone on a `fleet/<issue>-<slug>` branch plus a scratch dir beside it, what
the run changed (commits, diff stats, touched paths), and cleanup of finished workspaces.

Layout under the root the caller gives (the orchestrator passes `<journal dir>/workspaces`):

    <root>/<run_id>/repo/          the clone the agent works in (mounted at /workspace in Docker)
    <root>/<run_id>/scratch/       prompt files and outputs (mounted at /fleet)
    <root>/<run_id>/workspace.json what this workspace is, and when it finished

A clone (not a worktree) keeps everything inside `repo/`: no `.git` file pointing at a host path, so the
same directory works when mounted into a container. Git refuses to work in a repository owned by another
uid ("dubious ownership"); `SAFE_DIRECTORY_ENV` turns that check off for the agent and for our own git calls
(git honours `safe.directory` only from protected config, which environment config is, a repository's own
config is not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import anyio

from fleet_tui.git import git

# Environment-scoped git config: trust any repository owner. Safe here because the workspace is ours.
SAFE_DIRECTORY_ENV: dict[str, str] = {
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}

_META = "workspace.json"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class WorkspaceError(Exception):
    """A workspace could not be made or read; the message says which run and why."""


def slugify(title: str, limit: int = 40) -> str:
    """ASCII slug of `title`: lower case, words joined by `-`, at most `limit` characters."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    if len(slug) > limit:
        slug = slug[:limit].rstrip("-")
    return slug


def branch_name(issue: int, title: str) -> str:
    """`fleet/<issue>-<slug>`, e.g. `fleet/12-add-a-dark-theme`."""
    return f"fleet/{issue}-{slugify(title) or 'work'}"


def parse_user(user: str) -> tuple[int, int] | None:
    """`"1000:1000"` (or `"1000"`) as (uid, gid); None for a name, which has no meaning on the host."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


@dataclass(frozen=True, slots=True)
class Workspace:
    run_id: str
    dir: Path  # <root>/<run_id>
    repo: Path  # the clone
    scratch: Path
    branch: str
    start_sha: str  # HEAD when the run started: "commits made" are the ones after it
    issue: int | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    sha: str
    subject: str  # untrusted text written by the agent


@dataclass(frozen=True, slots=True)
class Changes:
    """What a run changed, from `start` (or the merge base with a given ref) to HEAD."""

    commits: tuple[Commit, ...] = ()
    additions: int = 0
    deletions: int = 0
    files_changed: int = 0
    paths: tuple[str, ...] = ()  # every touched path, both sides of a rename
    uncommitted: tuple[str, ...] = ()  # paths changed in the work tree but not committed
    head_sha: str = ""

    @property
    def lines_changed(self) -> int:
        return self.additions + self.deletions


class WorkspaceManager:
    """Makes, inspects and removes the workspaces of runs under `root`."""

    def __init__(self, root: Path, *, retention_h: float = 24.0, owner: tuple[int, int] | None = None,
                 author: tuple[str, str] = ("fleet agent", "fleet-agent@localhost")) -> None:
        """`owner` (uid, gid): chown the workspace to the uid the agent runs as (Docker); None leaves it to
        the current user (local runner). `author` is the git identity the agent commits with."""
        self.root = Path(root)
        self.retention_h = retention_h
        self.owner = owner
        self.author = author
        self._live: set[str] = set()

    def path(self, run_id: str) -> Path:
        if not _RUN_ID_RE.match(run_id):
            raise WorkspaceError(f"run id {run_id!r} is not usable as a directory name")
        return self.root / run_id

    async def create(self, run_id: str, source: str | Path, *, issue: int | None = None, title: str = "",
                     base: str = "", branch: str = "", existing: bool = False) -> Workspace:
        """Clone `source` for `run_id`.

        New work: branch `branch` (default `branch_name(issue, title)`) from `base` (default: the source's
        HEAD). A fix round: `existing=True` checks out `branch` as it is in the source.
        """
        run_dir = self.path(run_id)
        if run_dir.exists():
            raise WorkspaceError(f"workspace of run {run_id} already exists at {run_dir}")
        if not branch:
            if issue is None:
                raise WorkspaceError(f"run {run_id}: a branch name or an issue number is needed")
            branch = branch_name(issue, title)
        repo, scratch = run_dir / "repo", run_dir / "scratch"
        self._live.add(run_id)
        try:
            run_dir.mkdir(parents=True)
            scratch.mkdir()
            await git("clone", "--quiet", "--no-hardlinks", "--local", "--no-checkout", str(source), str(repo),
                      cwd=run_dir)
            if existing:
                await git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=repo)
            else:
                start = f"origin/{base}" if base else "origin/HEAD"
                if not await git("rev-parse", "--verify", "--quiet", start, cwd=repo, check=False):
                    start = "HEAD"  # a source without a default-branch ref: its HEAD as cloned
                await git("checkout", "--quiet", "-b", branch, start, cwd=repo)
            name, email = self.author
            await git("config", "user.name", name, cwd=repo)
            await git("config", "user.email", email, cwd=repo)
            await git("config", "gc.auto", "0", cwd=repo)  # no background gc racing the agent
            start_sha = await git("rev-parse", "HEAD", cwd=repo)
            meta = {"run_id": run_id, "issue": issue, "branch": branch, "start_sha": start_sha,
                    "created_at": time.time(), "finished_at": None}
            (run_dir / _META).write_text(json.dumps(meta), encoding="utf-8")
            if self.owner is not None:
                await anyio.to_thread.run_sync(_give_to, repo, scratch, self.owner)
        except BaseException:
            self._live.discard(run_id)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_tree, run_dir)
            raise
        return Workspace(run_id, run_dir, repo, scratch, branch, start_sha, issue)

    def open(self, run_id: str) -> Workspace:
        """The workspace of `run_id` as `create()` left it (after an orchestrator restart)."""
        run_dir = self.path(run_id)
        meta = _read_meta(run_dir)
        if meta is None:
            raise WorkspaceError(f"no workspace for run {run_id} under {self.root}")
        self._live.add(run_id)
        return Workspace(run_id, run_dir, run_dir / "repo", run_dir / "scratch", meta["branch"],
                         meta["start_sha"], meta.get("issue"))

    async def changes(self, ws: Workspace, *, against: str = "") -> Changes:
        """Commits, diff stats and touched paths since the run started, or since the merge base with
        `against` (e.g. `origin/main`: what the PR would hold)."""
        repo = ws.repo
        env = SAFE_DIRECTORY_ENV
        head = await git("rev-parse", "HEAD", cwd=repo, env=env)
        since = ws.start_sha
        if against:
            since = await git("merge-base", against, "HEAD", cwd=repo, env=env)
        log = await git("log", "--reverse", "--format=%H%x00%s", f"{since}..HEAD", cwd=repo, env=env)
        commits = tuple(Commit(*line.split("\0", 1)) for line in log.splitlines() if "\0" in line)
        numstat = await git("diff", "--numstat", "--no-renames", "-z", since, "HEAD", cwd=repo, env=env)
        additions = deletions = 0
        paths: list[str] = []
        for record in numstat.split("\0"):
            if not record:
                continue
            added, deleted, path = record.split("\t", 2)
            additions += int(added) if added.isdigit() else 0  # "-" for binary files
            deletions += int(deleted) if deleted.isdigit() else 0
            paths.append(path)
        status = await git("status", "--porcelain", "-z", "--untracked-files=all", cwd=repo, env=env)
        uncommitted = tuple(sorted({entry[3:] for entry in status.split("\0") if len(entry) > 3}))
        return Changes(commits, additions, deletions, len(paths), tuple(sorted(paths)), uncommitted, head)

    async def commit_pending(self, ws: Workspace, message: str) -> bool:
        """Commit what the agent left uncommitted (some CLIs edit without committing); True if it did."""
        env = SAFE_DIRECTORY_ENV
        await git("add", "--all", cwd=ws.repo, env=env)
        if not await git("status", "--porcelain", cwd=ws.repo, env=env):
            return False
        name, email = self.author
        await git("-c", f"user.name={name}", "-c", f"user.email={email}", "commit", "--quiet", "--no-verify",
                  "-m", message, cwd=ws.repo, env=env)
        return True

    def finish(self, run_id: str) -> None:
        """Mark the run's workspace finished: from now on `cleanup()` may remove it after the retention."""
        self._live.discard(run_id)
        run_dir = self.path(run_id)
        meta = _read_meta(run_dir)
        if meta is not None:
            meta["finished_at"] = time.time()
            (run_dir / _META).write_text(json.dumps(meta), encoding="utf-8")

    async def cleanup(self, live: Collection[str] = (), *, now: float | None = None) -> list[str]:
        """Remove workspaces finished more than `retention_h` hours ago; returns the run ids removed.

        Never removes a run in `live`, one this manager has created or opened and not finished, or one
        not marked finished (unless it is older than the retention and not live: a run lost in a crash).
        """
        now = time.time() if now is None else now
        horizon = now - self.retention_h * 3600
        keep = set(live) | self._live
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for run_dir in sorted(self.root.iterdir()):
            if not run_dir.is_dir() or run_dir.name in keep:
                continue
            meta = _read_meta(run_dir)
            if meta is None:
                continue  # not ours
            stamp = meta.get("finished_at") or meta.get("created_at") or now
            if stamp <= horizon:
                await anyio.to_thread.run_sync(_remove_tree, run_dir)
                removed.append(run_dir.name)
        return removed


def write_scratch_files(scratch: Path, files: dict[str, str]) -> None:
    """Write `files` (scratch-relative name -> content) into `scratch`; a name may not leave the dir."""
    base = scratch.resolve()
    for name, content in files.items():
        target = (base / name).resolve()
        if name.startswith("/") or not target.is_relative_to(base) or target == base:
            raise WorkspaceError(f"scratch file name {name!r} leaves the scratch dir")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        target.chmod(0o644)
        try:
            st = base.stat()
            os.chown(target, st.st_uid, st.st_gid)  # the agent's uid owns the scratch dir
        except PermissionError:
            pass


def _read_meta(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _give_to(repo: Path, scratch: Path, owner: tuple[int, int]) -> None:
    """Make the clone and scratch writable by the container's uid: chown when we may, else open up modes."""
    uid, gid = owner
    for top in (repo, scratch):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))]:
                try:
                    os.chown(name, uid, gid, follow_symlinks=False)
                except PermissionError:
                    if not os.path.islink(name):
                        mode = os.stat(name).st_mode
                        os.chmod(name, mode | 0o666 | (0o111 if os.path.isdir(name) else 0))


def _remove_tree(path: Path) -> None:
    def _retry_writable(func, name, _exc):  # type: ignore[no-untyped-def]
        try:  # a dir the agent made read-only: open it up and try once more
            os.chmod(os.path.dirname(name), 0o777)
            func(name)
        except OSError:
            pass

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_retry_writable)
    else:
        shutil.rmtree(path, onerror=_retry_writable)
