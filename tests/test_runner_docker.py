"""The Docker runner against a real engine and the `fleet-test:latest` image (tests/docker/build-test-image.sh).

Skipped when no engine is reachable; under CI=true a missing engine or image fails instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import in_ci
from test_agents import ListLog, ShellEngine

from fleet_tui.agents import AgentSupervisor, LineFeed
from fleet_tui.config import RunnerConfig
from fleet_tui.engines.base import Invocation, Task
from fleet_tui.model import Role, RunState
from fleet_tui.runners.base import RunSpec
from fleet_tui.runners.docker import LABEL_ISSUE, LABEL_ROLE, LABEL_RUN, DockerRunner, DockerUnavailable
from fleet_tui.runners.local import RunnerError
from fleet_tui.workspace import WorkspaceManager

IMAGE = "fleet-test:latest"
BUILD_SCRIPT = Path(__file__).parent / "docker" / "build-test-image.sh"


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Docker tests must run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine_ready() -> Iterator[None]:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means there is no engine to test against
        _unavailable(f"no reachable Docker engine: {exc}")
    try:
        client.images.get(IMAGE)
    except Exception:  # noqa: BLE001
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            _unavailable(f"image {IMAGE} missing and {BUILD_SCRIPT.name} failed: {done.stderr[-500:]}")
    yield
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}"}):
        if container.labels.get("fleet.test") == "1":
            container.remove(force=True)
    client.close()


@pytest.fixture
def runner(engine_ready: None) -> DockerRunner:
    return DockerRunner(RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64),
                        labels={"fleet.test": "1"}, grace_s=1)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    for path in (workspace, scratch):
        path.mkdir(exist_ok=True)
        path.chmod(0o777)
    return workspace, scratch


def spec_for(tmp_path: Path, script: str, *, run_id: str, timeout_s: float = 60,
             env: dict[str, str] | None = None) -> RunSpec:
    workspace, scratch = dirs(tmp_path)
    return RunSpec(run_id=run_id, role=Role.DEV, issue=42, invocation=Invocation(("sh", "-c", script), env=env or {}),
                   workspace=workspace, scratch=scratch, timeout_s=timeout_s, network="none")


async def collect(handle) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        async def read() -> None:
            async for line in handle.lines():
                lines.append(line)
        tg.start_soon(read)
        code = await handle.wait()
    return lines, code


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def test_a_container_run_is_labelled_limited_and_runs_as_the_configured_user(tmp_path: Path,
                                                                                   runner: DockerRunner) -> None:
    import docker

    run_id = unique("basic")
    handle = await runner.start(spec_for(tmp_path, "id -u; pwd; ls /fleet; echo to-stderr >&2; exit 0",
                                         run_id=run_id))
    lines, code = await collect(handle)
    assert code == 0
    assert lines[:2] == ["1000", "/workspace"] and lines[-1] == "to-stderr"
    info = docker.from_env().api.inspect_container(handle.container_id)
    labels = info["Config"]["Labels"]
    assert (labels[LABEL_RUN], labels[LABEL_ISSUE], labels[LABEL_ROLE]) == (run_id, "42", "dev")
    host = info["HostConfig"]
    assert host["Memory"] == 256 * 1024**2 and host["PidsLimit"] == 64 and host["NanoCpus"] == 10**9
    assert host["NetworkMode"] == "none" and not host["AutoRemove"] and host["CapDrop"] == ["ALL"]
    mounts = {m["Destination"]: m["Source"] for m in info["Mounts"]}
    assert mounts == {"/workspace": str(tmp_path / "ws"), "/fleet": str(tmp_path / "scratch")}
    await runner.cleanup(run_id)  # only now is the container removed
    assert await runner.find_runs() == [] or run_id not in {r.run_id for r in await runner.find_runs()}


async def test_the_container_holds_no_token_no_host_secret_no_socket_no_host_home(
        tmp_path: Path, runner: DockerRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "test-token-not-real")
    monkeypatch.setenv("SOME_HOST_SECRET", "hunter2")
    script = "env; ls /var/run/docker.sock /run/docker.sock 2>&1; ls /home; echo HOME=$HOME"
    handle = await runner.start(spec_for(tmp_path, script, run_id=unique("env"), env={"MODEL_KEY": "k"}))
    lines, code = await collect(handle)
    await runner.cleanup(handle.run_id)
    text = "\n".join(lines)
    assert "MODEL_KEY=k" in lines
    assert "test-token-not-real" not in text and "hunter2" not in text and "GITHUB_TOKEN" not in text
    assert text.count("No such file") == 2  # no Docker socket inside
    assert os.environ["HOME"] not in text  # the host home is neither mounted nor named


async def test_a_none_network_container_has_no_network(tmp_path: Path, runner: DockerRunner) -> None:
    script = ("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
              "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\" "
              "2>&1 | tail -1")
    handle = await runner.start(spec_for(tmp_path, script, run_id=unique("net")))
    lines, _ = await collect(handle)
    await runner.cleanup(handle.run_id)
    assert lines[0] == "lo" and "eth0" not in lines
    assert "Network is unreachable" in lines[-1]


async def test_timeout_kills_the_container_with_exit_124_and_cleanup_removes_it(tmp_path: Path,
                                                                                runner: DockerRunner) -> None:
    import docker

    began = time.monotonic()
    handle = await runner.start(spec_for(tmp_path, "echo up; sleep 300", run_id=unique("timeout"), timeout_s=2))
    lines, code = await collect(handle)
    assert code == 124 and handle.timed_out and lines == ["up"]
    assert time.monotonic() - began < 20
    api = docker.from_env().api
    assert api.inspect_container(handle.container_id)["State"]["Running"] is False  # kept until cleanup
    await runner.cleanup(handle.run_id)
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(handle.container_id)


async def test_stop_kills_the_container(tmp_path: Path, runner: DockerRunner) -> None:
    handle = await runner.start(spec_for(tmp_path, "echo up; sleep 300", run_id=unique("stop")))
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        async def read() -> None:
            async for line in handle.lines():
                lines.append(line)
                await handle.stop()
        tg.start_soon(read)
        code = await handle.wait()
    await runner.cleanup(handle.run_id)
    assert lines == ["up"] and handle.stopped and code in (137, 143)


async def test_a_crash_mid_run_is_recorded_with_its_exit_code(tmp_path: Path, runner: DockerRunner) -> None:
    log = ListLog()
    supervisor = AgentSupervisor(runner, ShellEngine("echo step 1; echo step 2; kill -SEGV $$"), log=log)
    task = Task(run_id=unique("crash"), role=Role.DEV, prompt="p", issue=42)
    workspace, scratch = dirs(tmp_path)
    outcome = await supervisor.run(supervisor.build_spec(task, workspace=workspace, scratch=scratch, timeout_s=60))
    assert outcome.state is RunState.FAILED and outcome.exit_code == 139
    assert log.lines[:2] == ["step 1", "step 2"]
    assert task.run_id not in {r.run_id for r in await runner.find_runs()}  # the supervisor cleaned up


async def test_a_flood_of_100k_lines_is_all_logged_without_waiting_for_a_stalled_subscriber(
        tmp_path: Path, runner: DockerRunner) -> None:
    log = ListLog()
    feed = LineFeed(maxlen=500)
    stalled = feed.subscribe()
    supervisor = AgentSupervisor(runner, ShellEngine("seq 1 100000"), log=log, feed=feed)
    task = Task(run_id=unique("flood"), role=Role.DEV, prompt="p", issue=42)
    workspace, scratch = dirs(tmp_path)
    began = time.monotonic()
    outcome = await supervisor.run(supervisor.build_spec(task, workspace=workspace, scratch=scratch, timeout_s=120))
    elapsed = time.monotonic() - began
    assert outcome.state is RunState.SUCCEEDED
    assert len(log.lines) == 100_000 and log.lines[0] == "1" and log.lines[-1] == "100000"
    assert stalled.pending() == 500 and stalled.dropped == 99_500
    assert elapsed < 45


async def test_a_restarted_orchestrator_finds_the_run_and_re_attaches(tmp_path: Path, runner: DockerRunner) -> None:
    run_id = unique("reattach")
    script = "echo before-restart; while [ ! -e /fleet/go ]; do sleep 0.1; done; echo after-restart; exit 5"
    spec = spec_for(tmp_path, script, run_id=run_id)
    handle = await runner.start(spec)
    del handle  # the orchestrator goes away without a word

    fresh = DockerRunner(runner.config, labels=runner.labels)
    found = {run.run_id: run for run in await fresh.find_runs()}
    assert (found[run_id].role, found[run_id].issue) == (Role.DEV, 42)
    log = ListLog()
    supervisor = AgentSupervisor(fresh, ShellEngine(""), log=log)
    results = []
    async with anyio.create_task_group() as tg:
        async def reattach() -> None:
            results.append(await supervisor.reattach(run_id, scratch=spec.scratch))
        with supervisor.feed.subscribe() as sub:
            tg.start_soon(reattach)
            with anyio.fail_after(30):
                while supervisor.state is not RunState.RUNNING:
                    await anyio.sleep(0.05)  # poll: the supervisor attaches in its own task
            (spec.scratch / "go").touch()
            assert "after-restart" in await sub.__anext__()
    (outcome,) = results
    assert outcome.exit_code == 5 and outcome.state is RunState.FAILED
    assert log.lines[0] == "after-restart"  # streamed from the re-attach on, not replayed
    assert "before-restart" not in log.lines
    assert run_id not in {run.run_id for run in await fresh.find_runs()}


async def test_the_agent_commits_in_its_workspace_inside_the_container(tmp_path: Path,
                                                                       runner: DockerRunner) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for args in (("init", "-q", "-b", "main"), ("commit", "-q", "--allow-empty", "-m", "initial")):
        subprocess.run(["git", *args], cwd=source, check=True, capture_output=True)
    owner = (1000, 1000) if os.geteuid() == 0 else None
    manager = WorkspaceManager(tmp_path / "workspaces", owner=owner)
    ws = await manager.create(unique("git"), source, issue=42, title="Add a file")
    script = 'echo hi > added.txt && git add added.txt && git commit -qm "Add a file" && git log --format=%s -1'
    log = ListLog()
    supervisor = AgentSupervisor(runner, ShellEngine(script), log=log)
    task = Task(run_id=ws.run_id, role=Role.DEV, prompt="p", issue=42)
    outcome = await supervisor.run(supervisor.build_spec(task, workspace=ws.repo, scratch=ws.scratch, timeout_s=60))
    assert outcome.state is RunState.SUCCEEDED, log.lines
    changes = await manager.collect(ws, base="main")
    assert [c.subject for c in changes.commits] == ["Add a file"] and changes.paths == ("added.txt",)


@pytest.mark.slow
async def test_a_run_silent_for_90_s_keeps_its_stream(tmp_path: Path, runner: DockerRunner) -> None:
    handle = await runner.start(spec_for(tmp_path, "echo before; sleep 90; echo after", run_id=unique("quiet"),
                                         timeout_s=300))
    lines, code = await collect(handle)
    await runner.cleanup(handle.run_id)
    assert lines == ["before", "after"] and code == 0


async def test_root_is_refused(tmp_path: Path, engine_ready: None) -> None:
    runner = DockerRunner(RunnerConfig(kind="docker", image=IMAGE, user="0:0"))
    with pytest.raises(RunnerError, match="never run as root"):
        await runner.start(spec_for(tmp_path, "true", run_id=unique("root")))


async def test_a_missing_image_is_a_clear_error(tmp_path: Path, engine_ready: None) -> None:
    runner = DockerRunner(RunnerConfig(kind="docker", image="fleet-no-such-image:latest"))
    with pytest.raises(RunnerError, match="fleet-no-such-image:latest' is not on the Docker engine"):
        await runner.start(spec_for(tmp_path, "true", run_id=unique("noimage")))


async def test_an_unreachable_engine_says_where_and_what_to_do(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    runner = DockerRunner(RunnerConfig(kind="docker", image=IMAGE), timeout_s=3)
    with pytest.raises(DockerUnavailable, match=r'cannot reach the Docker engine at tcp://127\.0\.0\.1:9 '
                                                r'\(start Docker, or set runner\.kind = "local"\): .+'):
        await runner.start(spec_for(tmp_path, "true", run_id="unreachable"))
