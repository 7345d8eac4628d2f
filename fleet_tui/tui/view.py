"""Pure view model of the console: what each pane, the header and the inbox show for a snapshot.

No widgets here: functions turn domain objects into rows of `rich.text.Text` cells (every string from the
forge or an agent passed through `fleet_tui.untrusted` first) so they can be tested without an app.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rich.style import Style
from rich.text import Text

from fleet_tui.config import FleetConfig
from fleet_tui.model import (
    AgentRun,
    Approval,
    CIState,
    Issue,
    NeedsHuman,
    PullRequest,
    PullStatus,
    Review,
    RunState,
    SnapshotPublished,
    Verdict,
)
from fleet_tui.untrusted import line_for_terminal

Clock = Callable[[], datetime]

# The verdict marker QA puts in its review body, and the finding bullets that follow a `changes` verdict.
# Review bodies come from strangers: blanks stay within a line and quantifiers are possessive, so each line
# is scanned once (`^\s*...` with MULTILINE rescans runs of blank lines and spaces: quadratic).
_VERDICT_MARKER_RE = re.compile(r"<!-- fleet:verdict=(pass|changes) round=(\d+) -->")
_VERDICT_LINE_RE = re.compile(r"^[ \t]*+\**+[ \t]*+VERDICT[ \t]*+\**+[ \t]*+:[ \t]*+\**+[ \t]*+(pass|changes)\b",
                              re.IGNORECASE | re.MULTILINE)
_FINDING_RE = re.compile(r"^[ \t]*+(?:[-*]|\d++[.)])[ \t]++\S", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Styles:
    """Cell styles taken from the active theme, so both themes read well."""

    ok: Style = field(default_factory=lambda: Style(color="green"))
    warn: Style = field(default_factory=lambda: Style(color="yellow"))
    bad: Style = field(default_factory=lambda: Style(color="red"))
    accent: Style = field(default_factory=lambda: Style(color="cyan"))
    dim: Style = field(default_factory=lambda: Style(dim=True))
    bold: Style = field(default_factory=lambda: Style(bold=True))


def clean(text: str | None, limit: int = 400) -> str:
    """One display line of untrusted text."""
    return line_for_terminal(text or "", limit)


def cell(text: str | None, style: Style | str = "", limit: int = 400) -> Text:
    """A table cell: sanitized plain text, never markup."""
    return Text(clean(text, limit), style=style, no_wrap=True, overflow="ellipsis")


def safe_url(url: str | None) -> str:
    """An http(s) URL fit for a link, or empty."""
    value = clean(url, 2000).strip()
    return value if re.match(r"https?://[^\s]+$", value) else ""


def short_duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d"


def short_tokens(tokens: int) -> str:
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}M"
    if tokens >= 10_000:
        return f"{tokens // 1000}k"
    if tokens >= 1000:
        return f"{tokens / 1000:.1f}k"
    return str(tokens)


# --- QA reading of a PR ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QaState:
    verdict: Verdict | None
    round: int
    findings: int


def review_verdict(review: Review) -> tuple[Verdict | None, int | None]:
    match = _VERDICT_MARKER_RE.search(review.body)
    if match:
        return Verdict(match.group(1)), int(match.group(2))
    lines = list(_VERDICT_LINE_RE.finditer(review.body))
    if lines:
        return Verdict(lines[-1].group(1).lower()), None
    return None, None


def qa_state(pull: PullRequest, runs: tuple[AgentRun, ...] | list[AgentRun] = (),
             status: PullStatus | None = None) -> QaState:
    """The QA verdict on the PR's current head as the fleet knows it (its own review, from its journal: a
    review by anyone else never counts, whatever marker it carries), the round, and the finding count."""
    verdict = Verdict(status.verdict) if status is not None and status.verdict else None
    round_no = status.round if status is not None else 0
    findings = 0
    if verdict is Verdict.CHANGES:
        for review in pull.reviews:
            found, marked = review_verdict(review)
            if found is Verdict.CHANGES and marked == round_no and review.commit_id == pull.head_sha:
                findings = len(_FINDING_RE.findall(review.body))
    run_round = max((run.qa_round for run in runs if run.pr == pull.number), default=0)
    return QaState(verdict, max(round_no, run_round), findings)


def is_ready(pull: PullRequest, status: PullStatus | None) -> bool:
    """A PR the fleet says is ready for the human merge: QA passed its head, the forge says it is mergeable
    and clean, CI is not failing or pending."""
    return pull.state == "open" and status is not None and status.ready


# --- rows -----------------------------------------------------------------------------------------

Row = tuple[str, tuple[Text, ...]]


def proposal_rows(proposals: tuple[Issue, ...], approvals: tuple[Approval, ...], styles: Styles) -> list[Row]:
    by_issue = {approval.issue: approval for approval in approvals}
    rows: list[Row] = []
    for issue in proposals:
        approval = by_issue.get(issue.number)
        if approval is None:
            state = cell("awaiting you", styles.dim)
        elif approval.verified:
            state = cell("✓ approved", styles.ok)
        else:
            state = cell("⚠ unverified", styles.warn)
        rows.append((f"issue-{issue.number}", (
            cell(f"#{issue.number}", styles.accent),
            cell(issue.title, limit=200),
            state,
        )))
    return rows


_STATE_STYLE = {
    RunState.QUEUED: "dim", RunState.STARTING: "accent", RunState.RUNNING: "accent",
    RunState.SUCCEEDED: "ok", RunState.FAILED: "bad", RunState.TIMED_OUT: "bad", RunState.STOPPED: "warn",
    RunState.OVER_BUDGET: "bad", RunState.LOST: "warn",
}


def run_target(run: AgentRun) -> str:
    if run.pr is not None:
        return f"PR #{run.pr}"
    if run.issue is not None:
        return f"#{run.issue}"
    return "—"


def agent_order(runs: list[AgentRun]) -> list[AgentRun]:
    """Live runs first, newest first (a queued run, not started yet, is the newest); then finished runs, the
    most recently ended first."""
    live = [run for run in runs if run.state.live]
    done = [run for run in runs if not run.state.live]
    live.sort(key=lambda run: (run.started_at is not None, -(run.started_at.timestamp() if run.started_at else 0)))
    done.sort(key=lambda run: -max((at.timestamp() for at in (run.ended_at, run.started_at) if at), default=0))
    return live + done


def agent_last_line(run: AgentRun, last: str) -> str:
    """What the Last line column shows of `run`: its host first (where the eye looks for what a run is doing),
    and, while the host does not answer, that instead of a line the run wrote long ago."""
    if run.host_unreachable and run.state.live:
        last = f"host {run.host or '?'} does not answer; the run is kept"
    return f"@{run.host} · {last}" if run.host else last


def agent_rows(runs: list[AgentRun], last_lines: dict[str, str], now: datetime, styles: Styles) -> list[Row]:
    rows: list[Row] = []
    for run in agent_order(runs):
        end = run.ended_at or now
        elapsed = short_duration(end - run.started_at) if run.started_at else ""
        style = getattr(styles, _STATE_STYLE.get(run.state, "dim"))
        state = run.state.value.replace("_", " ")
        if run.host_unreachable and run.state.live:
            state, style = "unreachable", styles.warn
        last = agent_last_line(run, last_lines.get(run.run_id, run.last_line))
        rows.append((run.run_id, (
            cell(run.role.value.upper(), styles.bold),
            cell(run_target(run), styles.accent),
            cell(f"r{run.qa_round}" if run.qa_round else "—", styles.dim if not run.qa_round else ""),
            cell(state, style),
            cell(elapsed, styles.dim),
            cell(short_tokens(run.usage.tokens)),
            cell(f"${run.usage.cost_usd:.2f}"),
            cell(last, styles.dim, limit=300),
        )))
    return rows


def qa_rows(pulls: list[PullRequest], runs: list[AgentRun], max_rounds: int, styles: Styles,
            statuses: dict[int, PullStatus] | None = None) -> list[Row]:
    rows: list[Row] = []
    for pull in pulls:
        status = (statuses or {}).get(pull.number)
        qa = qa_state(pull, runs, status)
        if qa.verdict is Verdict.CHANGES:
            verdict = cell("changes", styles.warn)
        elif qa.verdict is Verdict.PASS:  # passed, but not ready: say what it waits for
            why = status.why if status is not None and status.why else ""
            verdict = cell(f"pass · {why}" if why else "pass", styles.warn if why else styles.ok, limit=60)
        else:
            verdict = cell("reviewing", styles.dim)
        round_style = styles.bad if qa.round >= max_rounds else ""
        rows.append((f"pr-{pull.number}", (
            cell(f"#{pull.number}", styles.accent),
            cell(pull.title, limit=200),
            cell(f"{qa.round}/{max_rounds}", round_style),
            verdict,
            cell(str(qa.findings) if qa.findings else "—", styles.warn if qa.findings else styles.dim),
        )))
    return rows


_CI_STYLE = {CIState.SUCCESS: "ok", CIState.FAILURE: "bad", CIState.PENDING: "warn", CIState.NONE: "dim"}


def ready_rows(pulls: list[PullRequest], max_pr_lines: int, styles: Styles) -> list[Row]:
    rows: list[Row] = []
    for pull in pulls:
        ci = cell(pull.ci.value if pull.ci is not CIState.NONE else "no CI", getattr(styles, _CI_STYLE[pull.ci]))
        size_style = styles.warn if pull.lines_changed > max_pr_lines else ""
        size = cell(f"+{pull.additions} −{pull.deletions} {pull.changed_files}f", size_style)
        if pull.mergeable is None:
            mergeable = cell("checking…", styles.dim)
        elif pull.mergeable:
            mergeable = cell(pull.mergeable_state if pull.mergeable_state not in ("", "unknown") else "clean",
                             styles.ok)
        else:
            mergeable = cell(pull.mergeable_state or "conflict", styles.bad)
        rows.append((f"pr-{pull.number}", (
            cell(f"#{pull.number}", styles.accent),
            cell(pull.title, limit=200),
            ci,
            size,
            mergeable,
        )))
    return rows


def inbox_key(item: NeedsHuman) -> str:
    return f"nh-{item.issue}-{item.pr}-{clean(item.reason, 120)}"


def inbox_rows(items: list[NeedsHuman], now: datetime, styles: Styles) -> list[Row]:
    rows: list[Row] = []
    for item in items:
        target = f"PR #{item.pr}" if item.pr is not None else f"#{item.issue}" if item.issue is not None else "—"
        rows.append((inbox_key(item), (
            cell(target, styles.accent),
            cell(item.reason, limit=300),
            cell(short_duration(now - item.at) + " ago", styles.dim),
        )))
    return rows


# --- header ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopStatus:
    """What the header says about the fleet loop: `starting`, `running`, `stopped` (with why, and when the
    fleet restarts it by itself), or `unconfigured` (nothing can run until set-up is done)."""

    state: str = "starting"
    reason: str = ""
    retry_at: datetime | None = None


@dataclass(slots=True)
class HeaderState:
    repo: str = ""
    forge_kind: str = ""
    polled_at: datetime | None = None
    snapshot: SnapshotPublished | None = None
    rate_limited_until: datetime | None = None
    needs_human: int = 0
    paused: bool = False
    loop: LoopStatus = field(default_factory=LoopStatus)
    extra: dict[str, str] = field(default_factory=dict)


def header_text(state: HeaderState, config: FleetConfig, now: datetime, styles: Styles, *,
                width: int | None = None) -> Text:
    """The header line. Within `width` cells the least needed parts go first (the name, the forge, the rate,
    then the poll age), so the loop state and the needs-human count always show."""
    parts: list[tuple[int, Text]] = []  # (priority: higher stays longer, part)
    parts.append((0, Text("fleet-tui ", style=styles.bold)))
    repo = Text(clean(state.repo, 80), style=styles.accent)
    parts.append((6, repo))
    parts.append((1, Text(f"({clean(state.forge_kind, 20)})", style=styles.dim)))
    if state.loop.state == "unconfigured":
        parts.append((5, Text("no config: see the set-up screen (fleet-tui init)", style=styles.warn)))
    elif state.polled_at is None:
        parts.append((3, Text("waiting for the first poll", style=styles.dim)))
    else:
        parts.append((3, Text(f"polled {short_duration(now - state.polled_at)} ago")))
    snap = state.snapshot
    if snap is not None:
        rate = snap.rate
        if rate.remaining is not None:
            low = rate.limit and rate.remaining < rate.limit * 0.1
            parts.append((5 if low else 2, Text(f"rate {rate.remaining:,}" + (f"/{rate.limit:,}" if rate.limit else ""),
                                                style=styles.warn if low else "")))
        budget = config.policy.budget_day_usd
        spent = snap.spend_today.cost_usd
        over = budget and spent >= budget
        parts.append((7 if over else 4, Text(f"spend ${spent:.2f}" + (f" / ${budget:.2f}" if budget else "") + " today",
                                             style=styles.bad if over else "")))
    limited = state.rate_limited_until
    if limited is not None and limited > now:
        parts.append((7, Text(f"rate-limited {short_duration(limited - now)}", style=styles.warn)))
    parts.append((9, loop_text(state.loop, state.paused, styles)))
    for note in state.extra.values():
        parts.append((5, Text(clean(note, 40), style=styles.accent)))
    parts.append((10, Text(f"needs-human {state.needs_human}",
                           style=styles.bad if state.needs_human else styles.dim)))

    def joined(chosen: list[tuple[int, Text]]) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for index, (_, part) in enumerate(chosen):
            if part.plain.startswith("("):
                text.append(" ")
            elif index and not chosen[index - 1][1].plain.endswith(" "):
                text.append(" · ", style=styles.dim)
            text.append_text(part)
        return text

    text = joined(parts)
    if width is not None:
        while text.cell_len > width and len(parts) > 2:
            lowest = min(range(len(parts)), key=lambda index: (parts[index][0], -index))
            if parts[lowest][0] >= 9:
                break
            del parts[lowest]
            text = joined(parts)
        if text.cell_len > width:  # only the loop state and the count are left: keep the count, cut the state
            last = parts[-1][1]
            head = joined(parts[:-1])
            head.truncate(max(0, width - last.cell_len - 3), overflow="ellipsis")
            text = joined([(0, head), (0, last)])
    return text


def loop_text(loop: LoopStatus, paused: bool, styles: Styles) -> Text:
    """The header's word on the loop: "▶ running" only while it runs."""
    if loop.state == "running":
        return Text("⏸ paused", style=styles.warn) if paused else Text("▶ running", style=styles.ok)
    if loop.state == "starting":
        return Text("… starting", style=styles.dim)
    if loop.state == "unconfigured":
        return Text("■ not set up", style=styles.warn)
    out = Text("■ stopped", style=styles.bad)
    if loop.reason:
        out.append(f": {clean(loop.reason, 70)}", style=styles.bad)
    if loop.retry_at is not None:
        out.append(f" · restarting at {loop.retry_at.astimezone().strftime('%H:%M:%S')}", style=styles.warn)
    return out


# --- first run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetupItem:
    """One thing a first run needs: whether it is there, what was found, and the command that provides it."""

    name: str
    status: str  # ok | missing | warn | checking
    detail: str = ""
    command: str = ""


SetupProbe = Callable[[], list[SetupItem]]

_RUN = " " * 14 + "run  "  # a command lines up under the item's detail
_SETUP_MARKS = {"ok": ("✓", "ok"), "missing": ("✗", "bad"), "warn": ("!", "warn"), "checking": ("…", "dim")}


def setup_text(items: list[SetupItem], styles: Styles) -> Text:
    """The setup screen's body: what is missing, and the exact commands, in the order to run them."""
    out = Text()
    out.append("fleet-tui is not set up here yet", style=styles.bold)
    out.append("\nNo fleet can run until these are in place; nothing has been started.\n\n")
    for item in items:
        mark, style = _SETUP_MARKS.get(item.status, ("?", "dim"))
        out.append(f" {mark} ", style=getattr(styles, style))
        out.append(f"{clean(item.name, 20):<16}", style=styles.bold)
        out.append(clean(item.detail, 200) or "—", style=styles.dim if item.status == "ok" else "")
        if item.command and item.status != "ok":
            out.append("\n" + _RUN, style=styles.dim)
            out.append(clean(item.command, 200), style=styles.accent)
        out.append("\n")
    out.append("\nThen check everything and start the console again:\n", style=styles.bold)
    out.append(_RUN, style=styles.dim)
    out.append("fleet-tui check", style=styles.accent)
    out.append("\n" + _RUN, style=styles.dim)
    out.append("fleet-tui", style=styles.accent)
    out.append("\n\nTo look around first, ", style=styles.dim)
    out.append("fleet-tui --demo", style=styles.accent)
    out.append(" runs a fleet on a sample project (no Docker, no API key).\n", style=styles.dim)
    return out
