"""The `Forge` protocol: where all work lives (issues, labels, comments, PRs, reviews).

There is deliberately no merge and no approve call here: the fleet can only comment on a PR, and only the
human merges. `judge_approval` decides whether the approval label was applied by an allowed approver.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from fleet_tui.model import (
    Actor,
    Approval,
    Comment,
    Issue,
    LabelEvent,
    PullRequest,
    RateLimit,
    Review,
    TextEdit,
)

Permission = Literal["admin", "maintain", "write", "triage", "read", "none"]
DIFF_LIMIT = 2_000_000  # bytes of a PR's diff the console is given at most


def cut_diff(text: str, limit: int) -> str:
    """`text`, or its first `limit` bytes up to a line end and a line saying the diff was truncated."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return text
    head = raw[:limit].decode("utf-8", errors="ignore")
    head = head[:head.rfind("\n") + 1] if "\n" in head else head
    return head + ("" if not head or head.endswith("\n") else "\n") + (
        f"… diff truncated: {len(raw):,} bytes in all, {limit:,} shown\n")
WRITE_PERMISSIONS: frozenset[str] = frozenset({"admin", "maintain", "write"})


def marker(kind: str, value: str) -> str:
    """The hidden idempotency marker the fleet puts in every comment, issue and PR body it writes."""
    return f"<!-- fleet:{kind}={value} -->"


class ForgeError(Exception):
    """A forge call failed in a way the operator should read (the message says what to do)."""


class NotFound(ForgeError):
    pass


class RateLimitedError(ForgeError):
    def __init__(self, message: str, until: datetime | None = None) -> None:
        super().__init__(message)
        self.until = until


@dataclass(frozen=True, slots=True)
class GitSource:
    """Where git fetches from and pushes to, and the extra environment a git command needs for it.

    `env` carries the credentials (on GitHub, an `http.<url>.extraHeader` through `GIT_CONFIG_COUNT` /
    `GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n`), so they never appear in a URL, an argument, a file or a log:
    pass it to the git process's environment only, never to an agent's. It is left out of `repr`.
    """

    url: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class ClaimLease:
    """One orchestrator's hold on an issue, as the forge stores it: who holds it and the version a
    compare-and-swap must name to renew it, take it over or drop it.

    `version` changes with every renewal and is never reused (GitHub: the lease commit's sha; the local forge: a
    fresh random token). `holder` and `run_id` are "" when the forge's list does not carry them (GitHub lists a
    claim's ref only; the lease commit says who holds it, read when it matters)."""

    issue: int
    version: str
    holder: str = ""
    run_id: str = ""


@runtime_checkable
class Forge(Protocol):
    kind: str  # "local" | "github"
    repo: str  # "owner/name" on GitHub; the repository's directory name locally

    async def __aenter__(self) -> Forge: ...
    async def __aexit__(self, *exc: object) -> None: ...

    # identities -----------------------------------------------------------------------------
    async def fleet_identity(self) -> Actor:
        """The login the fleet writes as (a bot, an App, or the operator's own token)."""
        ...

    async def operator_identity(self) -> Actor:
        """The login the approve key acts as."""
        ...

    # issues -----------------------------------------------------------------------------------
    async def list_issues(
        self, *, labels: Sequence[str] = (), state: Literal["open", "closed", "all"] = "open",
        since: datetime | None = None,
    ) -> list[Issue]:
        """Issues (never PRs) carrying all of `labels`, every page. Comments are not filled in."""
        ...

    async def get_issue(self, number: int) -> Issue:
        """One issue with its comments."""
        ...

    async def create_issue(self, title: str, body: str, labels: Sequence[str] = ()) -> Issue: ...
    async def close_issue(self, number: int) -> None: ...
    async def add_labels(self, number: int, labels: Sequence[str], *, as_operator: bool = False) -> None:
        """Add labels; `as_operator` acts with the operator's identity (only the approve key uses it)."""
        ...

    async def remove_label(self, number: int, label: str) -> None:
        """Remove a label; a label that is not there is not an error."""
        ...

    async def label_events(self, number: int) -> list[LabelEvent]:
        """Every labeled/unlabeled event of the issue, oldest first."""
        ...

    async def ensure_labels(self, names: Iterable[str]) -> list[str]:
        """Create the labels that do not exist yet; returns the names created."""
        ...

    async def missing_labels(self, names: Iterable[str]) -> list[str]: ...

    # comments -------------------------------------------------------------------------------
    async def find_comment(self, number: int, marker_text: str) -> Comment | None: ...
    async def post_comment(self, number: int, body: str, marker_text: str) -> Comment:
        """Post `body` with `marker_text` appended, unless a comment with that marker already exists
        (then that one is returned): a retried call never posts twice."""
        ...

    async def edit_issue(self, number: int, *, title: str | None = None, body: str | None = None,
                         as_user: str | None = None) -> None:
        """Change an issue's title and/or body (None: unchanged). The edit is recorded with its author and
        time, so `text_edits` reports it. `as_user`: who edits (the local forge records that login; GitHub
        can only act as the fleet, or as the operator when `as_user` is the operator's login)."""
        ...

    async def text_edits(self, number: int) -> list[TextEdit]:
        """Every edit of the issue's title or body since it was created, oldest first, with who made it and
        when (the original text is no edit). Raises `ForgeError` when the forge cannot tell."""
        ...

    # code ---------------------------------------------------------------------------------------
    async def git_source(self) -> GitSource:
        """The URL git fetches bases from and pushes branches to, with the environment that authenticates it."""
        ...

    async def default_branch(self) -> str:
        """The repository's default branch (GitHub's `default_branch`; locally, the branch checked out)."""
        ...

    async def branch_exists(self, name: str) -> bool: ...

    async def check_push_access(self) -> None:
        """Prove the fleet's credentials reach the repository with git (without pushing anything); raise
        `ForgeError` whose message says what to fix (token scope, push URL, network)."""
        ...

    # pull requests --------------------------------------------------------------------------
    async def push_branch(self, source: Path, branch: str, *, force: bool = False,
                          expected: str | None = None) -> str:
        """Push `branch` from the workspace repository at `source` to the forge; returns the head sha.
        Done with the forge's credentials, which never enter an agent's environment. `force`: the branch
        was rebased; replace the forge's copy only if it still is at `expected` (the head the caller last saw;
        "" for no branch; None: the head read just before the push), like `--force-with-lease`; otherwise
        `ForgeError` ("moved")."""
        ...

    async def find_pull(self, head: str) -> PullRequest | None:
        """The open PR whose head is `head`, if any."""
        ...

    async def open_pull(self, *, title: str, body: str, head: str, base: str) -> PullRequest:
        """Open a PR for `head`, or return the open one that already exists for it. A base or head branch
        that does not exist raises `ForgeError` naming it."""
        ...

    async def list_pulls(self, *, details_for: Collection[str] | None = None) -> list[PullRequest]:
        """Every open PR. Those whose head branch is in `details_for` (all when None) come with size, files,
        mergeable state, CI state and summary, reviews and review comments; the others carry only what the
        forge's list gives (number, title, body, head, base, head sha, author, draft, updated_at)."""
        ...

    async def get_pull(self, number: int) -> PullRequest: ...
    async def pull_diff(self, number: int, *, limit: int = DIFF_LIMIT) -> str:
        """The PR's unified diff against its base (untrusted text), cut after `limit` bytes with a last line
        saying so."""
        ...

    async def post_review(self, number: int, body: str, commit_id: str) -> Review:
        """A review with event COMMENT. No other event exists in this protocol."""
        ...

    # claims across orchestrators ----------------------------------------------------------------
    # The lock that keeps two orchestrators off one issue: an atomic compare-and-swap the forge itself
    # provides (GitHub: creating a git ref; locally: a SQLite transaction). The in-progress label and the marker
    # comment stay the human-visible record; they are never the lock.

    async def list_claims(self) -> dict[int, ClaimLease]:
        """Every claim on the forge, by issue, in one read."""
        ...

    async def get_claim(self, issue: int) -> ClaimLease | None:
        """The claim of `issue` with its holder and run, or None when there is none."""
        ...

    async def acquire_claim(self, issue: int, holder: str, run_id: str, *, lease_s: float) -> ClaimLease | None:
        """Create the claim of `issue` for `holder` if none exists (atomic); None when one already does."""
        ...

    async def replace_claim(self, seen: ClaimLease, holder: str, run_id: str, *,
                            lease_s: float) -> ClaimLease | None:
        """Swap the claim from version `seen.version` to a fresh version held by `holder`, only if it still is
        at that version (atomic). Renewal is this with the holder's own lease; taking an expired lease over is
        this with the lease seen expired. None when the claim moved or is gone: someone else holds it."""
        ...

    async def release_claim(self, lease: ClaimLease) -> None:
        """Drop the claim if it still is at `lease.version`; a claim that moved or is gone is left alone."""
        ...

    # access and limits ----------------------------------------------------------------------
    async def permission(self, login: str) -> Permission: ...

    @property
    def rate_limit(self) -> RateLimit: ...


def standing_label_event(events: Sequence[LabelEvent], label: str) -> LabelEvent | None:
    """The latest `labeled` event for `label` that no later `unlabeled` event undoes."""
    standing: LabelEvent | None = None
    for event in events:
        if event.label != label:
            continue
        standing = event if event.kind == "labeled" else None
    return standing


def judge_approval(
    issue: int,
    event: LabelEvent,
    *,
    approvers: Sequence[str],
    fleet_login: str | None,
    fleet_is_separate: bool,
    permission: str | None = None,
    allow_write_permission: bool = False,
) -> Approval:
    """Whether an approval label event counts.

    It counts only if made by a User (not a bot, not via an app), who is a listed approver (or, when
    `allow_write_permission`, holds write/maintain/admin), and who is not the fleet's own identity when the
    fleet writes as a separate bot or App.
    """
    actor = event.actor

    def verdict(ok: bool, reason: str = "") -> Approval:
        return Approval(issue=issue, label=event.label, event=event, verified=ok, reason=reason)

    if actor.type != "User":
        return verdict(False, f"labeled by {actor.login} ({actor.type}), not a user")
    if actor.via_app:
        return verdict(False, f"labeled by {actor.login} via the app {actor.via_app}")
    if fleet_is_separate and fleet_login and actor.login.lower() == fleet_login.lower():
        return verdict(False, f"labeled by the fleet's own identity {actor.login}")
    if actor.login.lower() in {a.lower() for a in approvers}:
        return verdict(True)
    if allow_write_permission and permission in WRITE_PERMISSIONS:
        return verdict(True)
    return verdict(False, f"labeled by {actor.login}, who is not an approver")
