"""Claims that hold across orchestrators: the lease decisions (pure), the forge's compare-and-swap on both
backends (the local forge's SQLite row, GitHub's claim ref through the fake server), and two orchestrators with
their own identities and journals racing on one repository whose comments and labels reach the other client
only seconds later.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from fake_github import API, FLEET_LOGIN, OPERATOR_LOGIN, OPERATOR_TOKEN, REPO, FakeGitHub, open_github_forge
from test_forge_contract import forge  # noqa: F401 - the contract fixture: both backends

from fleet_tui import leases
from fleet_tui.claims import ClaimKeeper
from fleet_tui.forge.base import ClaimLease, Forge
from fleet_tui.forge.github_claims import lease_message, parse_lease

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the pure decisions -------------------------------------------------------------------------------


def test_a_lease_may_be_broken_only_after_its_version_was_seen_unchanged_for_a_whole_lease() -> None:
    seen = leases.watch({}, {4: "v1"}, now=100.0)
    assert not leases.may_break(seen[4], "v1", 104.9, 5.0)
    assert leases.may_break(seen[4], "v1", 105.0, 5.0)
    # a renewal is a new version: the watch starts again, whatever time has passed
    seen = leases.watch(seen, {4: "v2"}, now=104.0)
    assert seen[4] == leases.Sighting("v2", 104.0)
    assert not leases.may_break(seen[4], "v2", 108.0, 5.0)
    assert leases.expired(seen, {4: "v2"}, 109.0, 5.0) == {4: "v2"}
    # the same version seen again keeps its first sighting; a version never seen is never breakable
    assert leases.watch(seen, {4: "v2"}, now=200.0)[4].since == 104.0
    assert not leases.may_break(None, "v2", 1e9, 5.0)
    assert not leases.may_break(seen[4], "v1", 1e9, 5.0)
    # a claim that went away is forgotten: seen again, it is watched afresh
    assert leases.watch(seen, {}, now=300.0) == {}


def test_a_holder_renews_three_times_per_lease_and_holds_only_while_the_issue_is_worked() -> None:
    assert not leases.renewal_due(10.0, 11.9, 6.0)
    assert leases.renewal_due(10.0, 12.0, 6.0)
    assert leases.still_holds(listed=True, open_=True, needs_human=False)
    assert not leases.still_holds(listed=True, open_=True, needs_human=True)
    assert not leases.still_holds(listed=False, open_=True, needs_human=False)
    assert not leases.still_holds(listed=True, open_=False, needs_human=False)


def test_reconcile_claims_an_issue_held_elsewhere_only_once_its_lease_was_seen_expired() -> None:
    from test_reconcile import CONFIG, LABELS, NOW, approval, issue, pinned

    from fleet_tui.reconcile import Claim, Snapshot, reconcile, text_sha

    labelled = issue(1, LABELS.approved, LABELS.in_progress)
    unlabelled = issue(2, LABELS.approved)  # the other's label is not visible here yet; its lease is
    base = Snapshot(now=NOW, issues=(labelled, unlabelled), approvals={1: approval(1), 2: approval(2)},
                    pins={**pinned(labelled), **pinned(unlabelled)})
    # a live lease elsewhere (or an in-progress label with no lease: a claim released, a human's to clear)
    assert [a for a in reconcile(dataclasses.replace(base, leased_elsewhere=frozenset({1, 2})), CONFIG)
            if isinstance(a, Claim)] == []
    assert [a.issue for a in reconcile(base, CONFIG) if isinstance(a, Claim)] == [2]
    # seen unrenewed for a whole lease: taken over, naming the version seen
    expired = dataclasses.replace(base, leased_elsewhere=frozenset({1, 2}), claimable={1: "v9"})
    assert [a for a in reconcile(expired, CONFIG) if isinstance(a, Claim)] == [
        Claim(1, "ev1", text_sha(labelled.title), text_sha(labelled.body), "v9")]


def test_the_lease_commit_names_its_holder_and_run() -> None:
    text = lease_message(12, "f0123456789abcde", "dev-12-abc123", 180)
    assert text.startswith("fleet claim of issue #12\n")
    assert parse_lease(text) == ("f0123456789abcde", "dev-12-abc123")
    assert parse_lease("some commit") == ("", "")


# --- the forge's compare-and-swap, on both backends -----------------------------------------------------


async def test_a_claim_is_a_compare_and_swap_on_the_forge(forge: Forge) -> None:  # noqa: F811
    assert await forge.list_claims() == {}
    first = await forge.acquire_claim(7, "fleet-a", "dev-7-a", lease_s=30)
    assert first is not None and (first.issue, first.holder, first.run_id) == (7, "fleet-a", "dev-7-a")
    assert await forge.acquire_claim(7, "fleet-b", "dev-7-b", lease_s=30) is None
    assert await forge.get_claim(7) == first
    assert {n: c.version for n, c in (await forge.list_claims()).items()} == {7: first.version}

    renewed = await forge.replace_claim(first, "fleet-a", "dev-7-a", lease_s=30)
    assert renewed is not None and renewed.version != first.version
    # a taker that saw the version before the renewal loses; the renewal stands
    assert await forge.replace_claim(first, "fleet-b", "dev-7-b", lease_s=30) is None
    # two takers of the same expired version: exactly one wins
    taken = await forge.replace_claim(renewed, "fleet-b", "dev-7-b", lease_s=30)
    assert taken is not None
    assert await forge.replace_claim(renewed, "fleet-c", "dev-7-c", lease_s=30) is None
    # the old holder's next renewal fails: it knows it lost
    assert await forge.replace_claim(renewed, "fleet-a", "dev-7-a", lease_s=30) is None
    assert (await forge.get_claim(7)).holder == "fleet-b"  # type: ignore[union-attr]

    await forge.release_claim(renewed)  # a stale lease releases nothing
    assert (await forge.get_claim(7)) == taken
    await forge.release_claim(taken)
    assert await forge.get_claim(7) is None and await forge.list_claims() == {}
    await forge.release_claim(taken)  # twice is no error
    assert await forge.replace_claim(taken, "fleet-b", "dev-7-b", lease_s=30) is None
    assert await forge.acquire_claim(7, "fleet-c", "dev-7-c", lease_s=30) is not None


async def test_racing_acquirers_on_github_get_exactly_one_claim(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server), AsyncExitStack() as stack:  # noqa: F811 - a GitHub forge of its own
        from fleet_tui.forge.github import GitHubForge

        others = []
        for n in range(5):
            token = f"rival-token-{n}"
            server.add_user(f"rival-{n}", token, scopes="repo", permission="write")
            others.append(await stack.enter_async_context(GitHubForge(
                REPO, token=token, operator_token=OPERATOR_TOKEN, base_url=server.url, write_spacing=0.0,
                retry_backoff=0.01, timeout=5.0, settle_s=0.05)))
        won: list[ClaimLease] = []

        async def race(client: Any, holder: str) -> None:
            lease = await client.acquire_claim(3, holder, f"dev-3-{holder}", lease_s=60)
            if lease is not None:
                won.append(lease)

        async with anyio.create_task_group() as tg:
            for n, client in enumerate([forge, *others]):
                tg.start_soon(race, client, f"fleet-{n}")
        assert len(won) == 1
        created = server.calls("POST", r"/git/refs$")
        assert sorted(r.status for r in created) == [201] + [422] * 5
        # the ref is a branch a human can see, pointing at a lease commit on the default branch's tree
        sha = server.branch_sha("fleet-claims/3")
        assert sha == won[0].version
        commit = server.git_commit_json(sha)
        assert commit["parents"] == [] and parse_lease(commit["message"])[0] == won[0].holder
        assert commit["tree"]["sha"] == server._tree_of(server.branch_sha("main") or "")

        # renewal and takeover are fast-forward-only updates: the loser gets GitHub's 422
        clients = dict(zip([f"fleet-{n}" for n in range(6)], [forge, *others], strict=True))
        renewed = await clients[won[0].holder].replace_claim(won[0], won[0].holder, won[0].run_id, lease_s=60)
        assert renewed is not None
        assert await forge.replace_claim(won[0], "fleet-x", "dev-3-x", lease_s=60) is None
        patched = server.calls("PATCH", r"/git/refs/heads/fleet-claims/3$")
        assert [r.status for r in patched] == [200, 422] and all(r.body["force"] is False for r in patched)
        assert [p["sha"] for p in server.git_commit_json(renewed.version)["parents"]] == [won[0].version]
        listed = server.calls("GET", r"/git/matching-refs/heads/fleet-claims/$")
        assert listed == []  # nothing listed yet: one GET lists them all
        assert list(await forge.list_claims()) == [3]
        assert len(server.calls("GET", r"/git/matching-refs/heads/fleet-claims/$")) == 1


async def test_a_refusal_that_is_no_loss_is_an_error_to_retry_not_a_lost_claim(tmp_path: Path) -> None:
    """GitHub sometimes answers 422 "Reference update failed" for no reason it names: while the ref is still
    where the caller saw it (or still absent), that is an error to try again, never a claim lost or won."""
    from fleet_tui.forge.base import ForgeError

    async with open_github_forge(tmp_path) as (github, server):
        server.fault("POST", r"/git/refs$", status=422)
        with pytest.raises(ForgeError):
            await github.acquire_claim(4, "fleet-a", "dev-4-a", lease_s=30)
        lease = await github.acquire_claim(4, "fleet-a", "dev-4-a", lease_s=30)
        assert lease is not None
        server.fault("PATCH", r"/git/refs/heads/fleet-claims/4$", status=422)
        with pytest.raises(ForgeError):
            await github.replace_claim(lease, "fleet-a", "dev-4-a", lease_s=30)
        assert await github.replace_claim(lease, "fleet-a", "dev-4-a", lease_s=30) is not None


async def test_the_fake_answers_the_refs_api_as_github_does(tmp_path: Path) -> None:
    import httpx

    with FakeGitHub(tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url.rstrip("/"),
                                     headers={"authorization": "token fleet-test-token"}) as http:
            repo = f"/repos/{REPO}"
            main = server.branch_sha("main")
            tree = server._tree_of(main or "")
            made = await http.post(f"{repo}/git/commits", json={"message": "lease", "tree": tree})
            assert made.status_code == 201 and made.json()["tree"]["sha"] == tree and made.json()["parents"] == []
            bad = await http.post(f"{repo}/git/commits", json={"message": "x", "tree": "f" * 40})
            assert bad.status_code == 422
            sha = made.json()["sha"]
            ref = await http.post(f"{repo}/git/refs", json={"ref": "refs/heads/fleet-claims/1", "sha": sha})
            assert ref.status_code == 201 and ref.json()["object"]["sha"] == sha
            assert ref.json()["url"] == f"{API}{repo}/git/refs/heads/fleet-claims/1"
            again = await http.post(f"{repo}/git/refs", json={"ref": "refs/heads/fleet-claims/1", "sha": sha})
            assert again.status_code == 422 and again.json()["message"] == "Reference already exists"
            other = (await http.post(f"{repo}/git/commits", json={"message": "other", "tree": tree})).json()["sha"]
            not_ff = await http.patch(f"{repo}/git/refs/heads/fleet-claims/1", json={"sha": other, "force": False})
            assert not_ff.status_code == 422 and not_ff.json()["message"] == "Update is not a fast forward"
            got = await http.get(f"{repo}/git/ref/heads/fleet-claims/1")
            assert got.status_code == 200 and got.json()["object"]["sha"] == sha
            assert (await http.get(f"{repo}/git/ref/heads/fleet-claims/2")).status_code == 404
            listed = await http.get(f"{repo}/git/matching-refs/heads/fleet-claims/")
            assert [r["ref"] for r in listed.json()] == ["refs/heads/fleet-claims/1"]
            gone = await http.delete(f"{repo}/git/refs/heads/fleet-claims/1")
            assert gone.status_code == 204 and gone.content == b""
            missing = await http.delete(f"{repo}/git/refs/heads/fleet-claims/1")
            assert missing.status_code == 422 and missing.json()["message"] == "Reference does not exist"
            assert (await http.get(f"{repo}/git/matching-refs/heads/fleet-claims/")).json() == []


async def test_comments_and_labels_reach_other_clients_late_but_refs_at_once(tmp_path: Path) -> None:
    import httpx

    with FakeGitHub(tmp_path) as server:
        issue = server.add_issue("Add a flag", labels=["approved"])
        server.visibility_delay_s = 30.0
        server.apply_label(issue.number, "fleet:in-progress", FLEET_LOGIN)
        server.add_comment(issue.number, "claimed", FLEET_LOGIN)
        repo = f"/repos/{REPO}"
        for token, sees in (("fleet-test-token", True), (OPERATOR_TOKEN, False)):
            async with httpx.AsyncClient(base_url=server.url.rstrip("/"),
                                         headers={"authorization": f"token {token}"}) as http:
                labels = [x["name"] for x in (await http.get(f"{repo}/issues/{issue.number}")).json()["labels"]]
                comments = (await http.get(f"{repo}/issues/{issue.number}/comments")).json()
                listed = (await http.get(f"{repo}/issues", params={"labels": "fleet:in-progress"})).json()
                assert ("fleet:in-progress" in labels) is sees
                assert (len(comments) == 1) is sees and (len(listed) == 1) is sees


# --- the keeper: renewal, loss, takeover (local forge, a clock of our own) --------------------------------


async def test_a_keeper_renews_its_lease_and_learns_when_it_lost_it(tmp_path: Path) -> None:
    from test_forge_contract import init_repo

    from fleet_tui.forge.local import LocalForge

    now = [1000.0]
    async with LocalForge(init_repo(tmp_path / "repo"), operator="alice") as local:
        holder = ClaimKeeper(local, "fleet-a", 6.0, monotonic=lambda: now[0])
        taker = ClaimKeeper(local, "fleet-b", 6.0, monotonic=lambda: now[0])
        assert await holder.acquire(5, "dev-5-a") is not None
        assert await taker.acquire(5, "dev-5-b") is None  # held: the taker stands down
        await taker.look()
        assert taker.elsewhere() == {5} and taker.breakable() == {}
        for _ in range(6):  # the holder renews every 2 s: the taker never sees one version for 6 s
            now[0] += 2.0
            assert await holder.renew_due() == set()
            await taker.look()
            assert taker.breakable() == {}
        # the holder stalls (a dead process, a cut network): after 6 s of one version, the taker may break it
        version = (await local.get_claim(5)).version  # type: ignore[union-attr]
        now[0] += 5.9
        await taker.look()
        assert taker.breakable() == {}
        now[0] += 0.1
        await taker.look()
        assert taker.breakable() == {5: version}
        assert await taker.acquire(5, "dev-5-b", seen_version=version) is not None
        # the holder comes back: its renewal fails and it knows it lost the issue
        now[0] += 2.0
        assert await holder.renew_due() == {5}
        assert holder.take_lost() == {5} and 5 not in holder.held
        assert (await local.get_claim(5)).holder == "fleet-b"  # type: ignore[union-attr]
        # a restarted holder keeps its own lease (same holder name): acquiring again adopts it
        again = ClaimKeeper(local, "fleet-b", 6.0, monotonic=lambda: now[0])
        assert await again.acquire(5, "dev-5-b") == await local.get_claim(5)


# --- two orchestrators on one repository -----------------------------------------------------------------

QUICK = {
    "pm": [{"final": "nothing"}],
    "dev": [{"write": "notes/{issue}.md", "content": "# {title}\n"}, {"commit": "#{issue}: {title}"},
            {"final": "done"}],
    "qa": {"default": [{"final": "Fine.\n\nVERDICT: pass\n"}]},
}
SLOW = {**QUICK, "dev": [{"print": "thinking"}, {"sleep": 120}, *QUICK["dev"]]}


@asynccontextmanager
async def fleet_member(tmp_path: Path, server: FakeGitHub, name: str, *, lease_s: float,
                       script: dict[str, Any], dev: int = 4, poll_s: float = 1.0) -> AsyncIterator[Any]:
    """One orchestrator with its own GitHub identity and token, journal, workspaces and local runner."""
    from fleet_tui.config import (
        EngineConfig,
        FleetConfig,
        ForgeConfig,
        PolicyConfig,
        RoleConfig,
        RolesConfig,
        RunnerConfig,
    )
    from fleet_tui.forge.github import GitHubForge
    from fleet_tui.git import git_sync
    from fleet_tui.orchestrator import Orchestrator
    from fleet_tui.runners.local import LocalRunner
    from fleet_tui.store import Journal
    from fleet_tui.workspace import WorkspaceManager

    home = tmp_path / name
    home.mkdir()
    token = f"{name}-token"
    server.add_user(name, token, type="Bot", scopes="repo", permission="write")
    (home / "script.json").write_text(json.dumps(script))
    config = FleetConfig(
        forge=ForgeConfig(kind="github", repo=REPO, claim_lease_s=lease_s), approvers=[OPERATOR_LOGIN],
        engines={"scripted": EngineConfig(kind="scripted", command=sys.executable, script=str(home / "script.json"))},
        runner=RunnerConfig(kind="local"), poll_interval_s=poll_s,
        roles=RolesConfig(pm=RoleConfig(engine="scripted"), dev=RoleConfig(engine="scripted", max_concurrent=dev),
                          qa=RoleConfig(engine="scripted", max_concurrent=dev)),
        policy=PolicyConfig(max_live_runs=2 * dev))
    journal = Journal.open(home / "journal")
    try:
        async with GitHubForge(REPO, token=token, operator_token=OPERATOR_TOKEN, base_url=server.url,
                               write_spacing=0.0, retry_backoff=0.01, secondary_backoff=0.05, timeout=5.0,
                               settle_s=0.05, readiness_backoff=0.01) as forge:
            git_sync("clone", "-q", server.push_url, str(home / "checkout"), cwd=home)
            runner = LocalRunner(instance=name, repo=REPO, runs_dir=home / "runs")
            yield Orchestrator(config, forge=forge, runner=runner, journal=journal, repo_path=home / "checkout",
                               workspaces=WorkspaceManager(home / "ws"))
    finally:
        journal.close()


def approve_issues(server: FakeGitHub, count: int) -> list[int]:
    numbers = []
    for n in range(count):
        issue = server.add_issue(f"Add flag number {n}", "Do it.", labels=["proposed"])
        server.apply_label(issue.number, "approved", OPERATOR_LOGIN)
        numbers.append(issue.number)
    return numbers


async def wait_for(condition: Any, limit: float, what: str) -> None:
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.1)


def fleet_branches(server: FakeGitHub, issue: int) -> list[str]:
    return [name.removeprefix("refs/heads/") for name, _ in server._all_refs()
            if name.startswith(f"refs/heads/fleet/{issue}-")]


def dev_runs(orchs: list[Any], issue: int) -> list[str]:
    from fleet_tui.model import Role

    return [run.run_id for orch in orchs for run in orch.journal.runs(issue=issue)
            if run.role == Role.DEV and run.qa_round == 0]


async def test_two_orchestrators_racing_on_twenty_issues_build_each_exactly_once(tmp_path: Path) -> None:
    with FakeGitHub(tmp_path) as server:
        numbers = approve_issues(server, 20)
        server.visibility_delay_s = 4.0  # each sees the other's labels and comments only 4 s late
        async with fleet_member(tmp_path, server, "fleet-east", lease_s=60, script=QUICK, dev=8) as east, \
                fleet_member(tmp_path, server, "fleet-west", lease_s=60, script=QUICK, dev=8) as west:
            async with anyio.create_task_group() as tg:
                tg.start_soon(east.run)
                tg.start_soon(west.run)
                # done when every issue has its PR; then no more dispatch (QA is not what this is about)
                await wait_for(lambda: len(server.pulls) == 20, 120, "twenty PRs")
                await east.set_paused(True)
                await west.set_paused(True)
                await wait_for(lambda: not len(east.supervisor) and not len(west.supervisor), 30, "runs ended")
                await east.shutdown()
                await west.shutdown()
            for number in numbers:
                assert len(dev_runs([east, west], number)) == 1, number
                assert len(fleet_branches(server, number)) == 1, number
                pulls = [p for p in server.pulls.values() if p.head.startswith(f"fleet/{number}-")]
                assert len(pulls) == 1, number
                claims = [c for c in server.issues[number].comments if "fleet:claim=" in c.body]
                assert len(claims) == 1, number
            # both worked, and the forge's compare-and-swap turned the losers away (422), not the comments
            authors = {server.issues[p.number].user for p in server.pulls.values()}
            assert authors == {"fleet-east", "fleet-west"}
            created = server.calls("POST", r"/git/refs$")
            assert sum(r.status == 201 for r in created) == 20
            # the issues stay open and in progress (each PR waits for a human), so their leases stay held
            assert set(await east.forge.list_claims()) == set(numbers)


async def test_a_dead_holder_is_taken_over_only_after_its_lease_expires(tmp_path: Path) -> None:
    import time

    from fleet_tui.workspace import branch_name

    lease_s = 5.0
    with FakeGitHub(tmp_path) as server:
        [number] = approve_issues(server, 1)
        server.visibility_delay_s = 3.0
        async with fleet_member(tmp_path, server, "fleet-east", lease_s=lease_s, script=SLOW) as east, \
                fleet_member(tmp_path, server, "fleet-west", lease_s=lease_s, script=QUICK) as west:
            async with anyio.create_task_group() as tg:
                east_scope = anyio.CancelScope()

                async def run_east() -> None:
                    with east_scope:
                        await east.run()

                tg.start_soon(run_east)
                await wait_for(lambda: len(east.supervisor) == 1, 20, "east's dev run live")
                [run_id] = [run.run_id for run in east.supervisor.live_runs()]
                tg.start_soon(west.run)
                # while east lives (and renews), west stands off, longer than a lease
                alive_until = time.monotonic() + lease_s + 1.0
                while time.monotonic() < alive_until:
                    await anyio.sleep(0.2)
                    assert not west.journal.runs()
                assert {r.login for r in server.calls(None, "/git/refs") if r.method != "GET"} == {"fleet-east"}
                # east dies abruptly: no release, no goodbye; the branch it pushed before dying stays
                server.create_branch(branch_name(number, server.issues[number].title), {"half.txt": "x\n"})
                east_scope.cancel()
                await wait_for(lambda: any(p.head.startswith(f"fleet/{number}-") for p in server.pulls.values()),
                               lease_s + 20, "west's PR")
                await west.shutdown()
            writes = [r for r in server.requests if "/git/refs" in r.path and r.method in ("POST", "PATCH")
                      and r.status in (200, 201)]
            last_east = max(r.at for r in writes if r.login == "fleet-east")
            takeover = min(r.at for r in writes if r.login == "fleet-west")
            assert takeover - last_east >= lease_s  # never before east's last renewal aged a whole lease
            [pull] = server.pulls.values()
            assert server.issues[pull.number].user == "fleet-west" and pull.head_sha == server.branch_sha(pull.head)
            assert len(fleet_branches(server, number)) == 1
            assert len(dev_runs([west], number)) == 1
            comments = [c for c in server.issues[number].comments if "fleet:claim=" in c.body]
            assert [c.user for c in comments] == ["fleet-east", "fleet-west"] and "taken" in comments[1].body
            # the orphaned agent of the dead orchestrator is stopped here, as an operator would
            handle = await east.runner.attach(run_id)
            await handle.stop()
            await east.runner.cleanup(run_id)


async def test_a_holder_that_lost_its_lease_stops_its_run_and_posts_nothing_more(tmp_path: Path,
                                                                                   repo: Path) -> None:
    from test_orchestrator import approve_new_issue, fleet, make_config

    from fleet_tui.forge.local import LocalForge
    from fleet_tui.model import Notice, RunState

    config = make_config(tmp_path, SLOW)
    config = config.model_copy(update={"forge": config.forge.model_copy(update={"claim_lease_s": 5.0})})
    async with fleet(tmp_path, repo, config) as orch:
        number = await approve_new_issue(orch)
        notices: list[str] = []
        stream = orch.events()

        async def collect() -> None:
            async for event in stream:
                if isinstance(event, Notice):
                    notices.append(event.message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            tg.start_soon(orch.run)
            await wait_for(lambda: len(orch.supervisor) == 1, 20, "the dev run live")
            [run] = orch.supervisor.live_runs()
            before = (await orch.forge.get_issue(number)).comments
            # another orchestrator (cut off from this one, say) saw the lease expire and took the issue over
            async with LocalForge(repo) as other:
                seen = await other.get_claim(number)
                assert seen is not None and seen.holder == orch.ctx.claims.holder
                assert await other.replace_claim(seen, "fleet-elsewhere", "dev-elsewhere", lease_s=5) is not None
            await wait_for(lambda: not len(orch.supervisor), 10, "the run stopped")
            await orch.shutdown()
            tg.cancel_scope.cancel()
        ended = orch.journal.get_run(run.run_id)
        assert ended.state == RunState.LOST and "another orchestrator took" in ended.reason
        assert any(f"issue #{number}: another orchestrator took the claim over" in n for n in notices)
        issue = await orch.forge.get_issue(number)
        assert issue.comments == before and "fleet:needs-human" not in issue.labels
        assert (await orch.forge.get_claim(number)).holder == "fleet-elsewhere"  # type: ignore[union-attr]
        assert orch.observer.claim_for(number, None) is None


async def test_a_claim_is_held_while_the_issue_is_worked_and_released_when_its_pr_is_merged(tmp_path: Path,
                                                                                           repo: Path) -> None:
    from test_orchestrator import approve_new_issue, fleet, make_config, run_once

    async with fleet(tmp_path, repo, make_config(tmp_path, QUICK)) as orch:
        number = await approve_new_issue(orch)
        await run_once(orch)
        lease = await orch.forge.get_claim(number)
        assert lease is not None and lease.holder == orch.ctx.claims.holder  # PR open, QA passed: still held
        [pull] = await orch.forge.list_pulls()
        await orch.forge.merge_as_human(pull.number)  # the human merges; the PR closes the issue
        await run_once(orch)
        assert await orch.forge.get_claim(number) is None
        assert orch.ctx.claims.held == {}
        # a PR closed without merging: the issue stays open and in progress, the claim is released, and the
        # label alone keeps other orchestrators off (they take over only a lease seen expired)
        second = await approve_new_issue(orch, "Add a switch", "Add --switch.")
        await run_once(orch)
        assert await orch.forge.get_claim(second) is not None
        [pull] = await orch.forge.list_pulls()
        await orch.forge.close_issue(pull.number)
        await run_once(orch)
        assert await orch.forge.get_claim(second) is None
        issue = await orch.forge.get_issue(second)
        assert issue.state == "open" and orch.config.labels.in_progress in issue.labels
