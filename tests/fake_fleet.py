"""A scriptable `FleetControl` for console tests, snapshots, screenshots and benchmarks: it records every
operator intent, lets the caller push events, and can be told to fail an intent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleet_tui.control import Detail
from fleet_tui.model import (
    Actor,
    AgentRun,
    Approval,
    CIState,
    Comment,
    Event,
    Issue,
    LabelEvent,
    NeedsHuman,
    PullRequest,
    PullStatus,
    RateLimit,
    Review,
    Role,
    RunState,
    SnapshotPublished,
    Usage,
    Verdict,
)
from fleet_tui.reconcile import readiness

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def fixed_clock() -> datetime:
    return NOW


class FakeFleet:
    """Implements `fleet_tui.control.FleetControl` in memory."""

    def __init__(self, snapshot: SnapshotPublished | None = None, *, repo: str = "acme/widgets",
                 forge_kind: str = "github") -> None:
        self.repo = repo
        self.forge_kind = forge_kind
        self.snapshot = snapshot if snapshot is not None else sample_snapshot()
        self.calls: list[tuple[str, object]] = []
        self.fail: dict[str, Exception] = {}
        self.details: dict[tuple[int | None, int | None], Detail] = {}
        self.log_files: dict[str, Path] = {}
        self.running = False
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._stop = asyncio.Event()

    # --- what tests do ---------------------------------------------------------------------------

    def push(self, *events: Event) -> None:
        for event in events:
            self._queue.put_nowait(event)

    def publish(self, snapshot: SnapshotPublished) -> None:
        self.snapshot = snapshot
        self.push(snapshot)

    def called(self, name: str) -> list[object]:
        return [arg for call, arg in self.calls if call == name]

    # --- FleetControl ----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        yield self.snapshot
        while True:
            yield await self._queue.get()

    async def run(self) -> None:
        self.running = True
        await self._stop.wait()
        self.running = False

    async def shutdown(self) -> None:
        self.calls.append(("shutdown", None))
        self._stop.set()

    async def _intent(self, name: str, arg: object) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise self.fail[name]

    async def approve(self, issue: int) -> None:
        await self._intent("approve", issue)

    async def reject(self, issue: int) -> None:
        await self._intent("reject", issue)

    async def stop_run(self, run_id: str) -> None:
        await self._intent("stop_run", run_id)

    async def retry(self, issue: int) -> None:
        await self._intent("retry", issue)

    async def run_pm(self) -> None:
        await self._intent("run_pm", None)

    async def set_paused(self, paused: bool) -> None:
        await self._intent("set_paused", paused)

    async def merge(self, pr: int) -> None:
        await self._intent("merge", pr)

    def log_path(self, run_id: str) -> Path | None:
        return self.log_files.get(run_id)

    async def stats(self) -> Any:
        await self._intent("stats", None)
        return sample_stats()

    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail:
        await self._intent("detail", (issue, pr))
        if (issue, pr) in self.details:
            return self.details[(issue, pr)]
        found_issue = next((i for i in self.snapshot.proposals if i.number == issue), None)
        found_pull = next((p for p in self.snapshot.pulls if p.number == pr), None)
        return Detail(issue=found_issue, pull=found_pull, reviews=found_pull.reviews if found_pull else ())


# --- fixed sample data ----------------------------------------------------------------------------

OPERATOR = Actor("mara")
PM_BOT = Actor("fleet-bot", "Bot")


def _issue(number: int, title: str, minutes_ago: int, body: str = "") -> Issue:
    return Issue(number=number, title=title, body=body or f"Proposal body for #{number}.",
                 labels=("proposed",), author=PM_BOT, created_at=NOW - timedelta(minutes=minutes_ago),
                 html_url=f"https://github.com/acme/widgets/issues/{number}")


def _review(pr: int, verdict: str, round_no: int, findings: tuple[str, ...] = ()) -> Review:
    bullets = "".join(f"- {finding}\n" for finding in findings)
    body = f"VERDICT: {verdict}\n{bullets}\n<!-- fleet:verdict={verdict} round={round_no} -->"
    return Review(id=f"rv-{pr}-{round_no}", author=PM_BOT, body=body, state="COMMENTED", commit_id=f"c{pr}{round_no}",
                  submitted_at=NOW - timedelta(minutes=10 - round_no))


def _pull(number: int, title: str, reviews: tuple[Review, ...] = (), **extra: object) -> PullRequest:
    base = PullRequest(number=number, title=title, body=f"Closes #{number - 30}.\n\nWhat changed and why.",
                       head=f"fleet/{number - 30}-change", base="main", head_sha=f"abc{number}",
                       html_url=f"https://github.com/acme/widgets/pull/{number}", author=PM_BOT,
                       additions=42, deletions=7, changed_files=3, reviews=reviews)
    return replace(base, **extra)  # type: ignore[arg-type]


def sample_snapshot(*, paused: bool = False) -> SnapshotPublished:
    """A busy fleet: three proposals (one unverified approval), four runs, two PRs in QA, two ready."""
    proposals = (
        _issue(12, "Add retry with jitter to the webhook client", 42),
        _issue(14, "Document the config file's budget keys", 25),
        _issue(15, "Cache parsed templates between renders", 7),
    )
    approvals = (
        Approval(issue=14, label="approved", verified=False, reason="labeled by drive-by, who is not an approver",
                 event=LabelEvent("ev1", "labeled", "approved", Actor("drive-by"), NOW - timedelta(minutes=3))),
    )
    start = NOW - timedelta(minutes=6, seconds=12)
    runs = (
        AgentRun("run-7f3a", Role.DEV, 9, RunState.RUNNING, branch="fleet/9-fix-pagination", started_at=start,
                 usage=Usage(120_400, 8_200, 0, 0.91), last_line="pytest -q tests/test_pages.py: 14 passed"),
        AgentRun("run-81c0", Role.QA, 10, RunState.RUNNING, pr=40, qa_round=2, started_at=NOW - timedelta(minutes=2),
                 usage=Usage(40_100, 2_900, 0, 0.27), last_line="reading src/widgets/render.py"),
        AgentRun("run-6d2e", Role.PM, None, RunState.SUCCEEDED, started_at=NOW - timedelta(minutes=50),
                 ended_at=NOW - timedelta(minutes=44), usage=Usage(30_000, 4_000, 0, 0.18),
                 last_line="proposed 3 issues"),
        AgentRun("run-5b91", Role.DEV, 11, RunState.FAILED, started_at=NOW - timedelta(minutes=40),
                 ended_at=NOW - timedelta(minutes=9), usage=Usage(300_000, 21_000, 0, 2.40),
                 reason="tests failed twice", last_line="error: 3 tests failed"),
    )
    pulls = (
        _pull(40, "Fix off-by-one in pagination", (_review(40, "changes", 1, ("test for empty page",
                                                                             "rename cursor arg")),)),
        _pull(41, "Speed up template rendering", ()),
        _pull(38, "Add --json output to the report command", (_review(38, "changes", 1, ("typo",)),
                                                             _review(38, "pass", 2)),
              ci=CIState.SUCCESS, mergeable=True, mergeable_state="clean", additions=118, deletions=12,
              changed_files=5),
        _pull(39, "Bump the lock file", (_review(39, "pass", 1),), ci=CIState.PENDING, mergeable=None,
              additions=3, deletions=3, changed_files=1),
    )
    needs_human = (
        NeedsHuman(at=NOW - timedelta(minutes=9), issue=11, reason="dev run failed twice: tests failed"),
        NeedsHuman(at=NOW - timedelta(minutes=30), pr=37, reason="QA rounds exhausted (3/3)"),
    )
    verdicts = {40: (Verdict.CHANGES, 1), 38: (Verdict.PASS, 2), 39: (Verdict.PASS, 1)}
    statuses = []
    for pull in pulls:  # what the fleet's journal says of each of its PRs
        verdict, round_no = verdicts.get(pull.number, (None, 0))
        ready, why = readiness(pull, verdict)
        statuses.append(PullStatus(pull.number, None, verdict.value if verdict else "", round_no, ready, why))
    return SnapshotPublished(at=NOW - timedelta(seconds=4), proposals=proposals, approvals=approvals, runs=runs,
                             pulls=pulls, needs_human=needs_human, pull_status=tuple(statuses),
                             rate=RateLimit(remaining=4_812, limit=5_000), spend_today=Usage(0, 0, 0, 3.76),
                             paused=paused)


SAMPLE_DIFF = """\
diff --git a/src/pages.py b/src/pages.py
index 3f2a1c0..9b7e4d2 100644
--- a/src/pages.py
+++ b/src/pages.py
@@ -10,7 +10,7 @@ def page(items, size):
     if size <= 0:
         raise ValueError("size must be positive")
     start = index * size
-    end = start + size + 1
+    end = start + size
     return items[start:end]
 
 
diff --git a/tests/test_pages.py b/tests/test_pages.py
new file mode 100644
index 0000000..5d1e2aa
--- /dev/null
+++ b/tests/test_pages.py
@@ -0,0 +1,6 @@
+from widgets.pages import page
+
+
+def test_last_page_is_not_padded():
+    assert page(list(range(5)), size=2, index=2) == [4]
+    assert page([], size=2, index=0) == []
"""


def sample_detail() -> Detail:
    pull = sample_snapshot().pulls[0]
    pull = replace(pull, body="Closes #10.\n\n## What changed\n\n- `end` no longer runs **one past** the page\n"
                              "- a test for the last page\n\nSee [the issue](https://github.com/acme/widgets/issues/10).")
    comment = Comment("c1", Actor("mara"), "Please keep the old argument name as an alias.", NOW - timedelta(minutes=5))
    return Detail(pull=pull, reviews=pull.reviews, comments=(comment,),
                  diffstat=" src/pages.py        | 2 +-\n tests/test_pages.py | 6 ++++++\n 2 files changed",
                  diff=SAMPLE_DIFF)


def sample_stats() -> Any:
    """Two weeks of a small fleet's numbers, fixed, for the stats screen's tests."""
    from fleet_tui.stats import Latency, Stats

    return Stats(now=NOW, spend_hourly=tuple(float(h % 5) * 0.4 for h in range(24)),
                 spend_daily=(2.1, 3.4, 0.0, 5.2, 4.4, 1.0, 0.0, 0.0, 6.3, 7.1, 2.2, 3.9, 4.0, 3.76),
                 runs_daily=(4, 6, 0, 9, 7, 2, 0, 0, 11, 12, 5, 6, 7, 5),
                 merged_daily=(1, 1, 0, 2, 2, 0, 0, 0, 3, 3, 1, 1, 2, 1), first_review_pass=(11, 17),
                 approve_to_pr=Latency(1260.0, 3300.0, 17), pr_to_merge=Latency(15_400.0, 86_000.0, 17),
                 merged=17, cost_per_merged_by_engine={"claude": 0.62, "codex": 1.84},
                 cost_per_merged_by_role={"dev": 1.91, "qa": 0.55})
