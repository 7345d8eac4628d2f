"""What one poll of a big repository costs on GitHub: requests and primary rate-limit points per cycle.

A fake GitHub on loopback holds 2,000 issues and 300 open PRs. One poll cycle is what the orchestrator reads
each tick: every open issue, every open PR with its details and CI state. Compared: the GitHub forge
(conditional requests: an unchanged page is a free 304) and a naive poller sending the same requests without
ETags. Run: `python benchmarks/bench_forge_poll.py [issues] [pulls]`.
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

from fake_github import FLEET_LOGIN, FLEET_TOKEN, REPO, FakeGitHub  # noqa: E402

from fleet_tui.forge.github import GitHubForge  # noqa: E402


def build(root: Path, issues: int, pulls: int) -> FakeGitHub:
    server = FakeGitHub(root, git=False, rate_limit=1_000_000)
    labels = ("proposed", "approved", "bug", "docs")
    for n in range(issues):
        server.add_issue(f"Issue {n}", f"Body of issue {n}\n" * 5, labels=[labels[n % len(labels)]])
        if n % 10 == 0:
            server.add_comment(n + 1, "a comment")
    for n in range(pulls):
        pull = server.add_pull(f"Change {n}", f"fleet/{n}-change", user=FLEET_LOGIN)
        server.add_status(pull.head_sha, "success")
        server.add_check_run(pull.head_sha, "tests")
    return server


async def cycle(forge: GitHubForge) -> dict[str, int]:
    before = dict(forge.wire)
    await forge.list_issues()
    await forge.list_pulls()
    after = forge.wire
    return {key: after[key] - before[key] for key in after}


async def measure(server: FakeGitHub, conditional: bool) -> dict[str, Any]:
    forge = GitHubForge(REPO, token=FLEET_TOKEN, base_url=server.url, write_spacing=0.0, timeout=30.0,
                        conditional=conditional)
    results: dict[str, Any] = {}
    async with forge:
        start = time.perf_counter()
        results["first"] = await cycle(forge)
        results["idle"] = await cycle(forge)
        server.apply_label(7, "fleet:in-progress", FLEET_LOGIN)  # one change between two polls
        results["change"] = await cycle(forge)
        server.unapply_label(7, "fleet:in-progress", FLEET_LOGIN)
        await cycle(forge)  # back to the starting state for the next poller
        results["seconds"] = time.perf_counter() - start
    return results


async def main(issues: int, pulls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        server = build(Path(tmp), issues, pulls).start()
        try:
            ours = await measure(server, conditional=True)
            naive = await measure(server, conditional=False)
        finally:
            server.stop()
    print(f"Poll cycle on a repository of {issues:,} issues and {pulls:,} open PRs (fake GitHub on loopback)")
    print("cycle = every open issue (100 a page) + every open PR with details and CI state\n")
    head = f"{'cycle':<22}{'ours: requests':>16}{'304s':>7}{'points':>8}{'naive: requests':>17}{'points':>8}" \
           f"{'points ratio':>14}"
    print(head)
    print("-" * len(head))
    for key, label in (("first", "first (cold cache)"), ("idle", "idle (no change)"), ("change", "one change")):
        o, n = ours[key], naive[key]
        ratio = f"{n['points'] / o['points']:.0f}x fewer" if o["points"] else f"{n['points']} vs 0"
        if key == "first":
            ratio = "-"
        print(f"{label:<22}{o['requests']:>16,}{o['not_modified']:>7,}{o['points']:>8,}{n['requests']:>17,}"
              f"{n['points']:>8,}{ratio:>14}")
    print(f"\nwall time: ours {ours['seconds']:.1f} s, naive {naive['seconds']:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    anyio.run(main, *(args + [2000, 300][len(args):]))
