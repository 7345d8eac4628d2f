"""The orchestrator end to end on the fake GitHub (loopback HTTP) with the Docker runner and the scripted engine:
the PM proposes, the operator approves (a `labeled` event by the operator's identity), the Dev run works in a
container, the branch is pushed to the fake, the PR is opened, QA asks for changes, a fix round follows, QA
passes and the PR shows as ready. The fake's request log proves no merge and no APPROVE review was ever sent
and no comment was posted twice.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import in_ci
from fake_github import FLEET_LOGIN, OPERATOR_LOGIN, open_github_forge

from fleet_tui.config import (
    EngineConfig,
    FleetConfig,
    ForgeConfig,
    PolicyConfig,
    RoleConfig,
    RolesConfig,
    RunnerConfig,
)
from fleet_tui.git import git_sync
from fleet_tui.model import Role, RunChanged, RunState
from fleet_tui.orchestrator import Orchestrator
from fleet_tui.runners.docker import LABEL_RUN, DockerRunner
from fleet_tui.store import Journal
from fleet_tui.workspace import WorkspaceManager

IMAGE = "fleet-test:latest"
INSTANCE = "f" + uuid.uuid4().hex[:15]  # this test's own fleet: it never touches another fleet's containers
LIMIT_S = 240
PROPOSALS = [{"title": "Add a version flag", "body": "Print the version and exit."}]
SCRIPT = {
    "pm": [{"print": "reading"}, {"final": "```json\n" + json.dumps(PROPOSALS) + "\n```\n"}],
    "dev": [
        {"print": "working on {issue} round {round} as uid-1000 in the container"},
        {"write": "notes/{issue}.md", "content": "# {title}\nround {round}\n"},
        {"commit": "#{issue}: {title} (round {round})"},
        {"usage": {"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01}},
        {"final": "done"},
    ],
    "qa": {
        "1": [{"final": "Close.\n\nVERDICT: changes\n\n- notes say nothing about tests\n"}],
        "default": [{"final": "Good now.\n\nVERDICT: pass\n"}],
    },
}


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[None]:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001 - no engine or no image: nothing to test against
        if in_ci():
            pytest.fail(f"Docker tests must run under CI=true: {exc}")
        pytest.skip(f"no Docker engine with {IMAGE}: {exc}")
    yield
    for container in client.containers.list(all=True, filters={"label": [f"fleet.instance={INSTANCE}"]}):
        container.remove(force=True)
    client.close()


@pytest.mark.docker
@pytest.mark.anyio
async def test_github_and_docker_pm_approve_dev_pr_qa_fix_pass(tmp_path: Path, docker_engine: None) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    config = FleetConfig(
        forge=ForgeConfig(kind="github", repo="octo/demo"),
        approvers=[OPERATOR_LOGIN],
        engines={"scripted": EngineConfig(kind="scripted", command="python3", script=str(script))},
        runner=RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64),
        roles=RolesConfig(pm=RoleConfig(engine="scripted"), dev=RoleConfig(engine="scripted", max_concurrent=2),
                          qa=RoleConfig(engine="scripted")),
        policy=PolicyConfig(test_command="test -d notes && git log --oneline -1"),
        poll_interval_s=5,
    )
    runner = DockerRunner(config.runner, instance=INSTANCE, repo="octo/demo", grace_s=1)
    journal = Journal.open(tmp_path / "journal")
    changes: list[RunChanged] = []
    try:
        async with open_github_forge(tmp_path) as (forge, server):
            checkout = tmp_path / "checkout"
            git_sync("clone", "-q", server.push_url, str(checkout), cwd=tmp_path)
            orch = Orchestrator(config, forge=forge, runner=runner, journal=journal, repo_path=checkout,
                                workspaces=WorkspaceManager(tmp_path / "ws", owner=(1000, 1000)))
            stream = orch.events()

            async def collect() -> None:
                async for event in stream:
                    if isinstance(event, RunChanged) and event.run is not None:
                        changes.append(event)

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                with anyio.fail_after(LIMIT_S):
                    await orch.run_pm()
                    await orch.run(once=True)
                    [proposal] = [i for i in server.issues.values() if "proposed" in i.labels]
                    assert proposal.title == PROPOSALS[0]["title"] and proposal.user == FLEET_LOGIN

                    await orch.approve(proposal.number)
                    approvals = [e for e in proposal.events if e.event == "labeled" and e.label == "approved"]
                    assert [e.actor for e in approvals] == [OPERATOR_LOGIN]
                    await orch.run(once=True)
                tg.cancel_scope.cancel()

            [pull] = server.pulls.values()
            assert pull.head.startswith(f"fleet/{proposal.number}-") and pull.head_sha == server.branch_sha(pull.head)
            assert f"Closes #{proposal.number}" in server.issues[pull.number].body
            reviews = pull.reviews
            assert [r.user for r in reviews] == [FLEET_LOGIN, FLEET_LOGIN]
            assert "<!-- fleet:verdict=changes round=1 -->" in reviews[0].body
            assert "notes say nothing about tests" in reviews[0].body
            assert "<!-- fleet:verdict=pass round=2 -->" in reviews[1].body
            assert reviews[1].commit_id == pull.head_sha != reviews[0].commit_id
            log = server.git_dir and git_sync("log", "--format=%s", pull.head, cwd=server.git_dir)
            assert log and "(round 1)" in log.splitlines()[0] and "(round 0)" in log.splitlines()[1]

            # the wire: no merge, no review other than COMMENT, no comment twice
            assert server.calls("PUT", r"/merge$") == []
            posted_reviews = server.calls("POST", r"/pulls/\d+/reviews$")
            assert len(posted_reviews) == 2 and {r.body.get("event") for r in posted_reviews} == {"COMMENT"}
            comments = [(r.path, r.body.get("body", "")) for r in server.calls("POST", r"/issues/\d+/comments$")]
            markers = [(path, " ".join(re.findall(r"<!-- fleet:[^>]*-->", body))) for path, body in comments]
            assert comments and len(set(markers)) == len(markers)
            assert all(r.login != OPERATOR_LOGIN for r in server.calls("POST") if "/labels" not in r.path)
        runs = journal.runs()
        qa_log = orch.log_path(next(r.run_id for r in runs if r.role == Role.QA))
        assert qa_log is not None and "the tests pass" in qa_log.read_text()  # run in its own container
    finally:
        journal.close()

    shape = [(r.role, r.qa_round, r.state) for r in runs]
    assert shape == [(Role.PM, 0, RunState.SUCCEEDED), (Role.DEV, 0, RunState.SUCCEEDED),
                     (Role.QA, 1, RunState.SUCCEEDED), (Role.DEV, 1, RunState.SUCCEEDED),
                     (Role.QA, 2, RunState.SUCCEEDED)], runs
    assert {r.runner for r in runs} == {"docker"}
    assert any(c.run.role == Role.PM and c.run.state == RunState.RUNNING for c in changes)
    import docker

    client = docker.from_env(timeout=10)
    try:
        assert client.containers.list(all=True, filters={"label": [LABEL_RUN, f"fleet.instance={INSTANCE}"]}) == []
    finally:
        client.close()
