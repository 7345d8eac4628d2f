"""What polling open PRs costs on GitHub: requests and primary rate-limit points per cycle.

A fake GitHub on loopback holds 1, 50 or 300 open PRs, half of them humans'. One cycle is the orchestrator's
PR poll: `list_pulls(details_for=<the fleet's heads>)`. Ours: the list revalidated with ETags (an unchanged
page is a free 304), full details only for fleet PRs whose list entry changed, whose base moved or whose state
has not settled. Naive: the same forge without ETags, reading every PR in full every cycle (the poll before
`details_for`). A change is a human's PR renamed (one list entry changes) or a review on a fleet PR; each
change is measured together with the idle cycle after it, so a cache that pays twice for one change shows.

Targets: at most 8 requests and 0 points per idle cycle at every size; 1 point per change to a human's PR.
A second table: polling 2,000 open issues (`list_issues`, 100 a page), idle and with one issue changed.
Run: `python benchmarks/bench_forge_poll.py [sizes...]` (default 1 50 300).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_github import FLEET_LOGIN, FLEET_TOKEN, OUTSIDER_LOGIN, REPO, FakeGitHub, iso  # noqa: E402

from fleet_tui.forge.github import GitHubForge  # noqa: E402


def build(root: Path, pulls: int) -> tuple[FakeGitHub, set[str], list[int], list[int]]:
    server = FakeGitHub(root, git=False, rate_limit=1_000_000)
    fleet_heads: set[str] = set()
    humans: list[int] = []
    fleet: list[int] = []
    for n in range(pulls):
        mine = n % 2 == 0
        pull = server.add_pull(f"Change {n}", f"{'fleet' if mine else 'human'}/{n}-change",
                               user=FLEET_LOGIN if mine else OUTSIDER_LOGIN)
        server.add_status(pull.head_sha, "success")
        server.add_check_run(pull.head_sha, "tests")
        (fleet if mine else humans).append(pull.number)
        if mine:
            fleet_heads.add(pull.head)
    return server, fleet_heads, humans, fleet


async def cycle(forge: GitHubForge, details_for: set[str] | None, naive: bool = False) -> dict[str, int]:
    before = dict(forge.wire)
    if naive:
        await naive_poll(forge)
    else:
        await forge.list_pulls(details_for=details_for)
    after = forge.wire
    return {key: after[key] - before[key] for key in after}


async def naive_poll(forge: GitHubForge) -> None:
    """What a poller without ETags and without `details_for` sends: the list, then each PR, its combined
    status and check runs (files, reviews and review comments only when the PR changed)."""
    rest = forge._rest
    items = await forge._pages(rest.pulls.async_list, forge.owner, forge.name, what="GET pulls", state="open")
    seen = forge._pull_details
    for item in items:
        number = int(item["number"])
        data = (await forge._call(rest.pulls.async_get, forge.owner, forge.name, number)).json()
        if seen.get(number, (None,))[0] != (data["updated_at"], data["head"]["sha"]):
            for fn in (rest.pulls.async_list_files, rest.pulls.async_list_reviews,
                       rest.pulls.async_list_review_comments):
                await forge._pages(fn, forge.owner, forge.name, number, what="details")
            seen[number] = ((data["updated_at"], data["head"]["sha"]), ((), (), ()))
        await forge._call(rest.repos.async_get_combined_status_for_ref, forge.owner, forge.name, data["head"]["sha"])
        await forge._check_runs(data["head"]["sha"])


def plus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a[key] + b[key] for key in a}


async def measure(server: FakeGitHub, fleet_heads: set[str], humans: list[int], fleet: list[int],
                  naive: bool) -> dict[str, Any]:
    forge = GitHubForge(REPO, token=FLEET_TOKEN, base_url=server.url, write_spacing=0.0, timeout=30.0,
                        conditional=not naive, readiness_backoff=0.0)
    results: dict[str, Any] = {}
    async with forge:
        if naive:  # it has seen every PR's details once already (saves a cold cycle's wall time, not counted)
            for number, issue in server.issues.items():
                pull = server.pulls[number]
                forge._pull_details[number] = ((iso(issue.updated), pull.head_sha), ((), (), ()))
        else:
            await cycle(forge, fleet_heads, naive)  # cold cache (and GitHub's first `mergeable: null` answers)
            await cycle(forge, fleet_heads, naive)
        idle = results["idle"] = await cycle(forge, fleet_heads, naive)
        if humans:
            server.edit_issue(humans[0], title=f"renamed {time.monotonic()}", user=OUTSIDER_LOGIN)
            change = await cycle(forge, fleet_heads, naive)
            results["human change"] = plus(change, idle if naive else await cycle(forge, fleet_heads, naive))
        server.add_review(fleet[0], OUTSIDER_LOGIN, "COMMENTED", "a remark")
        change = await cycle(forge, fleet_heads, naive)
        results["fleet change"] = plus(change, idle if naive else await cycle(forge, fleet_heads, naive))
    return results


async def measure_issues(count: int) -> dict[str, dict[str, int]]:
    results: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = FakeGitHub(Path(tmp), git=False, rate_limit=1_000_000)
        labels = ("proposed", "approved", "bug", "docs")
        for n in range(count):
            server.add_issue(f"Issue {n}", f"Body of issue {n}\n" * 5, labels=[labels[n % len(labels)]])
        server.start()
        try:
            for naive in (False, True):
                forge = GitHubForge(REPO, token=FLEET_TOKEN, base_url=server.url, write_spacing=0.0, timeout=30.0,
                                    conditional=not naive)
                async with forge:

                    async def poll() -> dict[str, int]:
                        before = dict(forge.wire)
                        await forge.list_issues()
                        return {key: forge.wire[key] - before[key] for key in before}

                    await poll()
                    idle = await poll()
                    server.apply_label(7, "fleet:in-progress", FLEET_LOGIN)
                    change = plus(await poll(), await poll())
                    server.unapply_label(7, "fleet:in-progress", FLEET_LOGIN)
                    await poll()
                results["naive" if naive else "ours"] = {"idle requests": idle["requests"],
                                                         "idle points": idle["points"],
                                                         "change requests": change["requests"],
                                                         "change points": change["points"]}
        finally:
            server.stop()
    return results


async def main(sizes: list[int]) -> None:
    started = time.perf_counter()
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            server, heads, humans, fleet = build(Path(tmp), size)
            server.start()
            try:
                ours = await measure(server, heads, humans, fleet, naive=False)
                naive = await measure(server, heads, humans, fleet, naive=True)
            finally:
                server.stop()
        rows.append((size, ours, naive))
    print("PR poll cycle: list_pulls(details_for=<fleet heads>), half of the open PRs humans' (fake GitHub)")
    print("a change is measured with the idle cycle after it\n")
    head = f"{'open PRs':>8}  {'cycle':<14}{'ours: requests':>15}{'points':>8}{'naive: requests':>17}{'points':>8}"
    print(head)
    print("-" * len(head))
    for size, ours, naive in rows:
        for key in ("idle", "human change", "fleet change"):
            if key not in ours:
                continue
            o, n = ours[key], naive[key]
            print(f"{size:>8}  {key:<14}{o['requests']:>15,}{o['points']:>8,}{n['requests']:>17,}{n['points']:>8,}")
    issues = await measure_issues(2000)
    print("\nIssue poll: list_issues() over 2,000 open issues (a change measured with the idle cycle after it)\n")
    head = f"{'poller':<8}{'idle: requests':>16}{'points':>8}{'change: requests':>18}{'points':>8}"
    print(head)
    print("-" * len(head))
    for name, row in issues.items():
        print(f"{name:<8}{row['idle requests']:>16,}{row['idle points']:>8,}{row['change requests']:>18,}"
              f"{row['change points']:>8,}")
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    anyio.run(main, [int(a) for a in sys.argv[1:]] or [1, 50, 300])
