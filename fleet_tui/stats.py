"""The numbers that matter to an operator, read from the journal: spend per hour and per day, runs and merged
PRs per day, how often QA passes a PR on its first review, how long approve -> PR and PR -> merge take, and
what one merged PR costs per engine and per role. Pure reads; no forge, no clock of its own.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_tui.model import RunState, Verdict

HOURS = 24
DAYS = 14


@dataclass(frozen=True, slots=True)
class Latency:
    """Median and 90th percentile in seconds over `n` samples (None without samples)."""

    median_s: float | None = None
    p90_s: float | None = None
    n: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    now: datetime
    spend_hourly: tuple[float, ...] = ()  # USD in each of the last 24 hours, oldest first
    spend_daily: tuple[float, ...] = ()  # USD in each of the last 14 days (UTC), oldest first; today last
    runs_daily: tuple[int, ...] = ()  # runs started per day
    merged_daily: tuple[int, ...] = ()  # fleet PRs merged per day
    first_review_pass: tuple[int, int] = (0, 0)  # (passed on QA's first review, PRs with a first review)
    approve_to_pr: Latency = Latency()
    pr_to_merge: Latency = Latency()
    merged: int = 0  # fleet PRs merged in the window
    cost_per_merged_by_engine: dict[str, float] = field(default_factory=dict)
    cost_per_merged_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def spend_today(self) -> float:
        return self.spend_daily[-1] if self.spend_daily else 0.0

    @property
    def first_review_pass_rate(self) -> float | None:
        passed, reviewed = self.first_review_pass
        return passed / reviewed if reviewed else None


def latency(samples: list[float]) -> Latency:
    if not samples:
        return Latency()
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return Latency(statistics.median(ordered), p90, len(ordered))


def compute(journal: Any, now: datetime, *, days: int = DAYS, hours: int = HOURS) -> Stats:
    """The figures of the last `days` days (spend per hour over the last `hours` hours)."""
    now = now.astimezone(UTC)
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    first_day = today - timedelta(days=days - 1)
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    since = min(first_day, first_hour)

    hourly = [0.0] * hours
    daily = [0.0] * days
    for at, _, cost, _ in journal.usage_since(since):
        hour = int((at - first_hour).total_seconds() // 3600)
        if 0 <= hour < hours:
            hourly[hour] += cost
        day = (at.astimezone(UTC).date() - first_day.date()).days
        if 0 <= day < days:
            daily[day] += cost

    runs = journal.runs()
    runs_daily = [0] * days
    for run in runs:
        if run.started_at is not None:
            day = (run.started_at.astimezone(UTC).date() - first_day.date()).days
            if 0 <= day < days:
                runs_daily[day] += 1

    events = journal.events_since(first_day, ("approve", "pr_opened", "merged"))
    approved_at: dict[int, datetime] = {}
    opened: dict[int, tuple[int, datetime]] = {}  # pr -> (issue, when)
    merged: dict[int, tuple[int, datetime]] = {}
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if event.kind == "approve" and isinstance(data.get("issue"), int):
            approved_at.setdefault(data["issue"], event.at)
        elif event.kind == "pr_opened" and isinstance(data.get("pr"), int):
            opened.setdefault(data["pr"], (int(data.get("issue") or 0), event.at))
        elif event.kind == "merged" and isinstance(data.get("pr"), int):
            merged.setdefault(data["pr"], (int(data.get("issue") or 0), event.at))

    merged_daily = [0] * days
    for _, at in merged.values():
        day = (at.astimezone(UTC).date() - first_day.date()).days
        if 0 <= day < days:
            merged_daily[day] += 1
    to_pr = [(at - approved_at[issue]).total_seconds() for issue, at in opened.values() if issue in approved_at]
    to_merge = [(at - opened[pr][1]).total_seconds() for pr, (_, at) in merged.items() if pr in opened]

    passed = reviewed = 0
    for pr in opened:
        first = [r for r in journal.qa_rounds(pr) if r.round == 1 and r.verdict is not None]
        if first:
            reviewed += 1
            passed += first[0].verdict == Verdict.PASS

    merged_issues = {issue for issue, _ in merged.values() if issue}
    by_engine: dict[str, float] = defaultdict(float)
    by_role: dict[str, float] = defaultdict(float)
    for run in runs:
        if run.issue in merged_issues and run.state != RunState.QUEUED:
            by_engine[run.engine or "?"] += run.usage.cost_usd
            by_role[run.role.value] += run.usage.cost_usd
    count = len(merged_issues)
    per_engine = {k: v / count for k, v in sorted(by_engine.items())} if count else {}
    per_role = {k: v / count for k, v in sorted(by_role.items())} if count else {}

    return Stats(now=now, spend_hourly=tuple(hourly), spend_daily=tuple(daily), runs_daily=tuple(runs_daily),
                 merged_daily=tuple(merged_daily), first_review_pass=(passed, reviewed),
                 approve_to_pr=latency(to_pr), pr_to_merge=latency(to_merge), merged=len(merged),
                 cost_per_merged_by_engine=per_engine, cost_per_merged_by_role=per_role)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: tuple[float, ...] | list[float]) -> str:
    """One block character per value, scaled to the largest (all lowest when everything is zero)."""
    top = max(values, default=0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def report(stats: Stats, budget_day_usd: float = 0.0) -> list[str]:
    """The stats as plain text lines (the console's stats view and `fleet-tui stats`)."""
    rate = stats.first_review_pass_rate
    passed, reviewed = stats.first_review_pass
    budget = f" of ${budget_day_usd:.2f}" if budget_day_usd else ""
    lines = [
        f"spend today       ${stats.spend_today:.2f}{budget}",
        f"spend per hour    {sparkline(stats.spend_hourly)}  last {len(stats.spend_hourly)} h, "
        f"peak ${max(stats.spend_hourly, default=0):.2f}",
        f"spend per day     {sparkline(stats.spend_daily)}  last {len(stats.spend_daily)} days, "
        f"${sum(stats.spend_daily):.2f} in all",
        f"runs per day      {sparkline(stats.runs_daily)}  {sum(stats.runs_daily)} runs",
        f"merged per day    {sparkline(stats.merged_daily)}  {stats.merged} fleet PRs merged",
        "QA first review   " + (f"{rate:.0%} passed ({passed} of {reviewed})" if rate is not None
                                 else "no reviews yet"),
        f"approve → PR      median {duration(stats.approve_to_pr.median_s)}, "
        f"p90 {duration(stats.approve_to_pr.p90_s)} ({stats.approve_to_pr.n})",
        f"PR → merge        median {duration(stats.pr_to_merge.median_s)}, "
        f"p90 {duration(stats.pr_to_merge.p90_s)} ({stats.pr_to_merge.n})",
    ]
    if stats.cost_per_merged_by_engine:
        lines.append("cost per merged PR, by engine: " + ", ".join(
            f"{name} ${cost:.2f}" for name, cost in stats.cost_per_merged_by_engine.items()))
        lines.append("cost per merged PR, by role:   " + ", ".join(
            f"{name} ${cost:.2f}" for name, cost in stats.cost_per_merged_by_role.items()))
    else:
        lines.append("cost per merged PR: no fleet PR merged yet")
    return lines
