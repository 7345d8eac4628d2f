"""The one contract every `Forge` backend keeps: the local forge and GitHub (through the fake server).

The `forge` fixture yields an open backend; `make_branch(forge, name, files)` puts a branch with those
files on it (one commit on top of the base branch) where the backend can see it, and returns its head sha.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet_tui.forge.base import Forge, ForgeError, NotFound, judge_approval, marker, standing_label_event
from fleet_tui.forge.local import LocalForge
from fleet_tui.git import git_sync

pytestmark = pytest.mark.anyio

BranchMaker = Callable[[str, dict[str, str]], Awaitable[str]]
_branch_makers: dict[int, BranchMaker] = {}
_bases: dict[int, str] = {}
_workspaces: dict[int, Path] = {}
_base_movers: dict[int, Callable[[dict[str, str]], None]] = {}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def init_repo(path: Path) -> Path:
    """A repository on `main` with one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git_sync("init", "-q", "-b", "main", cwd=path)
    (path / "README.md").write_text("# sample\n\nline one\nline two\n")
    (path / "app.py").write_text("def main():\n    return 1\n")
    git_sync("add", "-A", cwd=path)
    git_sync("commit", "-q", "-m", "initial", cwd=path)
    return path


def commit_branch(workspace: Path, name: str, files: dict[str, str], *, start: str = "origin/main") -> None:
    git_sync("checkout", "-q", "-B", name, start, cwd=workspace)
    for rel, text in files.items():
        target = workspace / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git_sync("add", "-A", cwd=workspace)
    git_sync("commit", "-q", "-m", f"work on {name}", cwd=workspace)


async def make_branch(forge: Forge, name: str, files: dict[str, str]) -> str:
    """Create branch `name` with `files` committed on top of the base, visible to the forge; its head sha."""
    return await _branch_makers[id(forge)](name, files)


def base_of(forge: Forge) -> str:
    return _bases[id(forge)]


def move_base(forge: Forge, files: dict[str, str]) -> None:
    """Someone else commits `files` on the base branch, where the forge sees it."""
    _base_movers[id(forge)](files)


def _open_github_factory() -> Any:
    if importlib.util.find_spec("fleet_tui.forge.github") is None:
        return None
    for module_name in ("fake_github", "tests.fake_github"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        factory = getattr(module, "open_github_forge", None)
        if factory is not None:
            return factory
    return None


def seed_base(workspace: Path) -> None:
    """The same files on the base branch as `init_repo` makes, so sizes compare across backends."""
    (workspace / "README.md").write_text("# sample\n\nline one\nline two\n")
    (workspace / "app.py").write_text("def main():\n    return 1\n")
    git_sync("add", "-A", cwd=workspace)
    git_sync("commit", "-q", "-m", "seed", cwd=workspace)


def _github_branch_maker(forge: Forge, server: Any, workspace: Path) -> BranchMaker:
    """Code reaches the fake through the served bare repository: the base is seeded there directly, a
    branch is committed in a clone and pushed by the forge's own `push_branch`."""
    git_sync("clone", "-q", server.push_url, str(workspace), cwd=workspace.parent)
    seed_base(workspace)
    git_sync("push", "-q", "origin", "HEAD:refs/heads/main", cwd=workspace)

    async def make(name: str, files: dict[str, str]) -> str:
        commit_branch(workspace, name, files)
        return await forge.push_branch(workspace, name)

    return make


@pytest.fixture(params=["local", "github"])
async def forge(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Forge]:
    if request.param == "local":
        repo = init_repo(tmp_path / "repo")
        workspace = tmp_path / "workspace"
        git_sync("clone", "-q", str(repo), str(workspace), cwd=tmp_path)
        async with LocalForge(repo, operator="alice") as local:

            async def make(name: str, files: dict[str, str]) -> str:
                commit_branch(workspace, name, files)
                return await local.push_branch(workspace, name)

            def move(files: dict[str, str]) -> None:
                for rel, text in files.items():
                    (repo / rel).write_text(text)
                git_sync("add", "-A", cwd=repo)
                git_sync("commit", "-q", "-m", "base moves", cwd=repo)

            _branch_makers[id(local)] = make
            _bases[id(local)] = "main"
            _workspaces[id(local)] = workspace
            _base_movers[id(local)] = move
            try:
                yield local
            finally:
                for table in (_branch_makers, _bases, _workspaces, _base_movers):
                    table.pop(id(local), None)
        return

    factory = _open_github_factory()
    if factory is None:
        pytest.skip("fleet_tui/forge/github.py or tests/fake_github.py (open_github_forge) is not there yet: "
                    "GitHub leg not run")
    async with factory(tmp_path) as (github, server):
        _branch_makers[id(github)] = _github_branch_maker(github, server, tmp_path / "workspace")
        _bases[id(github)] = "main"
        _workspaces[id(github)] = tmp_path / "workspace"
        _base_movers[id(github)] = lambda files: server.create_branch("main", files, base="main")
        try:
            yield github
        finally:
            for table in (_branch_makers, _bases, _workspaces, _base_movers):
                table.pop(id(github), None)


# issues -----------------------------------------------------------------------------------------


async def test_forge_satisfies_the_protocol(forge: Forge) -> None:
    assert isinstance(forge, Forge)
    assert forge.kind in ("local", "github")
    assert forge.repo


async def test_issues_are_created_listed_by_label_and_read_with_comments(forge: Forge) -> None:
    bug = await forge.create_issue("Crash on start", "It crashes.", ["bug", "proposed"])
    chore = await forge.create_issue("Tidy the docs", "Typos.", ["proposed"])
    plain = await forge.create_issue("Unlabelled", "Nothing.")
    assert bug.number != chore.number != plain.number
    assert set(bug.labels) == {"bug", "proposed"}
    assert bug.html_url and bug.html_url != chore.html_url

    proposed = {i.number for i in await forge.list_issues(labels=["proposed"])}
    assert proposed == {bug.number, chore.number}
    assert {i.number for i in await forge.list_issues(labels=["proposed", "bug"])} == {bug.number}
    assert {i.number for i in await forge.list_issues()} == {bug.number, chore.number, plain.number}

    await forge.post_comment(chore.number, "Which docs?", marker("run", "r1"))
    read = await forge.get_issue(chore.number)
    assert read.title == "Tidy the docs" and read.body == "Typos."
    assert [c.body.startswith("Which docs?") for c in read.comments] == [True]

    await forge.close_issue(plain.number)
    assert plain.number not in {i.number for i in await forge.list_issues()}
    assert {i.number for i in await forge.list_issues(state="closed")} == {plain.number}
    assert len(await forge.list_issues(state="all")) == 3
    assert (await forge.get_issue(plain.number)).state == "closed"


async def test_since_leaves_out_issues_not_updated_since(forge: Forge) -> None:
    issue = await forge.create_issue("Old news", "body", ["proposed"])
    later = datetime.now(UTC) + timedelta(days=1)
    earlier = datetime.now(UTC) - timedelta(days=3)
    assert await forge.list_issues(since=later) == []
    assert [i.number for i in await forge.list_issues(since=earlier)] == [issue.number]


async def test_unknown_issue_is_not_found(forge: Forge) -> None:
    with pytest.raises(NotFound):
        await forge.get_issue(9999)


# labels -----------------------------------------------------------------------------------------


async def test_labels_are_added_removed_and_their_actor_is_known(forge: Forge) -> None:
    operator = await forge.operator_identity()
    fleet = await forge.fleet_identity()
    issue = await forge.create_issue("Add dark mode", "Please.", ["proposed"])

    await forge.add_labels(issue.number, ["approved"], as_operator=True)
    await forge.add_labels(issue.number, ["fleet:in-progress"])
    assert set((await forge.get_issue(issue.number)).labels) == {"proposed", "approved", "fleet:in-progress"}

    await forge.remove_label(issue.number, "proposed")
    await forge.remove_label(issue.number, "never-there")  # not an error
    assert set((await forge.get_issue(issue.number)).labels) == {"approved", "fleet:in-progress"}

    events = await forge.label_events(issue.number)
    assert len({e.event_id for e in events}) == len(events)
    assert [(e.kind, e.label) for e in events] == [
        ("labeled", "proposed"), ("labeled", "approved"), ("labeled", "fleet:in-progress"),
        ("unlabeled", "proposed"),
    ]
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)

    approved = standing_label_event(events, "approved")
    assert approved is not None and approved.actor.login == operator.login
    assert approved.actor.type == "User"
    working = standing_label_event(events, "fleet:in-progress")
    assert working is not None and working.actor.login == fleet.login
    assert standing_label_event(events, "proposed") is None


async def test_relabel_by_someone_else_replaces_who_applied_it(forge: Forge) -> None:
    operator = await forge.operator_identity()
    fleet = await forge.fleet_identity()
    issue = await forge.create_issue("Relabel", "body")
    await forge.add_labels(issue.number, ["approved"], as_operator=True)
    await forge.remove_label(issue.number, "approved")
    await forge.add_labels(issue.number, ["approved"])
    standing = standing_label_event(await forge.label_events(issue.number), "approved")
    assert standing is not None and standing.actor.login == fleet.login != operator.login


async def test_ensure_labels_creates_missing_labels_only_once(forge: Forge) -> None:
    wanted = ["proposed", "approved", "fleet:needs-human"]
    assert set(await forge.missing_labels(wanted)) == set(wanted)
    assert set(await forge.ensure_labels(wanted)) == set(wanted)
    assert await forge.ensure_labels(wanted) == []
    assert await forge.missing_labels(wanted) == []
    assert await forge.ensure_labels([*wanted, "fleet:qa"]) == ["fleet:qa"]


# approval ---------------------------------------------------------------------------------------


async def test_approval_by_the_operator_counts_and_by_the_fleet_does_not(forge: Forge) -> None:
    operator = await forge.operator_identity()
    fleet = await forge.fleet_identity()
    separate = fleet.login.lower() != operator.login.lower()

    by_operator = await forge.create_issue("Approved by a human", "body", ["proposed"])
    await forge.add_labels(by_operator.number, ["approved"], as_operator=True)
    event = standing_label_event(await forge.label_events(by_operator.number), "approved")
    assert event is not None
    verdict = judge_approval(by_operator.number, event, approvers=[operator.login], fleet_login=fleet.login,
                             fleet_is_separate=separate)
    assert verdict.verified, verdict.reason
    assert await forge.permission(operator.login) in ("admin", "maintain", "write")

    if not separate:
        pytest.skip("this backend's fleet writes with the operator's own identity")
    by_fleet = await forge.create_issue("Approved by the fleet itself", "body", ["proposed"])
    await forge.add_labels(by_fleet.number, ["approved"])
    event = standing_label_event(await forge.label_events(by_fleet.number), "approved")
    assert event is not None
    verdict = judge_approval(by_fleet.number, event, approvers=[operator.login, fleet.login],
                             fleet_login=fleet.login, fleet_is_separate=True)
    assert not verdict.verified
    assert fleet.login in verdict.reason


# comments ---------------------------------------------------------------------------------------


async def test_a_marked_comment_posted_twice_is_posted_once(forge: Forge) -> None:
    issue = await forge.create_issue("Claim me", "body")
    tag = marker("run", "run-42")
    assert await forge.find_comment(issue.number, tag) is None
    first = await forge.post_comment(issue.number, "Claimed by the fleet.", tag)
    again = await forge.post_comment(issue.number, "Claimed by the fleet.", tag)
    assert again.id == first.id
    assert tag in first.body
    found = await forge.find_comment(issue.number, tag)
    assert found is not None and found.id == first.id
    other = await forge.post_comment(issue.number, "Second run.", marker("run", "run-43"))
    assert other.id != first.id
    comments = (await forge.get_issue(issue.number)).comments
    assert [c.id for c in comments] == [first.id, other.id]


# pull requests ----------------------------------------------------------------------------------


async def test_open_pull_twice_for_one_head_gives_one_pr(forge: Forge) -> None:
    base = base_of(forge)
    sha = await make_branch(forge, "fleet/7-dark-mode", {"theme.css": "body { color: #eee; }\n"})
    assert await forge.find_pull("fleet/7-dark-mode") is None
    first = await forge.open_pull(title="Dark mode", body="Closes #7", head="fleet/7-dark-mode", base=base)
    second = await forge.open_pull(title="Dark mode", body="Closes #7", head="fleet/7-dark-mode", base=base)
    assert second.number == first.number
    assert first.head_sha == sha
    found = await forge.find_pull("fleet/7-dark-mode")
    assert found is not None and found.number == first.number
    assert [p.number for p in await forge.list_pulls()] == [first.number]


async def test_list_pulls_shows_head_base_size_and_files(forge: Forge) -> None:
    base = base_of(forge)
    sha = await make_branch(forge, "fleet/8-docs", {
        "README.md": "# sample\n\nline one\nline 2\nline three\n",  # 1 line changed, 1 added
        "docs/guide.md": "one\ntwo\nthree\n",
    })
    opened = await forge.open_pull(title="Docs", body="More docs.", head="fleet/8-docs", base=base)
    assert opened.html_url
    [pull] = await forge.list_pulls()
    assert (pull.number, pull.head, pull.base, pull.head_sha) == (opened.number, "fleet/8-docs", base, sha)
    assert pull.state == "open"
    assert set(pull.files) == {"README.md", "docs/guide.md"}
    assert pull.changed_files == 2
    assert (pull.additions, pull.deletions) == (5, 1)
    assert pull.lines_changed == 6
    assert pull.title == "Docs" and pull.body == "More docs."
    got = await forge.get_pull(opened.number)
    assert got.head_sha == sha and got.files == pull.files


async def test_a_review_is_only_ever_a_comment(forge: Forge) -> None:
    base = base_of(forge)
    sha = await make_branch(forge, "fleet/9-fix", {"app.py": "def main():\n    return 2\n"})
    pull = await forge.open_pull(title="Fix", body="Fixes it.", head="fleet/9-fix", base=base)
    fleet = await forge.fleet_identity()
    review = await forge.post_review(pull.number, "Looks right; one nit.", sha)
    assert review.state == "COMMENTED"
    assert review.commit_id == sha
    [listed] = [p for p in await forge.list_pulls() if p.number == pull.number]
    assert [(r.state, r.body, r.author.login) for r in listed.reviews] == [
        ("COMMENTED", "Looks right; one nit.", fleet.login)]


def test_the_protocol_has_no_way_to_merge_or_approve() -> None:
    members = {name for name, _ in inspect.getmembers(Forge) if not name.startswith("_")}
    members |= set(getattr(Forge, "__annotations__", {}))
    assert {"list_issues", "add_labels", "open_pull", "post_review"} <= members  # the check sees methods
    forbidden = sorted(n for n in members if "merge" in n.lower() or "approve" in n.lower())
    assert forbidden == []
    review_params = inspect.signature(Forge.post_review).parameters
    assert set(review_params) == {"self", "number", "body", "commit_id"}  # no `event` to pick APPROVE


async def test_no_backend_offers_the_fleet_a_merge_or_approve(forge: Forge) -> None:
    # The local forge's one exception is merge_as_human: the console calls it after the human confirms;
    # the orchestrator's loop never does (its merge intent exists only for that key).
    allowed = {"merge_as_human"} if forge.kind == "local" else set()
    public = [n for n in dir(forge) if not n.startswith("_")]
    assert [n for n in public if ("merge" in n.lower() or "approve" in n.lower()) and n not in allowed] == []


# code ------------------------------------------------------------------------------------------


async def test_default_branch_and_which_branches_exist(forge: Forge) -> None:
    base = base_of(forge)
    assert await forge.default_branch() == base
    assert await forge.branch_exists(base)
    assert not await forge.branch_exists("fleet/404-never-pushed")
    await make_branch(forge, "fleet/5-exists", {"new.txt": "new\n"})
    assert await forge.branch_exists("fleet/5-exists")


async def test_git_source_reaches_the_repository_with_credentials_only_in_env(forge: Forge, tmp_path: Path) -> None:
    source = await forge.git_source()
    listed = git_sync("ls-remote", "--heads", source.url, cwd=tmp_path, env=dict(source.env))
    assert f"refs/heads/{base_of(forge)}" in listed
    assert "token" not in source.url and "@" not in source.url.split("//")[-1]
    secrets = [v for k, v in source.env.items() if k.startswith("GIT_CONFIG_VALUE")]
    assert all(v not in repr(source) for v in secrets)  # what a log line could show
    await forge.check_push_access()


async def test_a_rebased_branch_is_force_pushed_only_under_its_lease(forge: Forge) -> None:
    workspace = _workspaces[id(forge)]
    first = await make_branch(forge, "fleet/6-rebase", {"a.txt": "one\n"})
    git_sync("commit", "-q", "--amend", "-m", "rebased", cwd=workspace)
    with pytest.raises(ForgeError, match="moved"):
        await forge.push_branch(workspace, "fleet/6-rebase", force=True, expected="1" * 40)
    second = await forge.push_branch(workspace, "fleet/6-rebase", force=True, expected=first)
    assert second != first
    pull = await forge.open_pull(title="R", body="", head="fleet/6-rebase", base=base_of(forge))
    assert pull.head_sha == second


async def test_opening_a_pr_against_a_missing_base_names_the_branch(forge: Forge) -> None:
    await make_branch(forge, "fleet/10-orphan", {"o.txt": "o\n"})
    with pytest.raises(ForgeError, match="does not exist") as caught:
        await forge.open_pull(title="O", body="", head="fleet/10-orphan", base="no-such-base")
    assert "no-such-base" in str(caught.value)


async def test_a_fresh_pr_is_mergeable_and_clean_and_a_conflict_makes_it_dirty(forge: Forge) -> None:
    await make_branch(forge, "fleet/11-clean", {"app.py": "def main():\n    return 11\n"})
    opened = await forge.open_pull(title="C", body="", head="fleet/11-clean", base=base_of(forge))
    pull = await forge.get_pull(opened.number)
    assert (pull.mergeable, pull.mergeable_state) == (True, "clean")
    assert pull.ci.value == "none" and pull.ci_summary == "no checks"
    move_base(forge, {"app.py": "def main():\n    return 99\n"})
    moved = await forge.get_pull(opened.number)
    assert (moved.mergeable, moved.mergeable_state) == (False, "dirty")


async def test_list_pulls_reads_details_only_for_the_named_heads(forge: Forge) -> None:
    base = base_of(forge)
    mine_sha = await make_branch(forge, "fleet/12-mine", {"m.txt": "m\n"})
    theirs_sha = await make_branch(forge, "human/theirs", {"t.txt": "t\n"})
    mine = await forge.open_pull(title="Mine", body="", head="fleet/12-mine", base=base)
    theirs = await forge.open_pull(title="Theirs", body="", head="human/theirs", base=base)
    pulls = {p.number: p for p in await forge.list_pulls(details_for={"fleet/12-mine"})}
    assert set(pulls) == {mine.number, theirs.number}
    assert pulls[mine.number].files == ("m.txt",) and pulls[mine.number].head_sha == mine_sha
    assert pulls[theirs.number].files == () and pulls[theirs.number].head_sha == theirs_sha
    assert (pulls[theirs.number].head, pulls[theirs.number].title) == ("human/theirs", "Theirs")
    everything = {p.number: p for p in await forge.list_pulls()}
    assert everything[theirs.number].files == ("t.txt",)


# edits -----------------------------------------------------------------------------------------


async def test_edits_of_title_and_body_are_reported_with_who_and_when(forge: Forge) -> None:
    operator = await forge.operator_identity()
    issue = await forge.create_issue("Add a flag", "Add --verbose.", ["proposed"])
    assert await forge.text_edits(issue.number) == []
    await forge.edit_issue(issue.number, title="Add a flag", body="Add --verbose.", as_user=operator.login)
    assert await forge.text_edits(issue.number) == []  # nothing changed, nothing recorded
    await forge.edit_issue(issue.number, title="Add two flags", as_user=operator.login)
    await forge.edit_issue(issue.number, body="Add --verbose and --quiet.", as_user=operator.login)
    edits = await forge.text_edits(issue.number)
    assert [(e.field, e.actor.login) for e in edits] == [("title", operator.login), ("body", operator.login)]
    assert edits[0].at <= edits[1].at and edits[0].at >= (issue.created_at or edits[0].at)
    read = await forge.get_issue(issue.number)
    assert (read.title, read.body) == ("Add two flags", "Add --verbose and --quiet.")
    assert [e.kind for e in await forge.label_events(issue.number)] == ["labeled"]


async def test_a_pull_request_s_diff_shows_its_change_and_is_bounded(forge: Forge) -> None:
    base = base_of(forge)
    await make_branch(forge, "fleet/9-diff", {"docs/usage.md": "first line\nsecond line\n"})
    opened = await forge.open_pull(title="Usage", body="Closes #9", head="fleet/9-diff", base=base)
    diff = await forge.pull_diff(opened.number)
    assert "docs/usage.md" in diff and "+first line" in diff and "+second line" in diff
    cut = await forge.pull_diff(opened.number, limit=40)
    assert len(cut.splitlines()[0].encode()) <= 40 and cut.rstrip().endswith("shown")
