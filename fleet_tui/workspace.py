"""Per-run workspaces: a fresh clone on a `fleet/<issue>-<slug>` branch plus a scratch dir beside it, what
the run changed (commits, diff stats, touched paths), and cleanup of finished workspaces.

Layout under the root the caller gives (the orchestrator passes `<journal dir>/workspaces`):

    <root>/<run_id>/repo/          the clone the agent works in (mounted at /workspace in Docker)
    <root>/<run_id>/scratch/       prompt files and outputs (mounted at /fleet)
    <root>/<run_id>/workspace.json what this workspace is, and when it finished

A clone (not a worktree) keeps everything inside `repo/`: no `.git` file pointing at a host path, so the
same directory works when mounted into a container. Git refuses to work in a repository owned by another
uid ("dubious ownership"); `SAFE_DIRECTORY_ENV` turns that check off for the agent inside its sandbox.

**The orchestrator never runs git inside a workspace after the agent has had it.** The agent controls that
repository's `.git/config` and hooks (`core.fsmonitor`, `pre-push`, ...), so any git command run there on the
host would run the agent's code outside its sandbox, with the orchestrator's environment (the forge token
when pushing). Instead, every clone comes from a trusted bare mirror owned by the orchestrator
(`<root>/../mirror.git`); after the run, the agent's branch is *fetched* from the workspace into the mirror
(`git fetch` runs no hooks and no command from the other repository's config), measured there, and pushed
from there. Work the agent left uncommitted is committed inside the sandbox, by `commit_after()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from fleet_tui.engines.base import Engine, Invocation, OutputParser, Task
from fleet_tui.git import GitError, git

# Environment-scoped git config: trust any repository owner. Given to the agent, inside its sandbox.
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
        self.mirror = self.root.parent / "mirror.git"
        self.retention_h = retention_h
        self.owner = owner
        self.author = author
        self._live: set[str] = set()
        # One git writer on the mirror at a time (runs start and finish concurrently), and stale lock files
        # from a killed process cleared before the first write.
        self._mirror_lock = anyio.Lock()
        self._mirror_checked = False

    def path(self, run_id: str) -> Path:
        if not _RUN_ID_RE.match(run_id):
            raise WorkspaceError(f"run id {run_id!r} is not usable as a directory name")
        return self.root / run_id

    def _clear_stale_locks(self) -> None:
        """Remove `*.lock` files a killed git process left in the mirror. Safe: the mirror sits in the
        journal's directory, whose lock admits one orchestrator, and this manager serializes its own writes."""
        if self._mirror_checked or not self.mirror.is_dir():
            return
        self._mirror_checked = True
        for lock in [*self.mirror.glob("*.lock"), *(self.mirror / "refs").rglob("*.lock")]:
            with contextlib.suppress(OSError):
                lock.unlink()

    async def _sync_mirror(self, source: str | Path, branch: str, existing: bool) -> None:
        async with self._mirror_lock:
            self._clear_stale_locks()
            await self._sync_mirror_locked(source, branch, existing)

    async def _sync_mirror_locked(self, source: str | Path, branch: str, existing: bool) -> None:
        """Bring the trusted mirror up to date with `source` (the operator's repository, trusted): every
        branch but the fleet's own, which the mirror holds as collected from runs; a fleet branch the mirror
        lacks (a fresh mirror) is taken from the source."""
        if not (self.mirror / "HEAD").exists():
            self.mirror.parent.mkdir(parents=True, exist_ok=True)
            await git("init", "--quiet", "--bare", str(self.mirror), cwd=self.mirror.parent)
            await git("config", "gc.auto", "0", cwd=self.mirror)
        await git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source),
                  "+refs/heads/*:refs/heads/*", "^refs/heads/fleet/*", cwd=self.mirror)
        head = await git("symbolic-ref", "--quiet", "HEAD", cwd=source, check=False)
        if head.startswith("refs/heads/"):
            await git("symbolic-ref", "HEAD", head, cwd=self.mirror)
        if existing and not await self._mirror_sha(branch):
            await git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source),
                      f"+refs/heads/{branch}:refs/heads/{branch}", cwd=self.mirror)

    async def _mirror_sha(self, ref: str) -> str:
        return await git("rev-parse", "--verify", "--quiet", f"refs/heads/{ref}^{{commit}}", cwd=self.mirror,
                         check=False)

    async def create(self, run_id: str, source: str | Path, *, issue: int | None = None, title: str = "",
                     base: str = "", branch: str = "", existing: bool = False) -> Workspace:
        """A clone for `run_id`, made from the trusted mirror after syncing it with `source`.

        New work: branch `branch` (default `branch_name(issue, title)`) from `base` (default: the source's
        HEAD). A fix round: `existing=True` checks out `branch` as the fleet last collected it.
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
            await self._sync_mirror(source, branch, existing)
            await git("clone", "--quiet", "--no-hardlinks", "--local", "--no-checkout", str(self.mirror),
                      str(repo), cwd=run_dir)
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

    async def collect(self, ws: Workspace, *, base: str = "") -> Changes:
        """Fetch the run's branch from its workspace into the mirror and measure it there: the commits made
        since the run started, and the lines/files the branch changes against `base` (the PR's size).
        The mirror's `refs/heads/<branch>` then points at the run's head, ready to push."""
        async with self._mirror_lock:
            self._clear_stale_locks()
            return await self._collect_locked(ws, base=base)

    async def _collect_locked(self, ws: Workspace, *, base: str = "") -> Changes:
        alternates = ws.repo / ".git" / "objects" / "info" / "alternates"
        if alternates.exists() or alternates.is_symlink():
            alternates.unlink()  # objects from elsewhere on the host never reach the mirror (or the forge)
        ref = f"refs/runs/{ws.run_id}"
        try:
            # Local transport clears environment config for the upload-pack it starts, so the ownership
            # override (the workspace belongs to the agent's uid) goes on upload-pack's own command line.
            await git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                      "--upload-pack", "git -c safe.directory='*' upload-pack", str(ws.repo),
                      f"+refs/heads/{ws.branch}:{ref}", cwd=self.mirror)
        except GitError as exc:
            raise WorkspaceError(f"run {ws.run_id}: cannot collect branch {ws.branch}: {exc.stderr[-300:]}") from None
        head = await git("rev-parse", ref, cwd=self.mirror)
        log = await git("log", "--reverse", "--format=%H%x00%s", f"{ws.start_sha}..{head}", cwd=self.mirror)
        commits = tuple(Commit(*line.split("\0", 1)) for line in log.splitlines() if "\0" in line)
        since = ws.start_sha
        if base and await self._mirror_sha(base):
            since = await git("merge-base", f"refs/heads/{base}", head, cwd=self.mirror)
        numstat = await git("diff", "--numstat", "--no-renames", "-z", since, head, cwd=self.mirror)
        additions = deletions = 0
        paths: list[str] = []
        for record in numstat.split("\0"):
            if not record:
                continue
            added, deleted, path = record.split("\t", 2)
            additions += int(added) if added.isdigit() else 0  # "-" for binary files
            deletions += int(deleted) if deleted.isdigit() else 0
            paths.append(path)
        await git("update-ref", f"refs/heads/{ws.branch}", head, cwd=self.mirror)
        return Changes(commits, additions, deletions, len(paths), tuple(sorted(paths)), (), head)

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


def commit_after(invocation: Invocation, message: str, author: tuple[str, str]) -> Invocation:
    """`invocation` followed, inside the same sandbox, by a commit of whatever the agent left uncommitted
    (some CLIs edit without committing). The agent's exit code is kept."""
    script = ('rc=0; "$@" || rc=$?; git add --all >/dev/null 2>&1 && '
              'git -c user.name="$FLEET_AUTHOR_NAME" -c user.email="$FLEET_AUTHOR_EMAIL" '
              'commit --quiet --no-verify -m "$FLEET_COMMIT_MESSAGE" >/dev/null 2>&1; exit $rc')
    env = {**invocation.env, "FLEET_COMMIT_MESSAGE": message, "FLEET_AUTHOR_NAME": author[0],
           "FLEET_AUTHOR_EMAIL": author[1]}
    return dataclasses.replace(invocation, argv=("sh", "-c", script, "fleet-agent", *invocation.argv), env=env)


class CommittingEngine:
    """An engine whose runs end with `commit_after()`: the dev role's engine, so a run that edited without
    committing still yields commits, made inside its sandbox."""

    def __init__(self, engine: Engine, message: str, author: tuple[str, str]) -> None:
        self.engine = engine
        self.name = engine.name
        self.message = message
        self.author = author

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        return commit_after(self.engine.invocation(task, workdir=workdir, scratch=scratch), self.message,
                            self.author)

    def parser(self) -> OutputParser:
        return self.engine.parser()


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
