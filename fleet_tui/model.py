"""Domain types shared by every layer: issues, pull requests, reviews, agent runs, usage, events.

Frozen, typed, no I/O. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


class Role(enum.StrEnum):
    PM = "pm"
    DEV = "dev"
    QA = "qa"


class RunState(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"
    OVER_BUDGET = "over_budget"
    LOST = "lost"

    @property
    def live(self) -> bool:
        return self in (RunState.QUEUED, RunState.STARTING, RunState.RUNNING)

    @property
    def finished(self) -> bool:
        return not self.live


class CIState(enum.StrEnum):
    """Combined CI state of a PR head: statuses and check runs together.

    NONE means no status and no check run exists at all, which is not PENDING.
    """

    NONE = "none"
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"


class Verdict(enum.StrEnum):
    PASS = "pass"
    CHANGES = "changes"


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something on the forge."""

    login: str
    type: str = "User"  # "User", "Bot", "Organization"
    via_app: str | None = None  # slug of the app a label event was performed via, if any


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """One `labeled` / `unlabeled` event of an issue."""

    event_id: str
    kind: Literal["labeled", "unlabeled"]
    label: str
    actor: Actor
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TextEdit:
    """An edit of an issue's (or PR's) title or body after it was created: who made it and when."""

    field: Literal["title", "body"]
    at: datetime
    actor: Actor


@dataclass(frozen=True, slots=True)
class Comment:
    id: str
    author: Actor
    body: str
    created_at: datetime
    html_url: str = ""


@dataclass(frozen=True, slots=True)
class Issue:
    number: int
    title: str
    body: str
    state: Literal["open", "closed"] = "open"
    labels: tuple[str, ...] = ()
    author: Actor = Actor("unknown")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    html_url: str = ""
    comments: tuple[Comment, ...] = ()

    def has_label(self, name: str) -> bool:
        return name in self.labels


@dataclass(frozen=True, slots=True)
class Approval:
    """The latest standing `labeled` event for the approval label, judged against the approvers."""

    issue: int
    label: str
    event: LabelEvent
    verified: bool
    reason: str = ""  # why it is not verified; empty when verified


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    author: Actor
    body: str
    state: str  # GitHub's review state: COMMENTED (the fleet only ever posts COMMENT reviews)
    commit_id: str
    submitted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReviewComment:
    id: str
    author: Actor
    body: str
    path: str
    line: int | None = None
    commit_id: str = ""  # the head the comment was made on
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PullRequest:
    number: int
    title: str
    body: str
    head: str  # branch name
    base: str
    head_sha: str
    html_url: str
    state: Literal["open", "closed", "merged"] = "open"
    author: Actor = Actor("unknown")
    additions: int = 0
    deletions: int = 0
    changed_files: int = 0
    files: tuple[str, ...] = ()
    mergeable: bool | None = None  # None while the forge is still computing it
    mergeable_state: str = "unknown"
    ci: CIState = CIState.NONE
    reviews: tuple[Review, ...] = ()
    review_comments: tuple[ReviewComment, ...] = ()
    draft: bool = False
    updated_at: datetime | None = None
    ci_summary: str = ""  # for the console: "2/3 checks passed, 1 pending: build"
    head_repo: str = ""  # where the head branch lives ("owner/name"); another repository than the forge's: a fork

    @property
    def lines_changed(self) -> int:
        return self.additions + self.deletions


@dataclass(frozen=True, slots=True)
class RateLimit:
    remaining: int | None = None
    limit: int | None = None
    reset_at: datetime | None = None
    paused_until: datetime | None = None  # set while the request queue waits out a limit
    not_modified_share: float = 0.0  # share of polls answered 304


@dataclass(frozen=True, slots=True)
class AgentRun:
    run_id: str
    role: Role
    issue: int | None
    state: RunState
    pr: int | None = None
    branch: str = ""
    attempt: int = 1
    qa_round: int = 0
    engine: str = ""
    runner: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    usage: Usage = Usage()
    reason: str = ""  # why it ended the way it did
    last_line: str = ""
    host: str = ""  # the Docker host of the pool it runs on ("" when the runner has one place to run)
    host_unreachable: bool = False  # live, but its host does not answer: kept, followed again when it does


# --- events the console (and --headless) see -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class SnapshotPublished(Event):
    """A fresh view of the fleet after a loop tick."""

    proposals: tuple[Issue, ...] = ()
    approvals: tuple[Approval, ...] = ()
    runs: tuple[AgentRun, ...] = ()
    pulls: tuple[PullRequest, ...] = ()
    needs_human: tuple[NeedsHuman, ...] = ()
    rate: RateLimit = RateLimit()
    spend_today: Usage = Usage()
    paused: bool = False
    pull_status: tuple[PullStatus, ...] = ()  # the fleet's view of each of its PRs
    budget_stop: str = ""  # why dispatch is paused by a budget (empty when it is not)


@dataclass(frozen=True, slots=True)
class PullStatus:
    """What the fleet knows of one of its PRs: the QA verdict on its current head (only the fleet's own review
    counts) and whether it is ready for the human to merge, or why not."""

    pr: int
    issue: int | None = None
    verdict: str = ""  # "pass" | "changes" on the current head; "" while none
    round: int = 0
    ready: bool = False
    why: str = ""  # why not ready: "QA pending", "conflicts with main", "CI failing: build", ...


@dataclass(frozen=True, slots=True)
class RunLogLines(Event):
    run_id: str = ""
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunChanged(Event):
    run: AgentRun | None = None


@dataclass(frozen=True, slots=True)
class NeedsHuman(Event):
    issue: int | None = None
    pr: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Notice(Event):
    """Something the operator should read: an error, a rate limit, a budget stop."""

    level: Literal["info", "warning", "error"] = "info"
    message: str = ""
    bell: bool = False


@dataclass(frozen=True, slots=True)
class LoopState(Event):
    """Whether the fleet loop is running. `stopped` carries the reason; `retry_at` is set when the fleet
    restarts the loop by itself (a transient cause: the Docker engine or the network), else None."""

    state: Literal["starting", "running", "stopped"] = "running"
    reason: str = ""
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RateLimited(Event):
    until: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Spend:
    """Spend accumulated over a window (run, issue, day)."""

    usage: Usage = Usage()
    runs: int = 0
    extra: dict[str, float] = field(default_factory=dict)
