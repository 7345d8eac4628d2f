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
(`<root>/../mirror.git`). At the end of the run, inside the sandbox, `commit_after()` commits what the agent
left uncommitted and writes the branch as a git bundle into the scratch dir; the runner brings the scratch dir
back (fleet_tui/runners/transport.py: the same path for a local engine, a remote host or a pod), and the
bundle is *fetched* into the mirror (a bundle is data: no hook or config of the agent's runs, and every object
is checked), measured there, and pushed from there. The host never runs git in the agent's repository.

**Every run starts from the base as the forge has it.** `create()` fetches the base branch (and, for a fix,
QA or update round, the run's branch) from the source, a path or a `GitSource` (`url` plus `env`, which may
carry the forge's auth header: it is given to that one `git fetch` and written nowhere), into the mirror
before it cuts the clone. An update round then merges or rebases that fresh base into the clone on the host,
while the clone is still the mirror's and trusted; conflicts are left for the agent to resolve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import anyio

from fleet_tui.engines.base import Engine, Invocation, OutputParser, Task
from fleet_tui.git import GitError, git, git_env
from fleet_tui.runners.transport import RESULT_BUNDLE, RESULT_HEAD

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


class GitSourceLike(Protocol):
    """Where runs fetch their base from: `url` is what git fetches (a path or an https URL), `env` extra
    environment for that git (it may hold credentials: never logged, never written to any repository)."""

    @property
    def url(self) -> str: ...

    @property
    def env(self) -> Mapping[str, str]: ...


UpdateStrategy = Literal["merge", "rebase"]

# Host git that merges or rebases in a fresh clone: no hooks, and nothing from the operator's global or the
# system config (a signing key, rerere, a merge tool) that would make the result depend on the machine.
_UPDATE_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_EDITOR": "true",
               "GIT_SEQUENCE_EDITOR": "true", "GIT_MERGE_AUTOEDIT": "no"}
_UPDATE_CONFIG = ("-c", f"core.hooksPath={os.devnull}", "-c", "commit.gpgSign=false", "-c", "rerere.enabled=false",
                  "-c", "core.fsmonitor=false")
_NULL_SHA = "0" * 40


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
    start_sha: str  # the branch as cut, before any update: "commits made" are the ones after it
    issue: int | None = None
    base: str = ""  # the base branch, as fetched from the source for this run
    base_sha: str = ""  # the base's head at that moment
    updated_from: str = ""  # update rounds: the base sha brought in ("" when no update was asked)
    update: str = ""  # how the base came in: "merge", "rebase", or "" (none asked, or nothing to bring in)
    conflicts: tuple[str, ...] = ()  # paths left with conflict markers by an update merge, for the agent
    update_note: str = ""  # one line on what the update did, for the log and the agent's prompt


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
    bytes_changed: int = 0  # text files: bytes of added and removed lines; binary files: the new blob's size
    binary_files: tuple[str, ...] = ()  # paths git treats as binary (numstat `-`) the branch adds or changes
    rewritten: bool = False  # the head does not descend from the branch as last known: push with force
    unresolved: tuple[str, ...] = ()  # conflicted paths of an update that still hold conflict markers
    base_sha: str = ""  # what the size is measured against: the merge base with the fresh base branch

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

    async def _sync_mirror(self, run_id: str, source: str | Path | GitSourceLike, base: str, branch: str,
                           existing: bool) -> _Fetched:
        async with self._mirror_lock:
            self._clear_stale_locks()
            return await self._sync_mirror_locked(run_id, source, base, branch, existing)

    async def _sync_mirror_locked(self, run_id: str, source: str | Path | GitSourceLike, base: str, branch: str,
                                  existing: bool) -> _Fetched:
        """Fetch `base` (default: the source's HEAD branch) from the source into the mirror, and for an
        existing branch that branch too: the run starts from both as the source has them now. The mirror's
        own copy of a fleet branch wins only while it is ahead of the source's (collected, not yet pushed)."""
        url, env = _source_of(source)
        where = _display(url)
        if not (self.mirror / "HEAD").exists():
            self.mirror.parent.mkdir(parents=True, exist_ok=True)
            await git("init", "--quiet", "--bare", str(self.mirror), cwd=self.mirror.parent)
            await git("config", "gc.auto", "0", cwd=self.mirror)
        if not base:
            try:
                listed = await git("ls-remote", "--symref", url, "HEAD", cwd=self.mirror, env=env)
            except GitError as exc:
                raise WorkspaceError(f"run {run_id}: cannot read {where}: {_redact(exc.stderr, env)[-300:]}") from None
            symref = next((line for line in listed.splitlines() if line.startswith("ref: refs/heads/")), "")
            if not symref:
                raise WorkspaceError(f"run {run_id}: no base branch given and the HEAD of {where} is not a branch")
            base = symref.removeprefix("ref: refs/heads/").split("\t", 1)[0]
        await _check_branch(run_id, base, "base branch")
        if branch:
            await _check_branch(run_id, branch, "branch")
        refspecs = [f"+refs/heads/{base}:refs/heads/{base}"]
        if existing:
            # A pattern, so a branch the source lacks (collected here, never pushed) is no error.
            refspecs.append(f"+refs/heads/{branch}*:refs/forge/heads/{branch}*")
            # What an earlier fetch left must not stand in for a branch since deleted at the source.
            await git("update-ref", "-d", f"refs/forge/heads/{branch}", cwd=self.mirror, check=False)
        try:
            await git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", url, *refspecs,
                      cwd=self.mirror, env=env)
        except GitError as exc:
            if "couldn't find remote ref" in exc.stderr:
                raise WorkspaceError(f"run {run_id}: the base branch {base!r} is not on {where}") from None
            raise WorkspaceError(f"run {run_id}: cannot fetch from {where}: {_redact(exc.stderr, env)[-300:]}") from None
        await git("symbolic-ref", "HEAD", f"refs/heads/{base}", cwd=self.mirror)
        base_sha = await self._mirror_sha(base)
        branch_sha = ""
        if existing:
            theirs = await self._mirror_sha(branch, space="refs/forge/heads")
            ours = await self._mirror_sha(branch)
            if theirs and theirs != ours and not (ours and await self._is_ancestor(theirs, ours)):
                await git("update-ref", f"refs/heads/{branch}", theirs, cwd=self.mirror)
                ours = theirs
            if not ours:
                raise WorkspaceError(f"run {run_id}: branch {branch!r} is neither on {where} nor in the mirror")
            branch_sha = ours
        return _Fetched(base, base_sha, branch_sha)

    async def _mirror_sha(self, ref: str, *, space: str = "refs/heads") -> str:
        return await git("rev-parse", "--verify", "--quiet", f"{space}/{ref}^{{commit}}", cwd=self.mirror,
                         check=False)

    async def _is_ancestor(self, older: str, newer: str) -> bool:
        return await _git_ok(self.mirror, "merge-base", "--is-ancestor", older, newer)

    async def create(self, run_id: str, source: str | Path | GitSourceLike, *, issue: int | None = None,
                     title: str = "", base: str = "", branch: str = "", existing: bool = False,
                     update: UpdateStrategy | None = None) -> Workspace:
        """A clone for `run_id`, cut from the trusted mirror after fetching the base (and an existing branch)
        from `source`: the operator's repository as a path, or a `GitSourceLike` (a forge's URL and the
        environment its git needs).

        New work: branch `branch` (default `branch_name(issue, title)`) from `base` (default: the source's
        HEAD branch). A fix round: `existing=True` checks out `branch` as the source has it (or as the fleet
        last collected it, when that is ahead). An update round (`existing=True`, `update="merge"|"rebase"`)
        then brings the fresh base in on the host, before any agent has the clone: a clean update is a commit
        already made; a conflicting merge is left in progress with conflict markers (`Workspace.conflicts`)
        for the agent to resolve, and the run's final commit concludes it; a conflicting rebase is aborted
        and merged instead (said in `Workspace.update_note`).
        """
        if update not in (None, "merge", "rebase"):
            raise WorkspaceError(f"run {run_id}: update must be 'merge' or 'rebase', not {update!r}")
        if update and not existing:
            raise WorkspaceError(f"run {run_id}: an update round needs an existing branch")
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
            fetched = await self._sync_mirror(run_id, source, base, branch, existing)
            await git("clone", "--quiet", "--no-hardlinks", "--local", "--no-checkout", str(self.mirror),
                      str(repo), cwd=run_dir)
            if existing:
                await git("checkout", "--quiet", "-B", branch, fetched.branch_sha, cwd=repo)
            else:
                await git("checkout", "--quiet", "-b", branch, fetched.base_sha, cwd=repo)
            name, email = self.author
            await git("config", "user.name", name, cwd=repo)
            await git("config", "user.email", email, cwd=repo)
            await git("config", "gc.auto", "0", cwd=repo)  # no background gc racing the agent
            start_sha = await git("rev-parse", "HEAD", cwd=repo)
            ws = Workspace(run_id, run_dir, repo, scratch, branch, start_sha, issue, fetched.base, fetched.base_sha)
            if update:
                ws = await self._update(ws, update)
            meta = {"run_id": run_id, "issue": issue, "branch": branch, "start_sha": start_sha,
                    "base": ws.base, "base_sha": ws.base_sha, "updated_from": ws.updated_from, "update": ws.update,
                    "conflicts": list(ws.conflicts), "update_note": ws.update_note,
                    "created_at": time.time(), "finished_at": None}
            (run_dir / _META).write_text(json.dumps(meta), encoding="utf-8")
            if self.owner is not None:
                await anyio.to_thread.run_sync(_give_to, repo, scratch, self.owner)
        except BaseException:
            self._live.discard(run_id)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_tree, run_dir)
            raise
        return ws

    async def _update(self, ws: Workspace, strategy: UpdateStrategy) -> Workspace:
        """Bring `ws.base_sha` into the fresh clone's branch (see `create`)."""
        base_sha, repo = ws.base_sha, ws.repo
        ws = dataclasses.replace(ws, updated_from=base_sha)
        if await _git_ok(repo, "merge-base", "--is-ancestor", base_sha, "HEAD"):
            return dataclasses.replace(ws, update_note=f"the branch already contains {ws.base} ({base_sha[:12]})")
        note = ""
        if strategy == "rebase":
            if await _git_ok(repo, *_UPDATE_CONFIG, "rebase", "--no-autostash", "--no-autosquash", "--no-verify",
                             "--quiet", base_sha, env=_UPDATE_ENV):
                return dataclasses.replace(ws, update="rebase", update_note=f"rebased onto {ws.base} ({base_sha[:12]})")
            stopped = await _unmerged(repo)
            await _git_ok(repo, *_UPDATE_CONFIG, "rebase", "--abort", env=_UPDATE_ENV)
            if await git("rev-parse", "HEAD", cwd=repo) != ws.start_sha:
                raise WorkspaceError(f"run {ws.run_id}: an aborted rebase left {ws.branch} elsewhere")
            note = (f"rebasing onto {ws.base} conflicted in {len(stopped)} file(s), so {ws.base} was merged "
                    "instead; ")
        message = f"Merge {ws.base} into {ws.branch}"
        if await _git_ok(repo, *_UPDATE_CONFIG, "merge", "--no-edit", "--no-verify", "--no-stat", "-m", message,
                         base_sha, env=_UPDATE_ENV):
            return dataclasses.replace(ws, update="merge",
                                       update_note=f"{note}merged {ws.base} ({base_sha[:12]}) cleanly")
        conflicts = await _unmerged(repo)
        if not conflicts or not (repo / ".git" / "MERGE_HEAD").exists():
            raise WorkspaceError(f"run {ws.run_id}: merging {ws.base} into {ws.branch} failed without conflicts")
        return dataclasses.replace(ws, update="merge", conflicts=conflicts,
                                   update_note=f"{note}merging {ws.base} ({base_sha[:12]}) left conflicts in "
                                               f"{len(conflicts)} file(s) to resolve; commit to conclude the merge")

    def open(self, run_id: str) -> Workspace:
        """The workspace of `run_id` as `create()` left it (after an orchestrator restart)."""
        run_dir = self.path(run_id)
        meta = _read_meta(run_dir)
        if meta is None:
            raise WorkspaceError(f"no workspace for run {run_id} under {self.root}")
        self._live.add(run_id)
        return Workspace(run_id, run_dir, run_dir / "repo", run_dir / "scratch", meta["branch"],
                         meta["start_sha"], meta.get("issue"), meta.get("base", ""), meta.get("base_sha", ""),
                         meta.get("updated_from", ""), meta.get("update", ""), tuple(meta.get("conflicts") or ()),
                         meta.get("update_note", ""))

    async def collect(self, ws: Workspace, *, base: str = "") -> Changes:
        """Fetch the run's branch from the bundle it left in its scratch dir into the mirror and measure it
        there: the commits made
        since the run started (the base's own commits left out), and what the branch changes against the
        merge base with `base` (default: the workspace's base; the PR's size). The mirror's
        `refs/heads/<branch>` then points at the run's head, ready to push (with force when `rewritten`)."""
        async with self._mirror_lock:
            self._clear_stale_locks()
            return await self._collect_locked(ws, base=base or ws.base)

    async def _collect_locked(self, ws: Workspace, *, base: str = "") -> Changes:
        ref = f"refs/runs/{ws.run_id}"
        await self._receive(ws, ref)
        head = await git("rev-parse", ref, cwd=self.mirror)
        base_sha = await self._mirror_sha(base) if base else ""
        excluded = [f"^{base_sha}"] if base_sha else []
        log = await git("log", "--reverse", "--format=%H%x00%s", head, f"^{ws.start_sha}", *excluded,
                        cwd=self.mirror)
        commits = tuple(Commit(*line.split("\0", 1)) for line in log.splitlines() if "\0" in line)
        since = ws.start_sha
        if base_sha:
            since = await git("merge-base", base_sha, head, cwd=self.mirror, check=False) or ws.start_sha
        numstat = await git("diff", "--numstat", "--no-renames", "--no-ext-diff", "--no-textconv", "-z", since,
                            head, cwd=self.mirror)
        additions = deletions = 0
        paths: list[str] = []
        binary: list[str] = []
        for record in numstat.split("\0"):
            if not record:
                continue
            added, deleted, path = record.split("\t", 2)
            if added == "-" and deleted == "-":
                binary.append(path)
            additions += int(added) if added.isdigit() else 0
            deletions += int(deleted) if deleted.isdigit() else 0
            paths.append(path)
        binaries = await self._blob_sizes(since, head, set(binary))  # a deleted binary file adds nothing
        size = await _patch_bytes(self.mirror, since, head) + sum(binaries.values())
        unresolved = await self._with_markers(head, ws.conflicts) if ws.conflicts else ()
        previous = await self._mirror_sha(ws.branch)
        rewritten = bool(previous) and previous != head and not await self._is_ancestor(previous, head)
        await git("update-ref", f"refs/heads/{ws.branch}", head, cwd=self.mirror)
        return Changes(commits, additions, deletions, len(paths), tuple(sorted(paths)), (), head,
                       bytes_changed=size, binary_files=tuple(sorted(binaries)), rewritten=rewritten,
                       unresolved=unresolved, base_sha=since)

    async def _receive(self, ws: Workspace, ref: str) -> None:
        """Point the mirror's `ref` at the run's head, from what the run left in its scratch dir: the bundle of
        its new commits (fetched, every object checked), or only the head when it made nothing new (then the
        mirror must already have that commit). Both files are the agent's: a link or a bad bundle is refused."""
        bundle, head_file = ws.scratch / RESULT_BUNDLE, ws.scratch / RESULT_HEAD
        for path in (bundle, head_file):
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise WorkspaceError(f"run {ws.run_id}: {path.name} is not a plain file; refusing it")
        head = head_file.read_text(encoding="ascii", errors="replace").strip() if head_file.is_file() else ""
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head):
            raise WorkspaceError(f"run {ws.run_id}: the run left no result (no {RESULT_HEAD} for branch {ws.branch})")
        if bundle.is_file():
            try:
                await git("-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                          str(bundle), f"+refs/heads/{ws.branch}:{ref}", cwd=self.mirror)
            except GitError as exc:
                raise WorkspaceError(f"run {ws.run_id}: cannot collect branch {ws.branch} from its bundle: "
                                     f"{exc.stderr[-300:]}") from None
            if await git("rev-parse", ref, cwd=self.mirror) != head:
                raise WorkspaceError(f"run {ws.run_id}: the bundle's {ws.branch} is not the head the run reported")
            return
        if not await _git_ok(self.mirror, "cat-file", "-e", f"{head}^{{commit}}"):
            raise WorkspaceError(f"run {ws.run_id}: the run's head {head[:12]} came back without its commits")
        await git("update-ref", ref, head, cwd=self.mirror)

    async def _blob_sizes(self, since: str, head: str, paths: Collection[str]) -> dict[str, int]:
        """The sizes of the blobs those of `paths` still present at `head` have there."""
        if not paths:
            return {}
        raw = await git("diff", "--raw", "-z", "--no-renames", "--no-abbrev", since, head, cwd=self.mirror)
        fields = raw.split("\0")
        blobs: dict[str, str] = {}
        for meta, path in zip(fields[0::2], fields[1::2]):
            parts = meta.split()
            if path in paths and len(parts) >= 4 and parts[3] != _NULL_SHA:
                blobs[path] = parts[3]
        if not blobs:
            return {}
        sizes = await git("cat-file", "--batch-check=%(objectsize)", cwd=self.mirror,
                          input="".join(f"{sha}\n" for sha in blobs.values()).encode())
        return {path: int(size) for path, size in zip(blobs, sizes.split()) if size.isdigit()}

    async def _with_markers(self, head: str, paths: tuple[str, ...]) -> tuple[str, ...]:
        """Which of `paths` still hold a conflict marker line at `head`."""
        found = await git("--literal-pathspecs", "grep", "-I", "-l", "-z", "-E", "-e", "^(<<<<<<<|>>>>>>>)( |$)",
                          head, "--", *paths, cwd=self.mirror, check=False)
        prefix = f"{head}:"
        return tuple(sorted({name.removeprefix(prefix) for name in found.split("\0") if name}))

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


# The sandbox's last step: $FLEET_BRANCH as a bundle of what the clone's origin (the mirror) lacks, and its head,
# into $FLEET_RESULT_DIR. An empty bundle is refused by git: then the head alone says "nothing new".
RESULT_SCRIPT = ('if [ -n "$FLEET_RESULT_DIR" ]; then '
                 'b="refs/heads/$FLEET_BRANCH"; r="$FLEET_RESULT_DIR"; rm -f "$r/result.bundle" "$r/result.head"; '
                 'git rev-parse --verify -q "$b^{commit}" > "$r/result.head.tmp" 2>/dev/null '
                 '&& mv -f "$r/result.head.tmp" "$r/result.head"; '
                 'git bundle create "$r/result.bundle" "$b" --not --remotes >/dev/null 2>&1 || rm -f "$r/result.bundle"; '
                 'fi')


def commit_after(invocation: Invocation, message: str, author: tuple[str, str], *, branch: str = "",
                 result_dir: str = "") -> Invocation:
    """`invocation` followed, inside the same sandbox, by a commit of whatever the agent left uncommitted
    (some CLIs edit without committing), and, when `branch` and `result_dir` are given, by the run's result:
    `branch` as a git bundle (`result.bundle`, only the commits the clone's origin did not have) and its head
    (`result.head`) in `result_dir`, the scratch dir as the sandbox sees it. That is how the commits travel back
    from any runner. The agent's exit code is kept."""
    script = ('rc=0; "$@" || rc=$?; git add --all >/dev/null 2>&1 && '
              'git -c user.name="$FLEET_AUTHOR_NAME" -c user.email="$FLEET_AUTHOR_EMAIL" '
              'commit --quiet --no-verify -m "$FLEET_COMMIT_MESSAGE" >/dev/null 2>&1; '
              f'{RESULT_SCRIPT}; exit $rc')
    env = {**invocation.env, "FLEET_COMMIT_MESSAGE": message, "FLEET_AUTHOR_NAME": author[0],
           "FLEET_AUTHOR_EMAIL": author[1]}
    if branch and result_dir:
        env.update(FLEET_BRANCH=branch, FLEET_RESULT_DIR=result_dir)
    return dataclasses.replace(invocation, argv=("sh", "-c", script, "fleet-agent", *invocation.argv), env=env)


class CommittingEngine:
    """An engine whose runs end with `commit_after()`: the dev role's engine, so a run that edited without
    committing still yields commits, made inside its sandbox, and its branch comes back as a bundle."""

    def __init__(self, engine: Engine, message: str, author: tuple[str, str]) -> None:
        self.engine = engine
        self.name = engine.name
        self.message = message
        self.author = author

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        return commit_after(self.engine.invocation(task, workdir=workdir, scratch=scratch), self.message,
                            self.author, branch=task.branch or "", result_dir=scratch)

    def parser(self) -> OutputParser:
        return self.engine.parser()


def write_scratch_files(scratch: Path, files: dict[str, str]) -> None:
    """Write `files` (scratch-relative name -> content) into `scratch`; a name may not leave the dir."""
    base = scratch.resolve()
    for name, content in files.items():
        target = (base / name).resolve()
        if name.startswith("/") or not target.is_relative_to(base) or target == base:
            raise WorkspaceError(f"scratch file name {name!r} leaves the scratch dir")
        made = [p for p in reversed(target.parents) if p.is_relative_to(base) and p != base and not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        target.chmod(0o644)
        try:
            st = base.stat()
            for path in [*made, target]:  # the agent's uid owns the scratch dir, and what is made in it
                os.chown(path, st.st_uid, st.st_gid)
        except PermissionError:
            pass


@dataclass(frozen=True, slots=True)
class _Fetched:
    base: str
    base_sha: str
    branch_sha: str  # an existing branch's head as the run starts from it ("" for new work)


def _source_of(source: str | Path | GitSourceLike) -> tuple[str, dict[str, str]]:
    """(what git fetches, the environment it needs) for a path or a `GitSourceLike`."""
    if isinstance(source, (str, os.PathLike)):
        url, env = os.fspath(source), {}
    else:
        url, env = getattr(source, "url", None), getattr(source, "env", None) or {}
        if not isinstance(url, str) or not isinstance(env, Mapping):
            raise WorkspaceError(f"a source is a path or has `url` (str) and `env` (mapping), not {type(source).__name__}")
        env = {str(k): str(v) for k, v in env.items()}
    if not url or url.startswith("-"):
        raise WorkspaceError(f"source {_display(url)!r} is not a repository path or URL")
    if "://" not in url and os.path.exists(url):
        url = os.path.abspath(url)  # git runs in the mirror: a relative path would point elsewhere
    return url, env


def _display(url: str) -> str:
    """`url` fit for a message: user and password taken out of an URL."""
    return re.sub(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@", r"\1", url)


def _redact(text: str, env: Mapping[str, str]) -> str:
    """`text` with every value of `env` long enough to be a secret taken out."""
    for value in env.values():
        if len(value) >= 8:
            text = text.replace(value, "***")
    return _display(text)


async def _check_branch(run_id: str, name: str, what: str) -> None:
    if name.startswith("-") or not await _git_ok(Path(os.sep), "check-ref-format", f"refs/heads/{name}"):
        raise WorkspaceError(f"run {run_id}: {what} {name!r} is not a valid branch name")


async def _git_ok(cwd: Path, *args: str, env: dict[str, str] | None = None) -> bool:
    """Whether `git args` succeeds (its output is dropped)."""
    done = await anyio.run_process(["git", *args], cwd=str(cwd), env=git_env(env), check=False,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


async def _unmerged(repo: Path) -> tuple[str, ...]:
    """Paths of `repo`'s index left unmerged by a merge or rebase."""
    listed = await git("ls-files", "--unmerged", "-z", cwd=repo, env=_UPDATE_ENV)
    return tuple(sorted({record.split("\t", 1)[1] for record in listed.split("\0") if "\t" in record}))


async def _patch_bytes(mirror: Path, since: str, head: str) -> int:
    """Bytes of the lines `since..head` adds and removes in text files, read as a stream (a huge diff is
    counted, never held). Binary files have no lines here; they count by size elsewhere."""
    counter = _LineBytes()
    argv = ["git", "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "-U0", since, head]
    async with await anyio.open_process(argv, cwd=str(mirror), env=git_env(), stdin=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        async for chunk in process.stdout:
            counter.feed(chunk)
    if process.returncode != 0:
        raise WorkspaceError(f"cannot measure {since[:12]}..{head[:12]}: git diff failed ({process.returncode})")
    return counter.close()


class _LineBytes:
    """Counts the added and removed lines of a `git diff -U0` stream in bytes (each with its newline).
    A file's header runs from `diff --git` to its first `@@`; inside hunks every line starts with its marker,
    so a removed line that reads like a header is still counted."""

    _PEEK = len(b"diff --git ")

    def __init__(self) -> None:
        self.total = 0
        self._head = b""
        self._length = 0
        self._in_header = True

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if len(self._head) < self._PEEK:
                self._head += piece[:self._PEEK - len(self._head)]
            self._length += len(piece)
            if end < 0:
                return
            self._line_done()
            start = end + 1

    def close(self) -> int:
        if self._head or self._length:
            self._line_done()
        return self.total

    def _line_done(self) -> None:
        head = self._head
        if head.startswith(b"diff --git "):
            self._in_header = True
        elif head.startswith(b"@@"):
            self._in_header = False
        elif not self._in_header and head[:1] in (b"+", b"-"):
            self.total += self._length  # the marker's byte stands for the newline
        self._head, self._length = b"", 0


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
