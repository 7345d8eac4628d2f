"""The Docker runner against a real engine and the `fleet-test:latest` image (tests/docker/build-test-image.sh).

Every runner here has its own fleet instance id, as a real fleet does, so the tests run the real ownership
path on an engine shared with other fleets: nothing here sees, stops or removes a container it did not make.
Skipped when no engine is reachable; under CI=true a missing engine or image fails instead.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
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
from fleet_tui.runners.base import LABEL_INSTANCE, LABEL_REPO, RunSpec
from fleet_tui.runners.docker import LABEL_ISSUE, LABEL_ROLE, LABEL_RUN, DockerRunner, DockerUnavailable
from fleet_tui.runners.local import RunnerError
from fleet_tui.workspace import CommittingEngine, WorkspaceManager

IMAGE = "fleet-test:latest"
BUILD_SCRIPT = Path(__file__).parent / "docker" / "build-test-image.sh"
CONFIG = RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64)
_INSTANCE_PREFIX = f"test-{os.getpid()}-{time.time_ns() % 10**6}-"
_instances = itertools.count()


def new_instance() -> str:
    """A fleet instance id of its own for each runner: this test process's prefix and a counter."""
    return f"{_INSTANCE_PREFIX}{next(_instances)}"


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
    # What a failed test left: only containers of this process's own fleet instances.
    for container in client.containers.list(all=True, filters={"label": LABEL_INSTANCE}):
        if container.labels.get(LABEL_INSTANCE, "").startswith(_INSTANCE_PREFIX):
            container.remove(force=True)
    client.close()


@pytest.fixture
def runner(engine_ready: None) -> DockerRunner:
    return DockerRunner(CONFIG, instance=new_instance(), repo="octo/fleet", grace_s=1)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    for path in (workspace, scratch):
        path.mkdir(parents=True, exist_ok=True)
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


async def signal_run(runner: DockerRunner, run_id: str) -> None:
    """Create /fleet/go inside the run's container (its scratch dir is not shared with this machine)."""
    handle = await runner.attach(run_id)

    def touch(api) -> None:  # type: ignore[no-untyped-def]
        api.exec_start(api.exec_create(handle.container_id, ["touch", "/fleet/go"], user="1000:1000")["Id"])
    await runner.call(touch)


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


pytestmark = [pytest.mark.docker, pytest.mark.anyio]


async def test_a_container_run_is_labelled_limited_and_runs_as_the_configured_user(tmp_path: Path,
                                                                                   runner: DockerRunner) -> None:
    import docker

    run_id = unique("basic")
    spec = spec_for(tmp_path, "id -u; pwd; cat /workspace/seed.txt; echo to-stderr >&2; echo out > /fleet/made.txt",
                    run_id=run_id)
    (spec.workspace / "seed.txt").write_text("seeded\n")
    (spec.scratch / "prompt.txt").write_text("a prompt\n")
    handle = await runner.start(spec)
    lines, code = await collect(handle)
    assert code == 0
    # stdout and stderr are two pipes: Docker keeps the order within each, not between them
    assert [line for line in lines if line != "to-stderr"][:3] == ["1000", "/workspace", "seeded"]
    assert "to-stderr" in lines
    info = docker.from_env().api.inspect_container(handle.container_id)
    labels = info["Config"]["Labels"]
    assert (labels[LABEL_RUN], labels[LABEL_ISSUE], labels[LABEL_ROLE]) == (run_id, "42", "dev")
    assert (labels[LABEL_INSTANCE], labels[LABEL_REPO]) == (runner.instance, "octo/fleet")
    host = info["HostConfig"]
    assert host["Memory"] == 256 * 1024**2 and host["PidsLimit"] == 64 and host["NanoCpus"] == 10**9
    assert host["NetworkMode"] == "none" and not host["AutoRemove"] and host["CapDrop"] == ["ALL"]
    assert info["Mounts"] == []  # the files travel as archives: a remote engine has no view of this disk
    await runner.collect(run_id, spec.scratch)  # /fleet comes back, the run's own file with it
    assert sorted(p.name for p in spec.scratch.iterdir()) == ["made.txt", "prompt.txt"]
    assert (spec.scratch / "made.txt").read_text() == "out\n"
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

    fresh = DockerRunner(runner.config, instance=runner.instance)
    found = {run.run_id: run for run in await fresh.find_runs()}
    assert (found[run_id].role, found[run_id].issue) == (Role.DEV, 42)
    log = ListLog()
    log.lines.append("before-restart")  # what the run log held when the orchestrator went away
    supervisor = AgentSupervisor(fresh, ShellEngine(""), log=log)
    results = []
    async with anyio.create_task_group() as tg:
        async def reattach() -> None:
            results.append(await supervisor.reattach(run_id, scratch=spec.scratch, skip_lines=len(log.lines)))
        with supervisor.feed.subscribe() as sub:
            tg.start_soon(reattach)
            with anyio.fail_after(30):
                while supervisor.state is not RunState.RUNNING:
                    await anyio.sleep(0.05)  # poll: the supervisor attaches in its own task
            await signal_run(fresh, run_id)
            assert "after-restart" in await sub.__anext__()
    (outcome,) = results
    assert outcome.exit_code == 5 and outcome.state is RunState.FAILED
    assert log.lines == ["before-restart", "after-restart", "[fleet] exited with code 5"]  # each line once
    assert outcome.lines == 2
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
    # the Dev role's wrapper: its last step leaves the branch as a bundle in /fleet, which travels back
    supervisor = AgentSupervisor(runner, CommittingEngine(ShellEngine(script), "Work on #42", manager.author),
                                 log=log)
    task = Task(run_id=ws.run_id, role=Role.DEV, prompt="p", issue=42, branch=ws.branch)
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
    runner = DockerRunner(RunnerConfig(kind="docker", image=IMAGE, user="0:0"), instance=new_instance())
    with pytest.raises(RunnerError, match="never run as root"):
        await runner.start(spec_for(tmp_path, "true", run_id=unique("root")))


async def test_a_missing_image_is_a_clear_error(tmp_path: Path, engine_ready: None) -> None:
    runner = DockerRunner(RunnerConfig(kind="docker", image="fleet-no-such-image:latest"), instance=new_instance())
    with pytest.raises(RunnerError, match="fleet-no-such-image:latest' is not on the Docker engine"):
        await runner.start(spec_for(tmp_path, "true", run_id=unique("noimage")))


async def test_an_unreachable_engine_says_where_and_what_to_do(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    runner = DockerRunner(RunnerConfig(kind="docker", image=IMAGE), instance=new_instance(), timeout_s=3)
    with pytest.raises(DockerUnavailable, match=r'cannot reach the Docker engine at tcp://127\.0\.0\.1:9 '
                                                r'\(start Docker, or set runner\.kind = "local"\): .+'):
        await runner.start(spec_for(tmp_path, "true", run_id="unreachable"))


def running(container_id: str) -> bool:
    import docker

    return bool(docker.from_env().api.inspect_container(container_id)["State"]["Running"])


async def restart_sweep(runner: DockerRunner, journal: set[str]) -> set[str]:
    """What a restarted orchestrator does: a fresh runner of the same instance finds its runs and stops and
    removes those its journal does not know. Returns the run ids it found."""
    fresh = DockerRunner(runner.config, instance=runner.instance, grace_s=1)
    found = {run.run_id for run in await fresh.find_runs()}
    for run_id in found - journal:
        handle = await fresh.attach(run_id)
        await handle.stop()
        await fresh.cleanup(run_id)
    return found


async def test_two_fleets_on_one_engine_never_stop_each_others_containers(tmp_path: Path,
                                                                          engine_ready: None) -> None:
    a = DockerRunner(CONFIG, instance=new_instance(), grace_s=1)
    b = DockerRunner(CONFIG, instance=new_instance(), grace_s=1)
    b_run = await b.start(spec_for(tmp_path / "b", "sleep 300", run_id=unique("shared")))
    a_run = await a.start(spec_for(tmp_path / "a", "sleep 300", run_id=unique("shared")))
    try:
        # Fleet a restarts with an empty journal: it stops its own unknown run, and only that one.
        assert await restart_sweep(a, journal=set()) == {a_run.run_id}
        assert running(b_run.container_id)
        assert a_run.run_id not in {r.run_id for r in await a.find_runs()}
        # Fleet a runs again; now fleet b restarts while a's container lives.
        a_again = await a.start(spec_for(tmp_path / "a", "sleep 300", run_id=unique("shared")))
        assert await restart_sweep(b, journal=set()) == {b_run.run_id}
        assert running(a_again.container_id)
        # Neither can attach to or remove the other's run by its id.
        with pytest.raises(RunnerError, match="no container for run"):
            await b.attach(a_again.run_id)
        await b.cleanup(a_again.run_id)
        assert running(a_again.container_id)
        assert {r.run_id for r in await a.find_runs()} == {a_again.run_id}
    finally:
        for runner, run_id in ((a, a_run.run_id), (b, b_run.run_id)):
            await runner.cleanup(run_id)
        await a.cleanup(a_again.run_id)


async def test_cancelling_a_supervisor_returns_at_once_and_the_container_runs_on(tmp_path: Path,
                                                                                runner: DockerRunner) -> None:
    log = ListLog()
    supervisor = AgentSupervisor(runner, ShellEngine("echo up; sleep 300"), log=log)
    task = Task(run_id=unique("cancel"), role=Role.DEV, prompt="p", issue=42)
    workspace, scratch = dirs(tmp_path)
    spec = supervisor.build_spec(task, workspace=workspace, scratch=scratch, timeout_s=600)
    with supervisor.feed.subscribe() as sub:
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run, spec)
            assert await sub.__anext__() == ("up",)
            began = time.monotonic()
            tg.cancel_scope.cancel()
    assert time.monotonic() - began < 2
    (run,) = [r for r in await runner.find_runs() if r.run_id == task.run_id]
    handle = await runner.attach(run.run_id)
    assert running(handle.container_id)
    await runner.cleanup(task.run_id)


QUIT_SCRIPT = textwrap.dedent("""
    import sys, time, anyio
    from pathlib import Path
    from fleet_tui.config import RunnerConfig
    from fleet_tui.engines.base import Invocation
    from fleet_tui.model import Role
    from fleet_tui.runners.base import RunSpec
    from fleet_tui.runners.docker import DockerRunner

    async def main() -> None:
        runner = DockerRunner(RunnerConfig(kind="docker", image=sys.argv[1]), instance=sys.argv[2])
        scratch = Path(sys.argv[3])
        spec = RunSpec(run_id=sys.argv[4], role=Role.DEV, issue=None, workspace=scratch, scratch=scratch,
                       invocation=Invocation(("sh", "-c", "echo up; sleep 300")), timeout_s=600)
        handle = await runner.start(spec)
        async with anyio.create_task_group() as tg:
            async def follow() -> None:
                async for line in handle.lines():
                    print(line, flush=True)
            tg.start_soon(follow)
            tg.start_soon(handle.wait)
            await anyio.sleep(1)
            print("quitting", flush=True)
            tg.cancel_scope.cancel()

    anyio.run(main)
""")


async def test_a_process_watching_a_run_exits_at_once_when_it_quits(tmp_path: Path, runner: DockerRunner) -> None:
    """The console's quit: the supervising tasks are cancelled, and the process ends (no engine call left
    blocking a thread), while the container keeps running for the next orchestrator."""
    _, scratch = dirs(tmp_path)
    run_id = unique("quit")
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    process = await anyio.open_process([sys.executable, "-c", QUIT_SCRIPT, IMAGE, runner.instance, str(scratch), run_id],
                                       env=env)
    try:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(60):
            while b"quitting" not in output:
                output += await process.stdout.receive()
        began = time.monotonic()
        with anyio.fail_after(10):
            code = await process.wait()
        assert code == 0 and b"up" in output
        assert time.monotonic() - began < 3
        (handle,) = [await runner.attach(r.run_id) for r in await runner.find_runs() if r.run_id == run_id]
        assert running(handle.container_id)
    finally:
        if process.returncode is None:
            process.kill()
        await runner.cleanup(run_id)


async def test_a_run_that_ended_while_nobody_watched_is_read_whole_and_counted_once(
        tmp_path: Path, runner: DockerRunner) -> None:
    import docker

    script = ("echo usage 100 0.01; echo step one; echo usage 250 0.02; echo step two; echo usage 400 0.04; "
              "echo done > /fleet/summary.txt")
    spec = spec_for(tmp_path, script, run_id=unique("away"))
    handle = await runner.start(spec)
    await anyio.to_thread.run_sync(lambda: docker.from_env().api.wait(handle.container_id))  # nobody reads it
    fresh = DockerRunner(runner.config, instance=runner.instance)
    assert handle.run_id in {r.run_id for r in await fresh.find_runs()}
    log = ListLog()
    log.lines += ["usage 100 0.01", "step one"]  # the log got this far before the orchestrator went away
    supervisor = AgentSupervisor(fresh, ShellEngine(""), log=log)
    outcome = await supervisor.reattach(handle.run_id, scratch=spec.scratch, skip_lines=2)
    assert outcome.state is RunState.SUCCEEDED and outcome.exit_code == 0
    assert log.lines == ["usage 100 0.01", "step one", "usage 250 0.02", "step two", "usage 400 0.04"]
    assert outcome.usage.tokens == 400 and outcome.usage.cost_usd == pytest.approx(0.04)  # the total, once
    assert outcome.result.summary == "done\n"


async def test_a_log_stream_that_breaks_after_the_container_ended_still_delivers_every_line(
        tmp_path: Path, runner: DockerRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load a follow stream can break (a chunked read cut short) after the container has ended. The
    reader once took that for the end of the output and lost the rest (9,751 of 100,000 lines read); now it
    reads on from the last line it got, and no line comes twice."""
    import requests

    new_client = runner.clients.new
    opened = []

    def flaky_client(*, stream: bool = False):  # type: ignore[no-untyped-def]
        api = new_client(stream=stream)
        logs = api.logs

        def breaking_logs(container: str, **kwargs):  # type: ignore[no-untyped-def]
            frames = logs(container, **kwargs)
            opened.append(kwargs)
            if len(opened) > 1:
                return frames

            def first_stream():  # type: ignore[no-untyped-def]
                for n, frame in enumerate(frames, 1):
                    yield frame
                    if n == 2000:
                        api.wait(container)  # the container has ended: only its output is left to read
                        raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
            return first_stream()
        api.logs = breaking_logs
        return api

    monkeypatch.setattr(runner.clients, "new", flaky_client)
    handle = await runner.start(spec_for(tmp_path, "seq 1 30000", run_id=unique("broken")))
    lines, code = await collect(handle)
    await runner.cleanup(handle.run_id)
    assert len(opened) >= 2 and code == 0
    assert lines == [str(n) for n in range(1, 30_001)]


async def test_a_consumer_slower_than_the_container_still_gets_every_line(tmp_path: Path,
                                                                         runner: DockerRunner) -> None:
    """The container ends long before its output is read (a busy event loop): every line still arrives."""
    handle = await runner.start(spec_for(tmp_path, "seq 1 40000", run_id=unique("slow")))
    lines: list[str] = []
    async for line in handle.lines():
        lines.append(line)
        if len(lines) % 1000 == 0:
            time.sleep(0.05)  # noqa: ASYNC251 - a busy event loop: the reader falls far behind the container
    await runner.cleanup(handle.run_id)
    assert len(lines) == 40_000 and lines == [str(n) for n in range(1, 40_001)]


async def test_the_pieces_of_a_long_line_are_all_kept(tmp_path: Path, runner: DockerRunner) -> None:
    """Docker cuts a line over 16 KiB into pieces that share one timestamp; none of them is a duplicate."""
    script = "python3 -c \"print('x' * 50000); print('end')\""
    handle = await runner.start(spec_for(tmp_path, script, run_id=unique("long")))
    lines, code = await collect(handle)
    await runner.cleanup(handle.run_id)
    assert code == 0 and lines == ["x" * 50000, "end"]


async def test_stops_at_the_same_time_make_one_engine_call(tmp_path: Path, runner: DockerRunner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[str] = []
    kill = runner.kill

    async def counted(container_id: str) -> None:
        kills.append(container_id)
        await kill(container_id)
    monkeypatch.setattr(runner, "kill", counted)
    supervisor = AgentSupervisor(runner, ShellEngine("trap '' TERM; echo up; sleep 300"), log=ListLog())
    task = Task(run_id=unique("twice"), role=Role.DEV, prompt="p", issue=42)
    workspace, scratch = dirs(tmp_path)
    spec = supervisor.build_spec(task, workspace=workspace, scratch=scratch, timeout_s=120)
    results = []
    async with anyio.create_task_group() as tg:
        async def run() -> None:
            results.append(await supervisor.run(spec))

        with supervisor.feed.subscribe() as sub:
            tg.start_soon(run)
            assert await sub.__anext__() == ("up",)
            async with anyio.create_task_group() as stops:  # the operator presses stop twice, quickly
                stops.start_soon(supervisor.stop)
                stops.start_soon(supervisor.stop)
    (outcome,) = results
    assert outcome.state is RunState.STOPPED and len(kills) == 1
