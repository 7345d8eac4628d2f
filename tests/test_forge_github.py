"""The GitHub forge against the fake GitHub server: conditional requests, rate limits, retries without
duplicates, approver verification, and the absence of any request that lands or accepts a PR."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_tui.forge.base import ForgeError, RateLimitedError, judge_approval, marker, standing_label_event
from fleet_tui.model import CIState, RateLimit
from fake_github import (
    APP_ID,
    APP_LOGIN,
    APP_SLUG,
    FLEET_LOGIN,
    FLEET_TOKEN,
    INSTALLATION_ID,
    NAME,
    OPERATOR_LOGIN,
    OPERATOR_TOKEN,
    OUTSIDER_LOGIN,
    OUTSIDER_TOKEN,
    OWNER,
    FakeGitHub,
    open_github_forge,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def seed(server: FakeGitHub) -> None:
    server.add_issue("first", "do one thing", labels=["proposed"])
    server.add_issue("second", "do another", labels=["approved"], user=OPERATOR_LOGIN)
    server.add_comment(1, "a human remark")
    server.close(2)
    server.add_issue("third", "")
    pull = server.add_pull("a change", "fleet/3-third", additions=10, deletions=2, files=("a.py", "b.py"))
    server.add_status(pull.head_sha, "success")


def test_githubkit_imports_with_pinned_hishel() -> None:
    code = ("import importlib.metadata as m, githubkit, hishel; from githubkit import GitHub;"
            "from githubkit.cache import MemCacheStrategy; MemCacheStrategy();"
            "print(m.version('hishel'))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().split(".")[0]) < 2


async def test_typed_githubkit_models_parse_every_route(tmp_path: Path) -> None:
    """Fidelity: each reply the fake serves parses into githubkit's typed models."""
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        server.apply_label(1, "approved", APP_LOGIN)
        server.add_check_run(server.pulls[4].head_sha, "tests", conclusion="failure")
        server.create_branch("fleet/9-x", {"x.py": "x = 1\n"})
        rest = forge._ident().github.rest
        issues = (await rest.issues.async_list_for_repo(OWNER, NAME, state="all")).parsed_data
        assert {i.title for i in issues} >= {"first", "second", "third"}
        assert issues[0].labels is not None
        issue = (await rest.issues.async_get(OWNER, NAME, 1)).parsed_data
        assert issue.title == "first" and issue.user is not None and issue.user.login == OPERATOR_LOGIN
        comments = (await rest.issues.async_list_comments(OWNER, NAME, 1)).parsed_data
        assert comments[0].body == "a human remark"
        timeline = (await rest.issues.async_list_events_for_timeline(OWNER, NAME, 2)).parsed_data
        assert [type(e).__name__ for e in timeline] == ["LabeledIssueEvent", "StateChangeIssueEvent"]
        labeled = (await rest.issues.async_list_events_for_timeline(OWNER, NAME, 1)).parsed_data[-1]
        assert labeled.performed_via_github_app is not None and labeled.performed_via_github_app.slug == "fleet-app"
        labels = (await rest.issues.async_list_labels_for_repo(OWNER, NAME)).parsed_data
        assert {label.name for label in labels} == {"proposed", "approved"}
        created = (await rest.issues.async_create(OWNER, NAME, title="new", body="b")).parsed_data
        assert created.number == 5
        comment = (await rest.issues.async_create_comment(OWNER, NAME, 5, body="hello")).parsed_data
        assert comment.body == "hello"
        added = (await rest.issues.async_add_labels(OWNER, NAME, 5, labels=["x"])).parsed_data
        assert [label.name for label in added] == ["x"]
        assert (await rest.issues.async_remove_label(OWNER, NAME, 5, "x")).parsed_data == []
        label = (await rest.issues.async_create_label(OWNER, NAME, name="y", color="00ff00")).parsed_data
        assert label.name == "y"
        pulls = (await rest.pulls.async_list(OWNER, NAME)).parsed_data
        assert pulls[0].head.ref == "fleet/3-third" and pulls[0].base.repo.full_name == "octo/demo"
        pr = (await rest.pulls.async_create(OWNER, NAME, title="t", body="b", head="fleet/9-x", base="main")).parsed_data
        assert pr.additions == 1 and pr.changed_files == 1
        computing = (await rest.pulls.async_get(OWNER, NAME, 4)).parsed_data
        assert computing.mergeable is None and computing.mergeable_state == "unknown"
        full = (await rest.pulls.async_get(OWNER, NAME, 4)).parsed_data
        assert full.mergeable is True and full.additions == 10
        assert full.mergeable_state == "unstable"  # a check that is not required failed
        repo = (await rest.repos.async_get(OWNER, NAME)).parsed_data
        assert repo.default_branch == "main" and repo.clone_url.startswith("http://localhost:")
        server.protect("main", contexts=["tests"], strict=True)
        branch = (await rest.repos.async_get_branch(OWNER, NAME, "main")).parsed_data
        assert branch.protected and branch.protection.required_status_checks.contexts == ["tests"]
        required = (await forge._ident(as_operator=True).github.rest.repos.async_get_status_checks_protection(
            OWNER, NAME, "main")).parsed_data
        assert required.strict is True and required.contexts == ["tests"]
        server.protect("release", contexts=["tests"], strict=True, required_reviews=1, ruleset=True)
        rules = (await rest.repos.async_get_branch_rules(OWNER, NAME, "release")).parsed_data
        assert [r.type for r in rules] == ["required_status_checks", "pull_request"]
        server.add_review_comment(4, OUTSIDER_LOGIN, "why?", "a.py", 3)
        inline = (await rest.pulls.async_list_review_comments(OWNER, NAME, 4)).parsed_data
        assert [(c.path, c.line, c.user.login) for c in inline] == [("a.py", 3, OUTSIDER_LOGIN)]
        await rest.issues.async_update(OWNER, NAME, 1, title="first, renamed", body="new body")
        renamed = (await rest.issues.async_list_events_for_timeline(OWNER, NAME, 1)).parsed_data[-1]
        assert renamed.event == "renamed" and renamed.rename.from_ == "first"
        edits = await forge._ident().github.async_graphql(
            "query($owner: String!, $name: String!, $number: Int!) { repository(owner: $owner, name: $name) { "
            "issue(number: $number) { lastEditedAt userContentEdits(last: 50) { nodes { editedAt editor { login "
            "} } } } } }", {"owner": OWNER, "name": NAME, "number": 1})
        nodes = edits["repository"]["issue"]["userContentEdits"]["nodes"]
        assert [n["editor"]["login"] for n in nodes] == [FLEET_LOGIN, OPERATOR_LOGIN]
        files = (await rest.pulls.async_list_files(OWNER, NAME, 4)).parsed_data
        assert [f.filename for f in files] == ["a.py", "b.py"]
        review = (await rest.pulls.async_create_review(OWNER, NAME, 4, body="ok", event="COMMENT",
                                                       commit_id=full.head.sha)).parsed_data
        assert review.state == "COMMENTED"
        assert (await rest.pulls.async_list_reviews(OWNER, NAME, 4)).parsed_data[0].id == review.id
        status = (await rest.repos.async_get_combined_status_for_ref(OWNER, NAME, full.head.sha)).parsed_data
        assert status.state == "success" and status.total_count == 1
        runs = (await rest.checks.async_list_for_ref(OWNER, NAME, full.head.sha)).parsed_data
        assert runs.check_runs[0].conclusion == "failure"
        perm = (await rest.repos.async_get_collaborator_permission_level(OWNER, NAME, OPERATOR_LOGIN)).parsed_data
        assert perm.permission == "admin"
        me = await rest.users.async_get_authenticated()
        assert me.parsed_data.login == FLEET_LOGIN and me.headers["x-oauth-scopes"] == "repo"
        rate = (await rest.rate_limit.async_get()).parsed_data
        assert rate.resources.core.limit == 5000


async def test_idle_poll_makes_only_304s_and_costs_no_points(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, per_page=2) as (forge, server):
        seed(server)

        async def cycle() -> None:
            await forge.list_issues(state="all")
            await forge.list_pulls()
            await forge.label_events(1)
            await forge.get_issue(1)

        await cycle()
        first = server.calls()
        # the PR is read twice (GitHub answers `mergeable: null` first); its unchanged CI then costs 304s
        assert [r.path for r in first if r.status != 200 and "/commits/" not in r.path] == []
        assert any("page" in r.query for r in first)
        remaining = forge.rate_limit.remaining
        server.reset_requests()
        await cycle()
        again = server.calls()
        assert again and {r.status for r in again} == {304}
        assert all(r.method == "GET" and "if-none-match" in r.headers for r in again)
        assert forge.rate_limit.remaining == remaining
        assert 0.3 < forge.rate_limit.not_modified_share < 1.0
        server.add_comment(3, "news")
        server.reset_requests()
        await cycle()
        assert [r.status for r in server.calls() if r.status != 304] == [200]  # only the page holding #3


async def test_listing_returns_issues_not_pulls_with_labels(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        assert [i.number for i in await forge.list_issues()] == [1, 3]
        assert [i.number for i in await forge.list_issues(labels=["proposed"])] == [1]
        assert [i.number for i in await forge.list_issues(state="closed")] == [2]
        issue = await forge.get_issue(1)
        assert issue.labels == ("proposed",) and issue.comments[0].body == "a human remark"


async def test_short_secondary_limit_waits_and_writes_exactly_once(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, max_wait=3.0) as (forge, server):
        seed(server)
        server.fault("POST", r"/comments$", "secondary", retry_after=1, status=429)
        comment = await forge.post_comment(1, "claimed", marker("run", "r1"))
        posts = server.calls("POST", r"/comments$")
        assert [r.status for r in posts] == [429, 201]
        assert posts[1].at - posts[0].at >= 0.9
        assert [c.body for c in server.issues[1].comments].count(comment.body) == 1


async def test_long_secondary_limit_pauses_the_queue_and_the_action_runs_after(tmp_path: Path) -> None:
    clock = FakeClock()
    seen: list[RateLimit] = []
    async with open_github_forge(tmp_path, clock=clock, max_wait=2.0) as (forge, server):
        forge.add_rate_listener(seen.append)
        seed(server)
        server.fault("POST", r"/labels$", "secondary", retry_after=120)
        with pytest.raises(RateLimitedError) as caught:
            await forge.add_labels(1, ["fleet:in-progress"])
        assert caught.value.until is not None
        assert abs(caught.value.until.timestamp() - (clock.now + 120)) < 2
        assert seen and seen[-1].paused_until == caught.value.until
        assert forge.pause_message().startswith("rate limited until ")
        before = len(server.calls())
        with pytest.raises(RateLimitedError):  # paused: nothing goes out
            await forge.list_issues()
        assert len(server.calls()) == before
        clock.now += 121
        await forge.add_labels(1, ["fleet:in-progress"])
        assert forge.rate_limit.paused_until is None and seen[-1].paused_until is None
        labeled = [e for e in server.issues[1].events if e.label == "fleet:in-progress"]
        assert len(labeled) == 1 and server.issues[1].labels == ["proposed", "fleet:in-progress"]


async def test_secondary_limits_back_off_exponentially(tmp_path: Path) -> None:
    clock = FakeClock()
    async with open_github_forge(tmp_path, clock=clock, max_wait=0.0, secondary_backoff=60.0) as (forge, server):
        seed(server)
        server.fault("GET", r"/issues$", "secondary", retry_after=None, times=2)
        waits = []
        for _ in range(2):
            with pytest.raises(RateLimitedError) as caught:
                await forge.list_issues()
            assert caught.value.until is not None
            waits.append(caught.value.until.timestamp() - clock.now)
            clock.now += waits[-1] + 1
        assert waits[0] == pytest.approx(60, abs=2) and waits[1] == pytest.approx(120, abs=2)
        assert len(await forge.list_issues()) == 2


async def test_exhausted_primary_limit_pauses_until_reset(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, max_wait=1.0) as (forge, server):
        seed(server)
        server.exhaust_primary(reset_in=1800)
        with pytest.raises(RateLimitedError) as caught:
            await forge.list_issues()
        assert caught.value.until is not None
        assert caught.value.until.timestamp() == pytest.approx(server.rate_reset + 1, abs=2)
        assert forge.rate_limit.remaining == 0


async def test_comment_retry_after_a_5xx_that_landed_never_duplicates(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        text = marker("run", "r-42")
        server.fault("POST", r"/issues/1/comments$", status=502, apply=True)
        first = await forge.post_comment(1, "dev run started", text)
        again = await forge.post_comment(1, "dev run started", text)
        assert first.id == again.id
        assert len([c for c in server.issues[1].comments if text in c.body]) == 1
        assert len(server.calls("POST", r"/comments$")) == 1


async def test_pull_creation_retry_after_a_5xx_that_landed_never_duplicates(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        sha = server.create_branch("fleet/1-thing", {"thing.py": "print('x')\n"})
        server.fault("POST", r"/pulls$", status=502, apply=True)
        pr = await forge.open_pull(title="Thing", body="closes #1", head="fleet/1-thing", base="main")
        same = await forge.open_pull(title="Thing", body="closes #1", head="fleet/1-thing", base="main")
        assert pr.number == same.number and pr.head_sha == sha and pr.files == ("thing.py",)
        assert len(server.pulls) == 1 and len(server.calls("POST", r"/pulls$")) == 1
        assert pr.html_url.endswith(f"/pull/{pr.number}")


async def test_server_errors_are_retried_then_a_visible_error(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, max_retries=2) as (forge, server):
        seed(server)
        server.fault("GET", r"/issues$", status=503, times=2)
        assert len(await forge.list_issues()) == 2
        assert [r.status for r in server.calls("GET", r"/issues$")] == [503, 503, 200]
        server.fault("GET", r"/issues/1$", status=502, times=99)
        with pytest.raises(ForgeError, match="failed 3 times"):
            await forge.get_issue(1)
        assert len(server.calls("GET", r"/issues/1$")) == 3
        assert (await forge.get_issue(3)).title == "third"  # the next call goes on


async def test_timeouts_are_retried(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, timeout=0.3) as (forge, server):
        seed(server)
        server.fault("GET", r"/issues$", "slow", delay=0.8)
        assert len(await forge.list_issues()) == 2
        assert len(server.calls("GET", r"/issues$")) == 2


async def test_writes_are_spaced(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, write_spacing=0.05) as (forge, server):
        seed(server)
        for name in ("a", "b", "c"):
            await forge.add_labels(3, [name])
        posts = server.calls("POST")
        assert len(posts) == 3
        assert all(b.at - a.at >= 0.045 for a, b in zip(posts, posts[1:], strict=False))


async def _approval(forge: Any, number: int, separate: bool = True) -> Any:
    event = standing_label_event(await forge.label_events(number), "approved")
    assert event is not None
    fleet = await forge.fleet_identity()
    return judge_approval(number, event, approvers=[OPERATOR_LOGIN], fleet_login=fleet.login,
                          fleet_is_separate=forge.fleet_is_separate)


async def test_approvals_by_anyone_but_an_approver_are_unverified(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        for n in range(5):
            server.add_issue(f"proposal {n}", labels=["proposed"])
        server.apply_label(1, "approved", OUTSIDER_LOGIN)
        server.apply_label(2, "approved", APP_LOGIN)
        server.apply_label(3, "approved", OPERATOR_LOGIN, via_app="some-integration")
        server.permissions[FLEET_LOGIN] = "admin"
        await forge.add_labels(4, ["approved"])  # the fleet's own identity
        await forge.add_labels(5, ["approved"], as_operator=True)  # the approve key
        verdicts = {n: await _approval(forge, n) for n in range(1, 6)}
        assert not verdicts[1].verified and "not an approver" in verdicts[1].reason
        assert not verdicts[2].verified and "Bot" in verdicts[2].reason
        assert not verdicts[3].verified and "some-integration" in verdicts[3].reason
        assert not verdicts[4].verified and "own identity" in verdicts[4].reason
        assert verdicts[5].verified and verdicts[5].event.actor.login == OPERATOR_LOGIN
        server.unapply_label(5, "approved", OPERATOR_LOGIN)
        assert standing_label_event(await forge.label_events(5), "approved") is None


async def test_label_events_survive_events_typed_models_reject(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        server.apply_label(2, "fleet:in-progress", FLEET_LOGIN)
        events = await forge.label_events(2)
        assert [(e.kind, e.label, e.actor.login) for e in events] == [
            ("labeled", "approved", OPERATOR_LOGIN), ("labeled", "fleet:in-progress", FLEET_LOGIN)]
        rest = forge._ident().github.rest
        response = await rest.issues.async_list_events(OWNER, NAME, 2)
        with pytest.raises(Exception):  # noqa: B017 - the library's own models reject real `closed` events
            response.parsed_data


async def test_ci_state_reads_statuses_and_check_runs(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        bare = server.add_pull("none", "fleet/a")
        pending = server.add_pull("pending", "fleet/b")
        server.add_check_run(pending.head_sha, "build", status="in_progress", conclusion=None)
        failing = server.add_pull("failing", "fleet/c")
        server.add_status(failing.head_sha, "success")
        server.add_check_run(failing.head_sha, "lint", conclusion="failure")
        green = server.add_pull("green", "fleet/d")
        server.add_status(green.head_sha, "success")
        server.add_check_run(green.head_sha, "tests", conclusion="skipped")
        states = {p.number: p.ci for p in await forge.list_pulls()}
        assert states == {bare.number: CIState.NONE, pending.number: CIState.PENDING,
                          failing.number: CIState.FAILURE, green.number: CIState.SUCCESS}


async def test_mergeable_unknown_while_github_computes_it(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        pull = server.add_pull("p", "fleet/p")
        server.set_mergeable_pending(pull.number, reads=2)
        assert (await forge.get_pull(pull.number)).mergeable is True  # read again until GitHub knows
        assert len(server.calls("GET", rf"/pulls/{pull.number}$")) == 3
        server.set_mergeable_pending(pull.number, reads=10)
        still = await forge.get_pull(pull.number)
        assert (still.mergeable, still.mergeable_state) == (None, "unknown")  # the caller asks again later


async def test_reviews_are_comments_only_and_nothing_lands_or_accepts_a_pull(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        server.create_branch("fleet/1-first", {"first.py": "one = 1\n"})
        pr = await forge.open_pull(title="First", body="b", head="fleet/1-first", base="main")
        review = await forge.post_review(pr.number, "looks fine", pr.head_sha)
        assert review.state == "COMMENTED"
        await forge.post_comment(pr.number, "qa round 1", marker("run", "qa1"))
        await forge.add_labels(1, ["approved"], as_operator=True)
        await forge.remove_label(1, "approved")
        await forge.remove_label(1, "approved")  # a missing label is not an error
        await forge.ensure_labels(["proposed", "fleet:needs-human"])
        await forge.create_issue("proposal", "body", ["proposed"])
        await forge.close_issue(3)
        await forge.list_pulls()
        await forge.permission(OPERATOR_LOGIN)
        await forge.token_report()
        requests = server.calls()
        assert not [r for r in requests if r.path.endswith("/merge") or r.method == "PUT"]
        reviews = [r for r in requests if r.method == "POST" and r.path.endswith("/reviews")]
        assert reviews and all(r.body.get("event") == "COMMENT" for r in reviews)
        assert [r.status for r in requests if r.method == "DELETE"] == [200, 404]
    source = Path(__file__).parents[1].joinpath("fleet_tui/forge/github.py").read_text()
    assert "merge(" not in source and "APPROVE" not in source and "/merge" not in source


async def test_create_issue_retry_never_duplicates(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.fault("POST", r"/issues$", status=500, apply=True)
        issue = await forge.create_issue("Add a flag", "why and how", ["proposed"])
        assert issue.labels == ("proposed",)
        assert [i.title for i in server.issues.values()] == ["Add a flag"]


async def test_labels_ensure_and_missing(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        seed(server)
        assert await forge.missing_labels(["proposed", "fleet:needs-human"]) == ["fleet:needs-human"]
        assert await forge.ensure_labels(["proposed", "fleet:needs-human"]) == ["fleet:needs-human"]
        assert await forge.missing_labels(["fleet:needs-human"]) == []


async def test_identities_permission_and_quota(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        assert (await forge.fleet_identity()).login == FLEET_LOGIN
        assert (await forge.operator_identity()).login == OPERATOR_LOGIN
        assert forge.fleet_is_separate
        assert await forge.permission(OPERATOR_LOGIN) == "admin"
        assert await forge.permission(OUTSIDER_LOGIN) == "read"
        assert await forge.permission("nobody-here") == "none"
        rate = forge.rate_limit
        assert rate.limit == 5000 and rate.remaining == 5000 - 5
        assert rate.reset_at is not None and rate.reset_at > datetime.now(UTC)


async def test_token_report_warns_about_scopes_beyond_need(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.users[FLEET_LOGIN].scopes = "repo, workflow, admin:org, delete_repo"
        server.users[OPERATOR_LOGIN].scopes = None
        report = await forge.token_report()
        assert report["login"] == FLEET_LOGIN and report["kind"] == "classic"
        assert report["scopes"] == ["repo", "workflow", "admin:org", "delete_repo"]
        warned = " ".join(report["warnings"])
        assert all(scope in warned for scope in ("workflow", "admin:org", "delete_repo"))
        assert "'repo'" not in warned.split("only")[0]
        assert report["operator"]["kind"] == "fine-grained"


async def test_bad_token_is_a_readable_error(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, token="not-a-known-token", operator_token=None) as (forge, server):
        with pytest.raises(ForgeError, match="refused"):
            await forge.fleet_identity()
        assert not forge.fleet_is_separate


async def test_enterprise_base_url_and_operator_token(tmp_path: Path) -> None:
    server = FakeGitHub(tmp_path, git=False).start()
    try:
        from fleet_tui.forge.github import GitHubForge

        forge = GitHubForge(f"{OWNER}/{NAME}", token=OPERATOR_TOKEN, base_url=server.url + "api/v3", timeout=5)
        async with forge:
            assert (await forge.fleet_identity()).login == OPERATOR_LOGIN
            source = await forge.git_source()
        assert server.calls()[0].path == "/user"
        assert server.calls()[1].path == f"/repos/{OWNER}/{NAME}"
        assert source.url == server.reported_clone_url and "api" not in source.url
    finally:
        server.stop()


async def test_push_branch_uses_a_header_from_the_environment(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        work = tmp_path / "ws"
        subprocess.run(["git", "clone", "-q", server.push_url, str(work)], check=True)
        subprocess.run(["git", "checkout", "-q", "-b", "fleet/7-x"], cwd=work, check=True)
        (work / "x.py").write_text("x = 7\n")
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "x"], cwd=work, check=True)
        sha = await forge.push_branch(work, "fleet/7-x")
        assert server.branch_sha("fleet/7-x") == sha
        assert "test-token" not in (work / ".git" / "config").read_text()
        pr = await forge.open_pull(title="x", body="", head="fleet/7-x", base="main")
        assert pr.head_sha == sha and pr.additions == 1


def test_from_config_builds_a_github_forge() -> None:
    from fleet_tui.config import parse_config
    from fleet_tui.forge.github import GitHubForge

    config = parse_config('[forge]\nkind = "github"\nrepo = "octo/demo"\n'
                          'api_url = "https://ghe.example/api/v3/"\ntimeout_s = 7\nsettle_s = 2\n')
    forge = GitHubForge.from_config(config, "t", operator_token="o", write_spacing=0.0)
    assert forge.repo == "octo/demo" and forge.timeout == 7 and forge.fleet_is_separate
    assert forge.base_url == "https://ghe.example/api/v3/"
    assert forge.git_url is None and forge.settle_s == 2  # git goes to the clone_url the API reports
    pushed = parse_config('[forge]\nkind = "github"\nrepo = "octo/demo"\npush_url = "https://git.example/o/d.git"\n')
    assert GitHubForge.from_config(pushed, "t").git_url == "https://git.example/o/d.git"


# --- GitHub App installation auth -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> list[tuple[bytes, bytes]]:
    """Two RSA key pairs as (private PEM, public PEM): the App's key and one GitHub does not know."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pairs = []
    for _ in range(2):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        pairs.append((private, public))
    return pairs


def write_key(tmp_path: Path, data: bytes, mode: int = 0o600, name: str = "app.pem") -> Path:
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have taken bits off
    return path


def app_config(api_url: str, key_path: Path, installation_id: int | None = INSTALLATION_ID) -> Any:
    from fleet_tui.config import FleetConfig, ForgeConfig

    return FleetConfig(forge=ForgeConfig(kind="github", repo=f"{OWNER}/{NAME}", api_url=api_url, app_id=APP_ID,
                                         app_installation_id=installation_id, app_private_key_path=str(key_path)))


@asynccontextmanager
async def open_app_forge(tmp_path: Path, private: bytes, public: bytes, *, installation_id: int | None =
                         INSTALLATION_ID, **app_options: Any) -> AsyncIterator[tuple[Any, FakeGitHub]]:
    """A `GitHubForge` built by `from_config` for an App installation (the operator keeps a token for the
    approve key), pushing over HTTP to a fake whose App verifies JWTs against `public`."""
    from fleet_tui.forge.github import GitHubForge

    server = FakeGitHub(tmp_path).start()
    try:
        server.register_app(public, **app_options)
        config = app_config(server.url, write_key(tmp_path, private), installation_id)
        forge = GitHubForge.from_config(config, "", operator_token=OPERATOR_TOKEN, git_url=server.git_http_url,
                                        write_spacing=0.0, retry_backoff=0.01, timeout=5.0)
        async with forge:
            yield forge, server
    finally:
        server.stop()


def assert_clean(message: str, private: bytes) -> None:
    """A message fit for the operator: no traceback, no key material."""
    assert "Traceback" not in message and "PRIVATE KEY" not in message
    body = [line for line in private.decode().splitlines() if "-----" not in line]
    assert not any(chunk in message for line in body for chunk in (line[:16], line[-16:]))


async def test_app_installation_writes_as_its_bot(tmp_path: Path, rsa_keys: list[tuple[bytes, bytes]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import fleet_tui.git

    private, public = rsa_keys[0]
    git_calls: list[tuple[tuple[str, ...], dict[str, str]]] = []
    real_git = fleet_tui.git.git

    async def recording_git(*args: str, cwd: Path | str, env: dict[str, str] | None = None, **kw: Any) -> str:
        git_calls.append((args, dict(env or {})))
        return await real_git(*args, cwd=cwd, env=env, **kw)

    monkeypatch.setattr(fleet_tui.git, "git", recording_git)
    async with open_app_forge(tmp_path, private, public) as (forge, server):
        me = await forge.fleet_identity()
        assert (me.login, me.type) == (APP_LOGIN, "Bot") and forge.fleet_is_separate
        issue = await forge.create_issue("Add a flag", "why and how", ["proposed"])
        await forge.post_comment(issue.number, "claimed", marker("run", "r1"))
        await forge.add_labels(issue.number, ["approved"])  # the fleet labels its own issue

        work = tmp_path / "ws"
        subprocess.run(["git", "clone", "-q", server.push_url, str(work)], check=True)
        subprocess.run(["git", "checkout", "-q", "-b", "fleet/1-flag"], cwd=work, check=True)
        (work / "flag.py").write_text("FLAG = True\n")
        subprocess.run(["git", "add", "-A"], cwd=work, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "flag"], cwd=work, check=True)
        sha = await forge.push_branch(work, "fleet/1-flag")
        pr = await forge.open_pull(title="Add a flag", body="closes #1", head="fleet/1-flag", base="main")
        assert server.branch_sha("fleet/1-flag") == sha == pr.head_sha and pr.author.login == APP_LOGIN

        # every write to the repository went as the bot, with an installation token; the JWT only minted
        writes = [r for r in server.calls() if r.method in ("POST", "PATCH", "PUT", "DELETE")
                  and not r.path.startswith("/app/")]
        assert writes and {(r.login, r.auth) for r in writes} == {(APP_LOGIN, "installation")}
        assert any(r.path.endswith("/git-receive-pack") and r.status == 200 for r in writes)
        assert {r.path for r in server.calls() if r.auth == "jwt"} <= {
            "/app", f"/app/installations/{INSTALLATION_ID}/access_tokens"}
        mints = server.calls("POST", r"/access_tokens$")
        assert [m.status for m in mints] == [201, 201]  # one for the API, one for git push
        assert all(m.body.get("repositories") == [NAME] for m in mints)
        assert server.issues[issue.number].user == APP_LOGIN
        assert [(c.user, c.via_app) for c in server.issues[issue.number].comments] == [(APP_LOGIN, APP_SLUG)]
        assert server.issues[pr.number].user == APP_LOGIN

        # the push token: in an http.extraheader from the environment, for code only, never in an argument
        pushes = [(args, env) for args, env in git_calls if args[0] == "push"]
        assert len(pushes) == 1
        args, env = pushes[0]
        minted = set(server.installation_tokens)
        assert not any(token in arg for token in minted for arg in args)
        assert server.git_http_url in args and "@" not in server.git_http_url
        header = env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: Basic ")
        push_token = base64.b64decode(header).decode().partition(":")[2]
        grant = server.installation_tokens[push_token]
        assert grant.permissions == {"contents": "write", "metadata": "read"} and grant.repositories == [NAME]
        assert not any(token in (work / ".git" / "config").read_text() for token in minted)

        # an approval label the bot applied never counts; the operator's does
        verdict = await _approval(forge, issue.number)
        assert not verdict.verified and verdict.event.actor.login == APP_LOGIN
        assert verdict.event.actor.type == "Bot" and verdict.event.actor.via_app == APP_SLUG
        await forge.remove_label(issue.number, "approved")
        await forge.add_labels(issue.number, ["approved"], as_operator=True)
        assert (await _approval(forge, issue.number)).verified

        report = await forge.token_report()
        assert (report["kind"], report["login"], report["type"]) == ("app", APP_LOGIN, "Bot")
        assert report["warnings"] == [] and report["installation_id"] == INSTALLATION_ID
        assert report["repository_selection"] == "selected"
        assert report["operator"]["login"] == OPERATOR_LOGIN


async def test_app_installation_is_looked_up_when_not_configured(tmp_path: Path,
                                                                rsa_keys: list[tuple[bytes, bytes]]) -> None:
    private, public = rsa_keys[0]
    async with open_app_forge(tmp_path, private, public, installation_id=None) as (forge, server):
        await forge.create_issue("t", "b")
        assert server.calls("GET", r"/installation$")[0].auth == "jwt"
        assert server.calls("POST", r"/access_tokens$")[0].path == f"/app/installations/{INSTALLATION_ID}/access_tokens"
        assert server.issues[1].user == APP_LOGIN


async def test_app_not_installed_on_the_repository_is_a_clear_error(tmp_path: Path,
                                                                   rsa_keys: list[tuple[bytes, bytes]]) -> None:
    private, public = rsa_keys[0]
    with pytest.raises(ForgeError, match=f"not installed on {OWNER}/{NAME}"):
        async with open_app_forge(tmp_path, private, public, installation_id=None, repositories=("other",)):
            pass


async def test_a_key_github_does_not_know_is_a_clear_error(tmp_path: Path,
                                                          rsa_keys: list[tuple[bytes, bytes]]) -> None:
    (private, _), (_, registered) = rsa_keys  # the App's key on GitHub was rotated
    async with open_app_forge(tmp_path, private, registered) as (forge, server):
        for action in (forge.fleet_identity, forge.list_issues, lambda: forge.create_issue("t", "b")):
            with pytest.raises(ForgeError) as caught:
                await action()
            message = str(caught.value)
            assert f"GitHub App {APP_ID} was refused" in message and "forge.app_private_key_path" in message
            assert "could not be decoded" in message
            assert_clean(message, private)
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
        # each refused once, not retried as if the network had failed
        assert [r.status for r in server.calls("POST", r"/access_tokens$")] == [401, 401]
        assert not server.issues
        # the operator puts the current key in place: a new forge signs with it, not with a JWT left over
        from fleet_tui.forge.github import GitHubForge

        config = app_config(server.url, write_key(tmp_path, rsa_keys[1][0], name="current.pem"))
        async with GitHubForge.from_config(config, "", timeout=5.0) as fresh:
            assert (await fresh.fleet_identity()).login == APP_LOGIN


async def test_an_expired_jwt_names_the_clock(tmp_path: Path, rsa_keys: list[tuple[bytes, bytes]]) -> None:
    private, public = rsa_keys[0]
    async with open_app_forge(tmp_path, private, public) as (forge, server):
        server.clock_offset = 3600.0  # this machine's clock is an hour behind
        with pytest.raises(ForgeError, match="clock") as caught:
            await forge.list_issues()
        assert "'Expiration time' claim" in str(caught.value)
        assert_clean(str(caught.value), private)


def test_a_private_key_file_others_can_read_is_refused(tmp_path: Path,
                                                        rsa_keys: list[tuple[bytes, bytes]]) -> None:
    from fleet_tui.forge.github import GitHubForge

    private = rsa_keys[0][0]
    for mode, name in ((0o644, "a.pem"), (0o640, "b.pem"), (0o604, "c.pem")):
        path = write_key(tmp_path, private, mode, name)
        with pytest.raises(ForgeError, match="open to group or others") as caught:
            GitHubForge.from_config(app_config("http://127.0.0.1:9/", path), "")
        assert f"chmod 600 {path}" in str(caught.value)
        assert_clean(str(caught.value), private)
    with pytest.raises(ForgeError, match="cannot read"):
        GitHubForge.from_config(app_config("http://127.0.0.1:9/", tmp_path / "missing.pem"), "")


def test_a_file_that_is_no_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fleet_tui.forge.github import AppCredentials, GitHubForge

    garbage = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretsecretsecret\n-----END RSA PRIVATE KEY-----\n"
    with pytest.raises(ForgeError, match="not a PEM private key") as caught:
        GitHubForge.from_config(app_config("http://127.0.0.1:9/", write_key(tmp_path, garbage)), "")
    assert "secretsecret" not in str(caught.value)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ForgeError, match="not an RSA key"):
        GitHubForge.from_config(app_config("http://127.0.0.1:9/", write_key(tmp_path, ec_key, name="ec.pem")), "")
    credentials = AppCredentials(APP_ID, INSTALLATION_ID, garbage.decode())
    assert "secret" not in repr(credentials)
    with pytest.raises(ForgeError, match="not a PEM private key"):
        GitHubForge(f"{OWNER}/{NAME}", app=credentials)


def test_an_app_id_without_a_key_path_is_refused(tmp_path: Path) -> None:
    from fleet_tui.config import FleetConfig, ForgeConfig
    from fleet_tui.forge.github import GitHubForge

    config = FleetConfig(forge=ForgeConfig(kind="github", repo=f"{OWNER}/{NAME}", app_id=APP_ID))
    with pytest.raises(ForgeError, match="app_private_key_path is empty"):
        GitHubForge.from_config(config, "a-token-that-must-not-be-used")


async def test_app_report_warns_about_permissions_beyond_need(tmp_path: Path,
                                                             rsa_keys: list[tuple[bytes, bytes]]) -> None:
    private, public = rsa_keys[0]
    broad = {"issues": "write", "pull_requests": "write", "contents": "write", "metadata": "read",
             "workflows": "write", "administration": "write"}
    async with open_app_forge(tmp_path, private, public, permissions=broad,
                              repository_selection="all") as (forge, _server):
        report = await forge.token_report()
        warned = " ".join(report["warnings"])
        assert report["kind"] == "app" and len(report["warnings"]) == 3
        assert "'workflows'" in warned and "'administration'" in warned and "all of octo's" in warned


# --- readiness, code access, edits, settling writes, polling cost ---------------------------------


async def test_readiness_follows_required_checks_and_mergeable_state(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.protect("main", contexts=["build"], strict=True)
        pull = server.add_pull("p", "fleet/r")
        sha = pull.head_sha
        server.add_check_run(sha, "build", status="in_progress", conclusion=None)
        server.add_status(sha, "failure", context="lint")

        async def readiness() -> tuple[bool | None, str, CIState, str]:
            got = await forge.get_pull(pull.number)
            return got.mergeable, got.mergeable_state, got.ci, got.ci_summary

        assert await readiness() == (True, "blocked", CIState.PENDING,
                                     "0/2 checks passed, 1 failing: lint, 1 pending: build (required: build)")
        server.set_check_run(sha, "build", conclusion="success")  # lint still fails, but is not required
        assert (await readiness())[1:3] == ("unstable", CIState.SUCCESS)
        server.set_check_run(sha, "build", conclusion="failure")
        assert (await readiness())[1:3] == ("blocked", CIState.FAILURE)
        server.set_check_run(sha, "build", conclusion="success")
        server.add_status(sha, "success", context="lint")
        assert await readiness() == (True, "clean", CIState.SUCCESS, "2/2 checks passed (required: build)")
        server.move_branch("main")  # strict protection: the branch must be brought up to date
        assert (await readiness())[:2] == (True, "behind")
        server.protect("main", contexts=["build", "deploy"])
        ready = await readiness()
        assert ready[2] == CIState.PENDING and "1 required not reported: deploy" in ready[3]


async def test_reviews_and_inline_comments_of_other_users_are_read(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.protect("main", required_reviews=1)
        pull = server.add_pull("p", "fleet/q")
        server.add_review(pull.number, OUTSIDER_LOGIN, "CHANGES_REQUESTED", "Not like this.")
        server.add_review_comment(pull.number, OUTSIDER_LOGIN, "Off by one.", "app.py", 12)
        got = await forge.get_pull(pull.number)
        assert [(r.author.login, r.author.type, r.state, r.body) for r in got.reviews] == [
            (OUTSIDER_LOGIN, "User", "CHANGES_REQUESTED", "Not like this.")]
        assert [(c.author.login, c.path, c.line, c.body) for c in got.review_comments] == [
            (OUTSIDER_LOGIN, "app.py", 12, "Off by one.")]
        assert got.mergeable_state == "blocked"


async def test_git_source_is_the_reported_clone_url_with_the_token_in_a_scoped_header(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        source = await forge.git_source()
        assert source.url == server.reported_clone_url and "localhost" in source.url
        assert source.url.split("//")[1].split("/")[0] != server.url.split("//")[1].split("/")[0]
        assert FLEET_TOKEN not in source.url and FLEET_TOKEN not in repr(source)
        host = source.url.split("/" + OWNER)[0]
        assert source.env["GIT_CONFIG_KEY_0"] == f"http.{host}/.extraHeader"
        header = source.env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: Basic ")
        assert base64.b64decode(header).decode() == f"x-access-token:{FLEET_TOKEN}"
    async with open_github_forge(tmp_path / "2", git_url=str(tmp_path / "2" / "fake-github" / "demo.git")
                                 ) as (forge, server):
        source = await forge.git_source()
        assert (source.url, dict(source.env)) == (server.push_url, {})  # forge.push_url wins; no token needed
    async with open_github_forge(tmp_path / "3", git_url="https://fleet:secret@git.example/o/d.git") as (forge, _):
        with pytest.raises(ForgeError, match="carries credentials"):
            await forge.git_source()


async def test_check_push_access_says_what_to_fix(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        await forge.check_push_access()
        assert server.calls(path=r"/info/refs$")[-1].login == FLEET_LOGIN
    async with open_github_forge(tmp_path / "2", token=OUTSIDER_TOKEN) as (forge, _):
        with pytest.raises(ForgeError, match="not push .*Contents read/write.*'repo' scope"):
            await forge.check_push_access()
    async with open_github_forge(tmp_path / "3") as (forge, server):
        forge.git_url = server.reported_clone_url.replace("/demo.git", "/nothing-here.git")
        with pytest.raises(ForgeError, match="no repository at .*forge.push_url"):
            await forge.check_push_access()
        forge.git_url = "http://127.0.0.1:9/octo/demo.git"
        with pytest.raises(ForgeError, match="cannot reach .*network"):
            await forge.check_push_access()
        forge._token = "not-a-token"  # what git sees with a revoked token
        forge.git_url = None
        forge._ident().token = "not-a-token"
        with pytest.raises(ForgeError, match="refused the fleet's token") as caught:
            await forge.check_push_access()
        assert "not-a-token" not in str(caught.value)


async def test_default_branch_is_what_the_repository_says(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, server_options={"default_branch": "trunk"}) as (forge, server):
        assert await forge.default_branch() == "trunk"
        assert await forge.branch_exists("trunk")
        assert server.calls("GET", rf"/repos/{OWNER}/{NAME}$")


async def test_title_and_body_edits_come_from_the_timeline_and_graphql(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.add_issue("Proposal", "Do it.", labels=["approved"])
        server.edit_issue(1, title="Proposal, bigger", user=OUTSIDER_LOGIN)
        server.edit_issue(1, body="Do it all.", user=OUTSIDER_LOGIN)
        edits = await forge.text_edits(1)
        assert [(e.field, e.actor.login) for e in edits] == [("title", OUTSIDER_LOGIN), ("body", OUTSIDER_LOGIN)]
        assert server.calls("POST", r"/graphql$")
        with pytest.raises(ForgeError, match="as the fleet or the operator"):
            await forge.edit_issue(1, title="x", as_user=OUTSIDER_LOGIN)


@pytest.mark.parametrize("kind", ["comment", "review"])
async def test_a_write_that_lands_after_the_client_gave_up_is_not_sent_again(tmp_path: Path, kind: str) -> None:
    """GitHub applies the write 1.5 s after the request timed out (1 s): the look-ups every settle_s (1 s) over a
    window longer than the timeout find it, and the write is not sent again."""
    async with open_github_forge(tmp_path, timeout=1.0, settle_s=1.0) as (forge, server):
        pull = server.add_pull("p", "fleet/s")
        path = rf"/issues/{pull.number}/comments$" if kind == "comment" else rf"/pulls/{pull.number}/reviews$"
        server.fault("POST", path, kind="slow", delay=2.5)
        if kind == "comment":
            await forge.post_comment(pull.number, "Claimed.", marker("run", "r1"))
            written = server.issues[pull.number].comments
        else:
            await forge.post_review(pull.number, "Looks fine.", pull.head_sha)
            written = server.pulls[pull.number].reviews
        assert len(written) == 1
        assert len(server.calls("POST", path)) == 1


async def test_without_settling_the_late_write_is_duplicated(tmp_path: Path) -> None:
    """The hazard the settle window exists for (settle_s = 0 looks only once, at once)."""
    async with open_github_forge(tmp_path, timeout=1.0, settle_s=0.0, retry_backoff=0.01) as (forge, server):
        server.add_issue("x")
        server.fault("POST", r"/issues/1/comments$", kind="slow", delay=2.5)
        await forge.post_comment(1, "Claimed.", marker("run", "r1"))
        written = server.issues[1].comments
        for _ in range(100):
            if len(written) == 2:
                break
            await anyio.sleep(0.05)
        assert len(written) == 2


async def test_polling_cost_does_not_grow_with_open_pulls(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, server_options={"git": False}) as (forge, server):
        humans = [server.add_pull(f"human {n}", f"human/{n}", user=OUTSIDER_LOGIN) for n in range(150)]
        fleet = [server.add_pull(f"fleet {n}", f"fleet/{n}-x") for n in range(3)]
        for pull in fleet:
            server.add_status(pull.head_sha, "success")
        mine = {p.head for p in fleet}
        first = await forge.list_pulls(details_for=mine)
        assert len(first) == 153 and all(p.mergeable is True for p in first if p.head in mine)
        server.reset_requests()
        await forge.list_pulls(details_for=mine)
        idle = server.calls()
        assert len(idle) <= 8 and {r.status for r in idle} == {304}
        server.edit_issue(humans[0].number, title="renamed by its author", user=OUTSIDER_LOGIN)
        server.reset_requests()
        await forge.list_pulls(details_for=mine)
        assert [r.status for r in server.calls() if r.status != 304] == [200]  # one changed page, one point
        server.reset_requests()
        await forge.list_pulls(details_for=mine)
        assert {r.status for r in server.calls()} == {304}  # and the cycle after it is free again
        server.add_review(fleet[0].number, OUTSIDER_LOGIN, "COMMENTED", "hm")
        server.reset_requests()
        pulls = {p.number: p for p in await forge.list_pulls(details_for=mine)}
        assert [r.body for r in pulls[fleet[0].number].reviews] == ["hm"]
        detailed = {r.path for r in server.calls() if r.status == 200}
        assert all(f"/pulls/{fleet[0].number}" in p or p.endswith("/pulls") for p in detailed)


async def test_one_pr_that_cannot_be_read_waits_and_the_poll_goes_on(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, server_options={"git": False}, max_retries=0) as (forge, server):
        fleet = [server.add_pull(f"fleet {n}", f"fleet/{n}-x") for n in range(3)]
        broken = fleet[1].number
        server.fault("GET", rf"/pulls/{broken}$", status=502, times=10)
        pulls = {p.number: p for p in await forge.list_pulls(details_for={p.head for p in fleet})}
        assert len(pulls) == 3
        assert pulls[broken].mergeable is None and pulls[broken].ci_summary.startswith("cannot read")
        assert all(pulls[p.number].mergeable is True for p in fleet if p.number != broken)


async def test_answers_from_the_etag_cache_hand_their_connection_back(tmp_path: Path) -> None:
    """More 304s than the connection pool holds: each one's connection must go back to the pool."""
    async with open_github_forge(tmp_path, timeout=3.0, max_retries=0) as (forge, server):
        server.add_issue("x", "y")
        for _ in range(130):
            assert (await forge.get_issue(1)).title == "x"
        assert len(server.calls(path=r"/issues/1$")) == 130
        assert {r.status for r in server.calls(path=r"/issues/1$")[1:]} == {304}


async def test_checks_a_ruleset_requires_count_like_protected_ones(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        server.protect("main", contexts=["build"], ruleset=True)
        pull = server.add_pull("p", "fleet/rules")
        server.add_status(pull.head_sha, "failure", context="lint")
        got = await forge.get_pull(pull.number)
        assert (got.ci, got.mergeable_state) == (CIState.PENDING, "blocked")
        assert "1 required not reported: build" in got.ci_summary
        server.set_check_run(pull.head_sha, "build", conclusion="success")
        got = await forge.get_pull(pull.number)
        assert (got.ci, got.mergeable_state) == (CIState.SUCCESS, "unstable")


async def test_check_runs_a_token_cannot_read_leave_ci_pending_with_the_reason(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path) as (forge, server):
        pull = server.add_pull("p", "fleet/no-checks")
        server.add_status(pull.head_sha, "success", context="ci/test")
        server.fault("GET", r"/check-runs$", status=403, times=10)
        got = await forge.get_pull(pull.number)
        assert got.ci == CIState.PENDING  # the unseen check runs may be failing
        assert "check runs not readable with this token" in got.ci_summary
        server.protect("main", contexts=["ci/test"])
        assert (await forge.get_pull(pull.number)).ci == CIState.SUCCESS  # every required check seen green
        bare = server.add_pull("q", "fleet/nothing-readable")
        got = await forge.get_pull(bare.number)
        assert got.ci == CIState.PENDING and "grant Checks" in got.ci_summary  # never "no CI" by mistake


async def test_a_forks_branch_named_like_the_fleets_gets_no_details(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, server_options={"git": False}) as (forge, server):
        ours = server.add_pull("ours", "fleet/1-x")
        theirs = server.add_pull("theirs", "fleet/1-x", user=OUTSIDER_LOGIN, fork=f"{OUTSIDER_LOGIN}/demo")
        pulls = {p.number: p for p in await forge.list_pulls(details_for={"fleet/1-x"})}
        assert pulls[ours.number].head_repo == f"{OWNER}/{NAME}" and pulls[ours.number].files == ("app.py",)
        assert pulls[theirs.number].head_repo == f"{OUTSIDER_LOGIN}/demo" and pulls[theirs.number].files == ()
        assert not server.calls("GET", rf"/pulls/{theirs.number}")


async def test_a_push_to_a_fleet_pr_is_read_again_until_github_knows_its_mergeability(tmp_path: Path) -> None:
    async with open_github_forge(tmp_path, server_options={"git": False}) as (forge, server):
        pull = server.add_pull("p", "fleet/2-y")
        await forge.list_pulls(details_for={"fleet/2-y"})
        new_sha = server.push_head(pull.number)
        server.reset_requests()
        [got] = await forge.list_pulls(details_for={"fleet/2-y"})
        assert (got.head_sha, got.mergeable, got.mergeable_state) == (new_sha, True, "clean")
        assert len(server.calls("GET", rf"/pulls/{pull.number}$")) == 2  # null first, then the answer
