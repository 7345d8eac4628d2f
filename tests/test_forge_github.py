"""The GitHub forge against the fake GitHub server: conditional requests, rate limits, retries without
duplicates, approver verification, and the absence of any request that lands or accepts a PR."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet_tui.forge.base import ForgeError, RateLimitedError, judge_approval, marker, standing_label_event
from fleet_tui.model import CIState, RateLimit
from fake_github import (
    APP_LOGIN,
    FLEET_LOGIN,
    NAME,
    OPERATOR_LOGIN,
    OPERATOR_TOKEN,
    OUTSIDER_LOGIN,
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
        full = (await rest.pulls.async_get(OWNER, NAME, 4)).parsed_data
        assert full.mergeable is True and full.additions == 10
        files = (await rest.pulls.async_list_files(OWNER, NAME, 4)).parsed_data
        assert [f.filename for f in files] == ["a.py", "b.py"]
        review = (await rest.pulls.async_create_review(OWNER, NAME, 4, body="ok", event="COMMENT",
                                                       commit_id=full.head.sha)).parsed_data
        assert review.state == "COMMENTED"
        assert (await rest.pulls.async_list_reviews(OWNER, NAME, 4)).parsed_data[0].id == review.id
        assert (await rest.pulls.async_list_review_comments(OWNER, NAME, 4)).parsed_data == []
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
        assert all(r.status == 200 for r in first) and any("page" in r.query for r in first)
        remaining = forge.rate_limit.remaining
        server.reset_requests()
        await cycle()
        again = server.calls()
        assert again and {r.status for r in again} == {304}
        assert all(r.method == "GET" and "if-none-match" in r.headers for r in again)
        assert forge.rate_limit.remaining == remaining
        assert 0.4 < forge.rate_limit.not_modified_share < 1.0
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
        seen = [(await forge.get_pull(pull.number)).mergeable for _ in range(3)]
        assert seen == [None, None, True]


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
        assert server.calls()[0].path == "/user"
        assert forge.git_url.endswith(f"/{OWNER}/{NAME}.git") and "api" not in forge.git_url
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
                          'api_url = "https://ghe.example/api/v3/"\ntimeout_s = 7\n')
    forge = GitHubForge.from_config(config, "t", operator_token="o", write_spacing=0.0)
    assert forge.repo == "octo/demo" and forge.timeout == 7 and forge.fleet_is_separate
    assert forge.base_url == "https://ghe.example/api/v3/"
    assert forge.git_url == "https://ghe.example/octo/demo.git"
