"""The local runner: merged output, a clean environment, stdin closed, process groups killed on timeout/stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from fleet_tui.engines.base import Invocation
from fleet_tui.model import Role
from fleet_tui.runners.base import RunSpec
from fleet_tui.runners.local import LineSplitter, LocalRunner, RunnerError


def spec_for(tmp_path: Path, script: str, *, run_id: str = "r1", timeout_s: float = 30,
             env: dict[str, str] | None = None) -> RunSpec:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    workspace.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    return RunSpec(run_id=run_id, role=Role.QA, issue=4, invocation=Invocation(("sh", "-c", script), env=env or {}),
                   workspace=workspace, scratch=scratch, timeout_s=timeout_s)


async def collect(handle) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        async def read() -> None:
            async for line in handle.lines():
                lines.append(line)
        tg.start_soon(read)
        code = await handle.wait()
    return lines, code


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def gone(pid: int, within_s: float = 5) -> None:
    """Wait until `pid` is dead (a SIGKILLed process takes a moment to become a zombie); fail after a bound."""
    with anyio.fail_after(within_s):
        while alive(pid):
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_stdout_and_stderr_arrive_as_lines_in_the_workspace(tmp_path: Path) -> None:
    runner = LocalRunner()
    handle = await runner.start(spec_for(tmp_path, "pwd; echo err >&2; printf 'no newline'; exit 2"))
    lines, code = await collect(handle)
    assert lines == [str(tmp_path / "ws"), "err", "no newline"]
    assert code == 2


@pytest.mark.anyio
async def test_the_environment_holds_only_what_the_invocation_gives(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "test-token-not-real")
    monkeypatch.setenv("SOME_HOST_SECRET", "hunter2")
    handle = await LocalRunner().start(spec_for(tmp_path, "env; cat; echo stdin-done", env={"MODEL_KEY": "k"}))
    lines, code = await collect(handle)
    names = {line.split("=", 1)[0] for line in lines if "=" in line}
    assert code == 0
    assert "MODEL_KEY=k" in lines
    assert "GITHUB_TOKEN" not in names and "SOME_HOST_SECRET" not in names
    assert names <= {"MODEL_KEY", "PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"}
    assert lines[-1] == "stdin-done"  # `cat` read /dev/null: stdin gives EOF at once


@pytest.mark.anyio
async def test_timeout_kills_the_whole_process_group_with_exit_124(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; echo started; wait"
    handle = await LocalRunner(grace_s=0.5, sandbox="none").start(spec_for(tmp_path, script, timeout_s=1))
    began = time.monotonic()
    lines, code = await collect(handle)
    assert code == 124 and handle.timed_out
    assert lines == ["started"]
    assert time.monotonic() - began < 8
    await gone(int(pid_file.read_text()))


@pytest.mark.anyio
async def test_stop_kills_the_group_at_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; echo started; wait"
    handle = await LocalRunner(grace_s=0.5, sandbox="none").start(spec_for(tmp_path, script))
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        async def read() -> None:
            async for line in handle.lines():
                lines.append(line)
                if line == "started":
                    await handle.stop()
        tg.start_soon(read)
        code = await handle.wait()
    assert code in (128 + 15, 128 + 9) and handle.stopped and not handle.timed_out
    await gone(int(pid_file.read_text()))


@pytest.mark.anyio
async def test_a_quiet_stretch_does_not_end_the_stream(tmp_path: Path) -> None:
    handle = await LocalRunner().start(spec_for(tmp_path, "echo before; sleep 2; echo after"))
    lines, code = await collect(handle)
    assert lines == ["before", "after"] and code == 0


@pytest.mark.anyio
async def test_a_flood_of_100k_lines_arrives_whole(tmp_path: Path) -> None:
    handle = await LocalRunner().start(spec_for(tmp_path, "seq 1 100000"))
    lines, code = await collect(handle)
    assert code == 0 and len(lines) == 100_000 and lines[-1] == "100000"


@pytest.mark.anyio
async def test_find_runs_and_attach_give_back_live_runs(tmp_path: Path) -> None:
    runner = LocalRunner(grace_s=0.5)
    handle = await runner.start(spec_for(tmp_path, "sleep 60", run_id="live-1"))
    (live,) = await runner.find_runs()
    assert (live.run_id, live.role, live.issue) == ("live-1", Role.QA, 4)
    assert await runner.attach("live-1") is handle
    with pytest.raises(RunnerError, match="already running"):
        await runner.start(spec_for(tmp_path, "true", run_id="live-1"))
    await runner.cleanup("live-1")
    assert await runner.find_runs() == []
    assert handle.stopped
    with pytest.raises(RunnerError, match="not a local run of this fleet"):
        await runner.attach("live-1")


@pytest.mark.anyio
async def test_a_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, "")
    spec = RunSpec(**{**{f: getattr(spec, f) for f in spec.__slots__},  # type: ignore[attr-defined]
                      "invocation": Invocation(("/nonexistent/agent-cli",))})
    with pytest.raises(RunnerError, match="cannot start '/nonexistent/agent-cli'"):
        await LocalRunner().start(spec)


def test_line_splitter_joins_pieces_cuts_endless_lines_and_survives_bad_utf8() -> None:
    splitter = LineSplitter(max_bytes=8)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\r\nd") == ["abc"]
    assert splitter.feed(b"\xff\n") == ["d\ufffd"]
    assert splitter.feed(b"0123456789") == ["01234567"]
    assert splitter.flush() == ["89"]


async def exited(handle) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until the run has recorded its exit code: it ended with nobody supervising it."""
    with anyio.fail_after(10):
        while not handle.exit_path.exists():
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_run_that_ended_while_nobody_watched_is_read_whole_and_counted_once(tmp_path: Path) -> None:
    from test_agents import ListLog, ShellEngine

    from fleet_tui.agents import AgentSupervisor

    runs = tmp_path / "runs"
    first = LocalRunner(instance="fleet-a", runs_dir=runs)
    script = ("echo usage 100 0.01; echo step one; echo usage 250 0.02; echo step two; echo usage 400 0.04; "
              'echo done > "$HOME/summary.txt"')
    spec = spec_for(tmp_path, script, run_id="away-1")
    handle = await first.start(spec)
    await exited(handle)  # the orchestrator is gone: nobody reads the output
    restarted = LocalRunner(instance="fleet-a", runs_dir=runs)
    assert [r.run_id for r in await restarted.find_runs()] == ["away-1"]
    log = ListLog()
    log.lines += ["usage 100 0.01", "step one"]  # what the run log held
    supervisor = AgentSupervisor(restarted, ShellEngine(""), log=log)
    outcome = await supervisor.reattach("away-1", scratch=spec.scratch, skip_lines=2)
    assert outcome.exit_code == 0 and outcome.state.value == "succeeded"
    assert log.lines == ["usage 100 0.01", "step one", "usage 250 0.02", "step two", "usage 400 0.04"]
    assert outcome.usage.tokens == 400 and outcome.result.summary == "done\n"
    assert await restarted.find_runs() == []  # collected and cleaned up


@pytest.mark.anyio
async def test_a_live_run_survives_its_orchestrator_and_is_re_attached(tmp_path: Path) -> None:
    from test_agents import ListLog, ShellEngine

    from fleet_tui.agents import AgentSupervisor

    runs = tmp_path / "runs"
    script = 'echo before; while [ ! -e "$HOME/go" ]; do sleep 0.05; done; echo after; exit 5'
    spec = spec_for(tmp_path, script, run_id="live-2")
    handle = await LocalRunner(instance="fleet-a", runs_dir=runs).start(spec)
    del handle  # the orchestrator goes away; the run goes on
    restarted = LocalRunner(instance="fleet-a", runs_dir=runs, grace_s=0.5)
    log = ListLog()
    supervisor = AgentSupervisor(restarted, ShellEngine(""), log=log)
    async with anyio.create_task_group() as tg:
        results = []

        async def reattach() -> None:
            results.append(await supervisor.reattach("live-2", scratch=spec.scratch))

        with supervisor.feed.subscribe() as sub:
            tg.start_soon(reattach)
            assert await sub.__anext__() == ("before",)
            (spec.scratch / "go").touch()
    (outcome,) = results
    assert outcome.exit_code == 5 and log.lines[:2] == ["before", "after"]


@pytest.mark.anyio
async def test_a_fleet_sees_and_stops_only_its_own_local_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ours = LocalRunner(instance="fleet-a", runs_dir=runs, grace_s=0.5)
    theirs = LocalRunner(instance="fleet-b", runs_dir=runs, grace_s=0.5)
    handle = await theirs.start(spec_for(tmp_path, "echo up; sleep 60", run_id="theirs-1"))
    restarted = LocalRunner(instance="fleet-a", runs_dir=runs)
    assert await restarted.find_runs() == [] and await ours.find_runs() == []
    with pytest.raises(RunnerError, match="not a local run of this fleet"):
        await restarted.attach("theirs-1")
    await restarted.cleanup("theirs-1")
    assert not handle.ended()
    assert [r.run_id for r in await LocalRunner(instance="fleet-b", runs_dir=runs).find_runs()] == ["theirs-1"]
    await theirs.cleanup("theirs-1")
    assert handle.ended()


@pytest.mark.anyio
async def test_a_re_attached_run_is_stopped_by_its_group_and_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    handle = await LocalRunner(instance="fleet-a", runs_dir=runs).start(spec_for(tmp_path, "sleep 60", run_id="s-1"))
    restarted = LocalRunner(instance="fleet-a", runs_dir=runs, grace_s=0.5)
    attached = await restarted.attach("s-1")
    assert not attached.ended()
    await attached.stop()
    assert await attached.wait() in (128 + 15, 128 + 9) and attached.stopped
    await gone(handle.pid)
    # A record whose process start time does not match (the pid was reused) is a run that has ended.
    record = runs / "fleet-a" / "s-1.json"
    record.write_text(record.read_text().replace(f'"pid": {handle.pid}', f'"pid": {os.getpid()}'))
    stale = await LocalRunner(instance="fleet-a", runs_dir=runs).attach("s-1")
    assert stale.ended()
    await stale.stop()  # must not signal the test process (it would kill this test)


@pytest.mark.anyio
async def test_links_an_agent_plants_for_its_output_file_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("operator secret\n")
    spec = spec_for(tmp_path, "", run_id="hostile")
    (spec.scratch / ".fleet-output.log").symlink_to(secret)  # left by an earlier run in this scratch dir
    runs = tmp_path / "runs"
    script = ('echo visible; rm -f "$HOME/.fleet-output.log"; ln -s ' + str(secret) + ' "$HOME/.fleet-output.log"; '
              "echo after-swap; sleep 0.3")
    spec = RunSpec(**{**{f: getattr(spec, f) for f in spec.__slots__},  # type: ignore[attr-defined]
                      "invocation": Invocation(("sh", "-c", script))})
    handle = await LocalRunner(instance="fleet-a", runs_dir=runs, sandbox="none").start(spec)
    assert secret.read_text() == "operator secret\n"  # the planted link was replaced, not truncated through
    lines, code = await collect(handle)
    assert code == 0 and lines == ["visible", "after-swap"]  # read from the runner's own file
    # After a restart the file at that path is the agent's link: it is not read at all.
    attached = await LocalRunner(instance="fleet-a", runs_dir=runs).attach("hostile")
    with pytest.raises(RunnerError, match="cannot be read: its file in the scratch dir is gone or was replaced"):
        [line async for line in attached.lines()]
    assert secret.read_text() == "operator secret\n"
