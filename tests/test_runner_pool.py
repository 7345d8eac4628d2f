"""The pool of Docker hosts: placement (a pure function), and the pool on real engines over unix://, tcp:// and
ssh://: runs spread over hosts and bring their files back, re-attach across hosts after a restart, and a host
stopped mid-run and started again (its run shown "host unreachable", new runs placed elsewhere, the run
followed again and collected once the host is back).

The second engine and the SSH server come from tests/docker/start-second-engine.sh and start-sshd.sh (.ci/run
starts both). Without them these tests skip; under CI=true they fail instead.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from conftest import in_ci
from test_runner_docker import collect

from fleet_tui.config import DockerHostConfig, EngineConfig, FleetConfig, RoleConfig, RolesConfig, RunnerConfig
from fleet_tui.engines.base import Invocation
from fleet_tui.forge.local import LocalForge
from fleet_tui.model import AgentRun, Role, RunChanged, RunState
from fleet_tui.orchestrator import Orchestrator
from fleet_tui.runners.base import LABEL_INSTANCE, RunSpec
from fleet_tui.runners.pool import HostSlots, PoolRunner, place
from fleet_tui.store import Journal
from fleet_tui.workspace import WorkspaceManager

IMAGE = "fleet-test:latest"
DOCKER_DIR = Path(__file__).parent / "docker"
ENGINE2_SOCK = os.environ.get("FLEET_ENGINE2_SOCK", "/run/fleet-docker2.sock")
ENGINE2_TCP = os.environ.get("FLEET_ENGINE2_TCP", "127.0.0.1:23750")
SSH_ALIAS = os.environ.get("FLEET_SSHD_ALIAS", "fleet-ssh-test")
FIRST = DockerHostConfig(url="unix:///var/run/docker.sock", name="first", max_runs=2)
SECOND = DockerHostConfig(url=f"unix://{ENGINE2_SOCK}", name="second", max_runs=2)
SECOND_TCP = DockerHostConfig(url=f"tcp://{ENGINE2_TCP}", name="second-tcp", max_runs=2)
CONFIG = RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64)
_PREFIX = f"pool-{os.getpid()}-{time.time_ns() % 10**6}-"
_ids = itertools.count()


def new_instance() -> str:
    return f"{_PREFIX}{next(_ids)}"


def ssh_host() -> DockerHostConfig:
    import getpass

    return DockerHostConfig(url=f"ssh://{getpass.getuser()}@{SSH_ALIAS}", name="over-ssh", max_runs=2)


# --- placement ---------------------------------------------------------------------------------


def test_a_run_goes_to_the_host_with_the_most_free_slots() -> None:
    hosts = [HostSlots("a", 4, 3, True, True), HostSlots("b", 4, 1, True, True), HostSlots("c", 2, 0, True, True)]
    assert place(hosts) == "b"  # 3 free beats 2 free


def test_a_tie_goes_to_the_first_listed_host() -> None:
    assert place([HostSlots("a", 2, 1, True, True), HostSlots("b", 3, 2, True, True)]) == "a"


def test_hosts_that_are_down_full_or_without_the_image_take_nothing() -> None:
    hosts = [HostSlots("down", 8, 0, False, True), HostSlots("no-image", 8, 0, True, False),
             HostSlots("full", 2, 2, True, True), HostSlots("busy", 3, 2, True, True)]
    assert place(hosts) == "busy"
    assert place(hosts[:3]) is None
    assert place([]) is None


def test_a_host_not_looked_at_yet_may_take_a_run() -> None:
    assert place([HostSlots("new", 2, 0, None, None), HostSlots("old", 4, 3, True, True)]) == "new"


def test_runs_fill_the_pool_evenly() -> None:
    running = {"a": 0, "b": 0, "c": 0}
    sizes = {"a": 4, "b": 2, "c": 2}
    for _ in range(8):
        chosen = place([HostSlots(n, sizes[n], running[n], True, True) for n in running])
        assert chosen is not None
        running[chosen] += 1
    assert running == sizes
    assert place([HostSlots(n, sizes[n], running[n], True, True) for n in running]) is None


# --- real engines --------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"the pool tests must run under CI=true: {reason}")
    pytest.skip(reason)


def _answers(host: DockerHostConfig) -> str:
    """"" when the host's engine answers and has the image, else why not."""
    from fleet_tui.runners.docker import api_client

    try:
        api = api_client(host, timeout=15)
        api.inspect_image(IMAGE)
        api.close()
    except Exception as exc:  # noqa: BLE001 - any failure means nothing to test against
        return f"{host.url}: {exc}"
    return ""


@pytest.fixture(scope="module")
def engines() -> Iterator[None]:
    for host in (FIRST, SECOND, SECOND_TCP):
        why = _answers(host)
        if why:
            _unavailable(f"no engine with {IMAGE} (tests/docker/start-second-engine.sh starts the second): {why}")
    yield
    import docker

    for url in (FIRST.url, SECOND.url):
        with docker.APIClient(base_url=url, timeout=30) as api:
            for row in api.containers(all=True, filters={"label": LABEL_INSTANCE}):
                if (row.get("Labels") or {}).get(LABEL_INSTANCE, "").startswith(_PREFIX):
                    api.remove_container(row["Id"], force=True)


@pytest.fixture(scope="module")
def sshd(engines: None) -> None:
    why = _answers(ssh_host())
    if why:
        _unavailable(f"no SSH server reaching the second engine (tests/docker/start-sshd.sh): {why}")


def engine2(command: str) -> None:
    subprocess.run(["bash", str(DOCKER_DIR / "start-second-engine.sh"), command], check=True, capture_output=True,
                   timeout=120)


def spec_for(tmp_path: Path, script: str, run_id: str, timeout_s: float = 120) -> RunSpec:
    workspace, scratch = tmp_path / run_id / "ws", tmp_path / run_id / "scratch"
    for path in (workspace, scratch):
        path.mkdir(parents=True)
    (workspace / "seed.txt").write_text(run_id)
    return RunSpec(run_id=run_id, role=Role.DEV, issue=7, invocation=Invocation(("sh", "-c", script)),
                   workspace=workspace, scratch=scratch, timeout_s=timeout_s, network="none")




@pytest.mark.docker
@pytest.mark.anyio
async def test_runs_spread_over_a_unix_and_a_tcp_host_and_bring_their_files_back(tmp_path: Path,
                                                                                   engines: None) -> None:
    pool = PoolRunner(CONFIG, instance=new_instance(), hosts=[FIRST, SECOND_TCP])
    script = 'cat /workspace/seed.txt; echo made > /fleet/out.txt'
    specs = [spec_for(tmp_path, script, f"spread-{i}") for i in range(4)]
    handles = [await pool.start(spec) for spec in specs]
    assert sorted(handle.host for handle in handles) == ["first", "first", "second-tcp", "second-tcp"]
    assert {slot.name: slot.running for slot in pool.slots()} == {"first": 2, "second-tcp": 2}
    for spec, handle in zip(specs, handles, strict=True):
        lines, code = await collect(handle)
        assert (lines, code) == ([spec.run_id], 0)
        await pool.collect(spec.run_id, spec.scratch)
        assert (spec.scratch / "out.txt").read_text() == "made\n"
        await pool.cleanup(spec.run_id)
    assert await pool.find_runs() == []
    assert {slot.name: slot.running for slot in pool.slots()} == {"first": 0, "second-tcp": 0}


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_restarted_orchestrator_re_attaches_runs_on_a_unix_and_an_ssh_host(tmp_path: Path,
                                                                                    sshd: None) -> None:
    instance = new_instance()
    hosts = [FIRST, ssh_host()]
    pool = PoolRunner(CONFIG, instance=instance, hosts=hosts)
    script = "echo one; sleep 2; echo two; echo done > /fleet/out.txt"
    specs = [spec_for(tmp_path, script, f"again-{i}") for i in range(2)]
    placed = {spec.run_id: (await pool.start(spec)).host for spec in specs}
    assert sorted(placed.values()) == ["first", "over-ssh"]
    del pool  # the orchestrator goes away

    fresh = PoolRunner(CONFIG, instance=instance, hosts=hosts)
    found = {run.run_id: run.host for run in await fresh.find_runs()}
    assert found == placed
    for spec in specs:
        handle = await fresh.attach(spec.run_id)
        assert handle.host == placed[spec.run_id]
        assert await collect(handle) == (["one", "two"], 0)  # from the run's first line
        await fresh.collect(spec.run_id, spec.scratch)
        assert (spec.scratch / "out.txt").read_text() == "done\n"
        await fresh.cleanup(spec.run_id)
    assert await fresh.find_runs() == []


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_pool_whose_only_host_lacks_the_image_says_so(tmp_path: Path, engines: None) -> None:
    config = RunnerConfig(kind="docker", image="fleet-no-such-image:latest")
    pool = PoolRunner(config, instance=new_instance(), hosts=[FIRST, SECOND])
    with pytest.raises(Exception, match="fleet-no-such-image:latest' is on no Docker host"):
        await pool.start(spec_for(tmp_path, "true", "noimage"))


DEV_SCRIPT = {
    "pm": [{"final": "none"}],
    "dev": [
        {"print": "working on {issue}"},
        {"sleep": 25},  # outlives the host's absence: a run that ends while its engine is down loses its output
        {"print": "still working on {issue}"},
        {"write": "notes/{issue}.md", "content": "# {title}\n"},
        {"commit": "#{issue}: {title}"},
        {"final": "done"},
    ],
    "qa": [{"sleep": 60}, {"final": "VERDICT: pass\n"}],
}


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_host_stopped_mid_run_keeps_its_run_and_the_run_is_collected_when_it_returns(
        tmp_path: Path, repo: Path, engines: None) -> None:
    if os.geteuid() != 0:
        _unavailable("stopping and starting the second engine needs root")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(DEV_SCRIPT))
    engine = EngineConfig(kind="scripted", command="python3", script=str(script))
    config = FleetConfig(engines={"scripted": engine}, poll_interval_s=1,
                         roles=RolesConfig(pm=RoleConfig(engine="scripted"),
                                           dev=RoleConfig(engine="scripted", max_concurrent=2),
                                           qa=RoleConfig(engine="scripted")),
                         runner=RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64,
                                             hosts=[SECOND.model_copy(update={"max_runs": 1}),
                                                    FIRST.model_copy(update={"max_runs": 1})]))
    pool = PoolRunner(config.runner, instance=new_instance(), recheck_s=1)
    journal = Journal.open(tmp_path / "journal")
    changes: list[AgentRun] = []

    def seen(pred) -> AgentRun | None:  # type: ignore[no-untyped-def]
        return next((run for run in reversed(changes) if pred(run)), None)

    async def until(pred, limit: float = 60) -> AgentRun:  # type: ignore[no-untyped-def]
        with anyio.fail_after(limit):
            while (run := seen(pred)) is None:
                await anyio.sleep(0.1)  # polls the recorded events; the loop runs in its own task
        return run

    try:
        async with LocalForge(repo) as forge:
            orch = Orchestrator(config, forge=forge, runner=pool, journal=journal, repo_path=repo,
                                workspaces=WorkspaceManager(tmp_path / "ws", owner=(1000, 1000)))
            stream = orch.events()

            async def record() -> None:
                async for event in stream:
                    if isinstance(event, RunChanged) and event.run is not None:
                        changes.append(event.run)

            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                tg.start_soon(orch.run)
                first = (await forge.create_issue("Add a flag", "Add --flag.", [config.labels.proposed])).number
                await orch.approve(first)
                away = await until(lambda r: r.issue == first and r.role is Role.DEV and r.host == "second"
                                   and r.state is RunState.RUNNING)
                engine2("stop")
                try:
                    await until(lambda r: r.run_id == away.run_id and r.host_unreachable)
                    with anyio.fail_after(30):
                        while pool.is_reachable("second") is not False:
                            await anyio.sleep(0.05)  # the supervisor's look at the host marks it down
                    other = (await forge.create_issue("Handle empty input", "Say so.",
                                                      [config.labels.proposed])).number
                    await orch.approve(other)
                    placed = await until(lambda r: r.issue == other and r.role is Role.DEV and r.host != "")
                    assert placed.host == "first"  # new runs go to the host that answers
                    assert journal.get_run(away.run_id).state is RunState.RUNNING  # kept: not lost, not failed
                finally:
                    engine2("start")
                done = await until(lambda r: r.run_id == away.run_id and r.state.finished, limit=90)
                assert done.state is RunState.SUCCEEDED, done.reason
                assert done.host == "second" and not done.host_unreachable
                await until(lambda r: r.issue == other and r.role is Role.DEV and r.state.finished, limit=60)
                with anyio.fail_after(30):
                    while len(await forge.list_pulls()) < 2:
                        await anyio.sleep(0.2)  # the PRs open on the next ticks
                await orch.shutdown()
            heads = sorted(pull.head for pull in await forge.list_pulls())
            assert [head.split("/")[1].split("-")[0] for head in heads] == sorted([str(first), str(other)])
            log = journal.log_path(away.run_id).read_text()
            assert log.count(f"working on {first}") == 2  # "working on" and "still working on", each once
    finally:
        engine2("start")
        journal.close()


POOL_CHECK = """\
[runner]
kind = "docker"
image = "{image}"
[[runner.hosts]]
url = "unix:///var/run/docker.sock"
name = "first"
[[runner.hosts]]
url = "tcp://{tcp}"
name = "second-tcp"
max_runs = 3
[[runner.hosts]]
url = "ssh://nobody@127.0.0.1:9"
name = "gone"
[roles.pm]
engine = "scripted"
[roles.dev]
engine = "scripted"
[roles.qa]
engine = "scripted"
"""


@pytest.mark.docker
def test_check_looks_at_every_host(tmp_path: Path, repo: Path, engines: None) -> None:
    (repo / "fleet.toml").write_text(POOL_CHECK.format(image=IMAGE, tcp=ENGINE2_TCP))
    result = subprocess.run([sys.executable, "-m", "fleet_tui", "check", "--fix"], cwd=repo, capture_output=True,
                            check=False, text=True, env={**os.environ, "COLUMNS": "250"}, timeout=300)
    lines = result.stdout.splitlines()

    def row(name: str) -> str:
        return next((line for line in lines if f" {name} " in line), f"<no row {name!r}>")

    assert "✓" in row("Docker host first") and "✓" in row("Docker host second-tcp")
    assert "3 run slot(s)" in row("Docker host second-tcp")
    assert "✓" in row("agent image @first") and "✓" in row("agent image @second-tcp")
    assert "python3" in row("dev engine @second-tcp")  # the binary, looked for inside the image on that host
    gone = row("Docker host gone")
    assert "✗" in gone and "cannot reach ssh://nobody@127.0.0.1:9" in gone and "without a password" in gone
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr


@pytest.mark.docker
@pytest.mark.anyio
async def test_an_orchestrator_restarted_while_a_host_is_down_keeps_that_hosts_run_and_re_attaches_it(
        tmp_path: Path, repo: Path, engines: None) -> None:
    if os.geteuid() != 0:
        _unavailable("stopping and starting the second engine needs root")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(DEV_SCRIPT))
    engine = EngineConfig(kind="scripted", command="python3", script=str(script))
    config = FleetConfig(engines={"scripted": engine}, poll_interval_s=1,
                         roles=RolesConfig(pm=RoleConfig(engine="scripted"),
                                           dev=RoleConfig(engine="scripted", max_concurrent=2),
                                           qa=RoleConfig(engine="scripted")),
                         runner=RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64,
                                             hosts=[SECOND, FIRST]))
    instance = new_instance()
    changes: list[AgentRun] = []

    async def until(pred, limit: float = 60) -> AgentRun:  # type: ignore[no-untyped-def]
        with anyio.fail_after(limit):
            while (run := next((r for r in reversed(changes) if pred(r)), None)) is None:
                await anyio.sleep(0.1)  # polls the recorded events; the loop runs in its own task
        return run

    async def fleet(forge: LocalForge, journal: Journal) -> tuple[Orchestrator, Callable[[], Awaitable[None]]]:
        orch = Orchestrator(config, forge=forge, runner=PoolRunner(config.runner, instance=instance, recheck_s=1),
                            journal=journal, repo_path=repo,
                            workspaces=WorkspaceManager(tmp_path / "ws", owner=(1000, 1000)))
        stream = orch.events()

        async def record() -> None:
            async for event in stream:
                if isinstance(event, RunChanged) and event.run is not None:
                    changes.append(event.run)
        return orch, record

    try:
        async with LocalForge(repo) as forge:
            journal = Journal.open(tmp_path / "journal")
            orch, record = await fleet(forge, journal)
            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                tg.start_soon(orch.run)
                number = (await forge.create_issue("Add a flag", "Add --flag.", [config.labels.proposed])).number
                await orch.approve(number)
                away = await until(lambda r: r.issue == number and r.role is Role.DEV and r.host == "second"
                                   and r.state is RunState.RUNNING)
                await orch.shutdown()  # the orchestrator goes away; the run goes on
                tg.cancel_scope.cancel()
            journal.close()
            engine2("stop")
            try:
                journal = Journal.open(tmp_path / "journal")
                orch, record = await fleet(forge, journal)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(record)
                    tg.start_soon(orch.run)
                    await until(lambda r: r.run_id == away.run_id and r.host_unreachable and r.host == "second")
                    assert journal.get_run(away.run_id).state is RunState.RUNNING  # kept, not lost
                    engine2("start")
                    done = await until(lambda r: r.run_id == away.run_id and r.state.finished, limit=90)
                    assert done.state is RunState.SUCCEEDED, done.reason
                    with anyio.fail_after(30):
                        while not await forge.list_pulls():
                            await anyio.sleep(0.2)  # the PR opens on the next tick
                    await orch.shutdown()
                    tg.cancel_scope.cancel()
                journal.close()
            finally:
                engine2("start")
    finally:
        engine2("start")


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_run_stopped_while_its_host_is_away_ends_at_once_and_its_container_goes_when_the_host_returns(
        tmp_path: Path, repo: Path, engines: None) -> None:
    import docker

    if os.geteuid() != 0:
        _unavailable("stopping and starting the second engine needs root")
    script = tmp_path / "script.json"
    script.write_text(json.dumps(DEV_SCRIPT))
    engine = EngineConfig(kind="scripted", command="python3", script=str(script))
    config = FleetConfig(engines={"scripted": engine}, poll_interval_s=1,
                         roles=RolesConfig(pm=RoleConfig(engine="scripted"), dev=RoleConfig(engine="scripted"),
                                           qa=RoleConfig(engine="scripted")),
                         runner=RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64,
                                             hosts=[SECOND, FIRST]))
    pool = PoolRunner(config.runner, instance=new_instance(), recheck_s=1)
    journal = Journal.open(tmp_path / "journal")
    changes: list[AgentRun] = []

    async def until(pred, limit: float = 60) -> AgentRun:  # type: ignore[no-untyped-def]
        with anyio.fail_after(limit):
            while (run := next((r for r in reversed(changes) if pred(r)), None)) is None:
                await anyio.sleep(0.1)  # polls the recorded events; the loop runs in its own task
        return run

    def containers_of(run_id: str) -> list[dict[str, object]]:
        with docker.APIClient(base_url=SECOND.url, timeout=30) as api:
            return api.containers(all=True, filters={"label": [f"{LABEL_INSTANCE}={pool.instance}",
                                                               f"fleet.run_id={run_id}"]})

    try:
        async with LocalForge(repo) as forge:
            orch = Orchestrator(config, forge=forge, runner=pool, journal=journal, repo_path=repo,
                                workspaces=WorkspaceManager(tmp_path / "ws", owner=(1000, 1000)))
            stream = orch.events()

            async def record() -> None:
                async for event in stream:
                    if isinstance(event, RunChanged) and event.run is not None:
                        changes.append(event.run)

            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                tg.start_soon(orch.run)
                number = (await forge.create_issue("Add a flag", "Add --flag.", [config.labels.proposed])).number
                await orch.approve(number)
                away = await until(lambda r: r.issue == number and r.role is Role.DEV and r.host == "second"
                                   and r.state is RunState.RUNNING)
                engine2("stop")
                try:
                    await until(lambda r: r.run_id == away.run_id and r.host_unreachable)
                    with anyio.fail_after(10):
                        await orch.stop_run(away.run_id)  # answers at once, though the host does not
                    stopped = await until(lambda r: r.run_id == away.run_id and r.state.finished, limit=10)
                    assert stopped.state is RunState.STOPPED
                finally:
                    engine2("start")
                with anyio.fail_after(30):
                    while await anyio.to_thread.run_sync(containers_of, away.run_id):
                        await anyio.sleep(0.2)  # removed once the host answers again
                await orch.shutdown()
                tg.cancel_scope.cancel()
    finally:
        engine2("start")
        journal.close()
