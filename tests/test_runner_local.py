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
