"""Run supervision: log, feed, usage and budget, timeout and stop, outcome; on the local runner (fast)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest

from fleet_tui.agents import AgentSupervisor, Budget, LineFeed
from fleet_tui.engines.base import EngineResult, Invocation, LogLine, Output, Task, UsageUpdate
from fleet_tui.model import Role, RunState, Usage
from fleet_tui.runners.base import RunSpec
from fleet_tui.runners.local import LocalRunner


class ListLog:
    """A run log that keeps lines in memory (the journal's RunLog writes them to a file)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


class ShellParser:
    """Every line is shown; `usage <tokens> <usd>` lines report cumulative usage."""

    def feed(self, line: str) -> list[Output]:
        match = re.fullmatch(r"usage (\d+) ([\d.]+)", line)
        if match:
            return [UsageUpdate(Usage(input_tokens=int(match.group(1)), cost_usd=float(match.group(2))))]
        return [LogLine(line)]

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        summary = scratch / "summary.txt"
        return EngineResult(ok=exit_code == 0, summary=summary.read_text() if summary.exists() else "")


class ShellEngine:
    """A test engine: runs a shell script given at construction, with the prompt in a scratch file."""

    name = "shell"

    def __init__(self, script: str, *, env: dict[str, str] | None = None, needs_network: bool = False) -> None:
        self.script = script
        self.env = env or {}
        self.needs_network = needs_network

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        return Invocation(argv=("sh", "-c", self.script), env={"SCRATCH": scratch, **self.env},
                          files={"prompt.md": task.prompt}, needs_network=self.needs_network)

    def parser(self) -> ShellParser:
        return ShellParser()


def make_spec(supervisor: AgentSupervisor, tmp_path: Path, *, run_id: str = "r1", timeout_s: float = 30,
              network: str = "none") -> RunSpec:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    workspace.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    task = Task(run_id=run_id, role=Role.DEV, prompt="do the thing", issue=7, title="A thing")
    return supervisor.build_spec(task, workspace=workspace, scratch=scratch, timeout_s=timeout_s, network=network)


async def supervise(tmp_path: Path, script: str, **kwargs) -> tuple[AgentSupervisor, ListLog, object]:
    log = ListLog()
    timeout_s = kwargs.pop("timeout_s", 30)
    supervisor = AgentSupervisor(LocalRunner(grace_s=0.5), ShellEngine(script), log=log, **kwargs)
    outcome = await supervisor.run(make_spec(supervisor, tmp_path, timeout_s=timeout_s))
    return supervisor, log, outcome


@pytest.mark.anyio
async def test_a_successful_run_logs_every_line_and_reads_the_result(tmp_path: Path) -> None:
    batches: list[tuple[str, ...]] = []
    script = 'cat "$SCRATCH/prompt.md"; echo; echo oops >&2; echo done > "$SCRATCH/summary.txt"'
    _, log, outcome = await supervise(tmp_path, script, publish=batches.append)
    assert outcome.state is RunState.SUCCEEDED and outcome.exit_code == 0
    assert log.lines == ["do the thing", "oops"]
    assert [line for batch in batches for line in batch] == ["do the thing", "oops"]
    assert outcome.result.summary == "done\n"
    assert outcome.last_line == "oops"


@pytest.mark.anyio
async def test_display_lines_are_sanitized_and_the_log_keeps_the_raw_line(tmp_path: Path) -> None:
    batches: list[tuple[str, ...]] = []
    _, log, _ = await supervise(tmp_path, r"printf 'a\033[31mred\033]0;title\007b\n'", publish=batches.append)
    assert log.lines == ["a\x1b[31mred\x1b]0;title\x07b"]
    assert batches == [("aredb",)]


@pytest.mark.anyio
async def test_a_crash_mid_run_is_a_failed_run_with_its_exit_code(tmp_path: Path) -> None:
    _, log, outcome = await supervise(tmp_path, "echo working; echo more; exit 3")
    assert outcome.state is RunState.FAILED
    assert outcome.exit_code == 3
    assert "exited with code 3" in outcome.reason
    assert log.lines[:2] == ["working", "more"]


@pytest.mark.anyio
async def test_timeout_kills_the_run_and_marks_it_timed_out(tmp_path: Path) -> None:
    began = time.monotonic()
    _, log, outcome = await supervise(tmp_path, "echo start; sleep 60", timeout_s=1)
    assert outcome.state is RunState.TIMED_OUT
    assert outcome.exit_code == 124
    assert time.monotonic() - began < 10
    assert log.lines[0] == "start" and "timed out" in log.lines[-1]


@pytest.mark.anyio
async def test_over_the_token_budget_the_run_is_killed(tmp_path: Path) -> None:
    script = "echo usage 100 0.01; echo usage 900 0.09; echo usage 5000 0.5; sleep 60"
    began = time.monotonic()
    supervisor, _, outcome = await supervise(tmp_path, script, budget=Budget(tokens=1000))
    assert outcome.state is RunState.OVER_BUDGET
    assert "token budget of 1000" in outcome.reason
    assert outcome.usage.tokens == 5000
    assert time.monotonic() - began < 10


@pytest.mark.anyio
async def test_over_the_usd_budget_the_run_is_killed(tmp_path: Path) -> None:
    _, _, outcome = await supervise(tmp_path, "echo usage 10 0.75; sleep 60", budget=Budget(usd=0.5))
    assert outcome.state is RunState.OVER_BUDGET
    assert "$0.50" in outcome.reason


@pytest.mark.anyio
async def test_the_operator_stops_a_run(tmp_path: Path) -> None:
    log = ListLog()
    supervisor = AgentSupervisor(LocalRunner(grace_s=0.5), ShellEngine("echo up; sleep 60"), log=log)
    spec = make_spec(supervisor, tmp_path)
    async with anyio.create_task_group() as tg:
        results = []

        async def run() -> None:
            results.append(await supervisor.run(spec))

        with supervisor.feed.subscribe() as sub:
            tg.start_soon(run)
            assert await sub.__anext__() == ("up",)  # running and talking
            await supervisor.stop()
    (outcome,) = results
    assert outcome.state is RunState.STOPPED
    assert outcome.reason == "stopped by the operator"


@pytest.mark.anyio
async def test_a_flood_is_all_logged_and_a_subscriber_that_never_reads_does_not_slow_it(tmp_path: Path) -> None:
    feed = LineFeed(maxlen=1000)
    sleeper = feed.subscribe()  # never read
    began = time.monotonic()
    _, log, outcome = await supervise(tmp_path, "seq 1 100000", feed=feed)
    elapsed = time.monotonic() - began
    assert outcome.state is RunState.SUCCEEDED
    assert len(log.lines) == 100_000 and log.lines[-1] == "100000"
    assert sleeper.pending() == 1000 and sleeper.dropped == 99_000
    batch = await sleeper.__anext__()
    assert batch[-1] == "100000"  # the newest lines are the ones kept
    assert elapsed < 30


@pytest.mark.anyio
async def test_a_command_that_cannot_start_is_a_failed_outcome_not_a_crash(tmp_path: Path) -> None:
    class Missing(ShellEngine):
        def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
            return Invocation(argv=(str(tmp_path / "no-such-cli"),))

    log = ListLog()
    supervisor = AgentSupervisor(LocalRunner(), Missing(""), log=log)
    outcome = await supervisor.run(make_spec(supervisor, tmp_path))
    assert outcome.state is RunState.FAILED and outcome.exit_code is None
    assert "could not start" in outcome.reason and "no-such-cli" in log.lines[-1]


def test_engines_without_network_needs_get_no_network(tmp_path: Path) -> None:
    supervisor = AgentSupervisor(LocalRunner(), ShellEngine("true", needs_network=False), log=ListLog())
    assert make_spec(supervisor, tmp_path, network="bridge").network == "none"
    supervisor = AgentSupervisor(LocalRunner(), ShellEngine("true", needs_network=True), log=ListLog())
    spec = make_spec(supervisor, tmp_path, network="bridge")
    assert spec.network == "bridge"
    assert (tmp_path / "scratch" / "prompt.md").read_text() == "do the thing"
    assert spec.invocation.env["GIT_CONFIG_KEY_0"] == "safe.directory"


@pytest.mark.anyio
async def test_a_subscriber_sees_batches_and_ends_with_the_run() -> None:
    feed = LineFeed(maxlen=3)
    sub = feed.subscribe()
    feed.publish(("a", "b"))
    feed.publish(("c", "d"))
    feed.close()
    assert [batch async for batch in sub] == [("b", "c", "d")]
    assert sub.dropped == 1



class TrickleHandle:
    """A process that has already ended while its output still trickles in (a busy log stream)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    async def lines(self):  # type: ignore[no-untyped-def]
        for n in range(1, 3001):
            yield str(n)
            if n % 100 == 0:
                await anyio.sleep(0.02)

    async def wait(self) -> int:
        return 0

    async def stop(self) -> None:
        return None


class TrickleRunner:
    kind = "trickle"

    def paths(self, workspace: Path, scratch: Path) -> tuple[str, str]:
        return str(workspace), str(scratch)

    async def start(self, spec: RunSpec) -> TrickleHandle:
        return TrickleHandle(spec.run_id)

    async def cleanup(self, run_id: str) -> None:
        return None


@pytest.mark.anyio
async def test_lines_still_coming_after_the_process_ended_are_all_kept(tmp_path: Path) -> None:
    """The process has ended but its output takes longer than the drain window to arrive: as long as lines
    keep coming, nothing is cut off."""
    log = ListLog()
    supervisor = AgentSupervisor(TrickleRunner(), ShellEngine("unused"), log=log, drain_s=0.2)  # type: ignore[arg-type]
    outcome = await supervisor.run(make_spec(supervisor, tmp_path))
    assert outcome.state is RunState.SUCCEEDED
    assert len(log.lines) == 3000 and log.lines[-1] == "3000"


@pytest.mark.anyio
async def test_a_run_silent_for_stall_s_is_killed_as_stalled(tmp_path: Path) -> None:
    began = time.monotonic()
    _, log, outcome = await supervise(tmp_path, "echo up; sleep 60", stall_s=0.5)
    assert outcome.state is RunState.TIMED_OUT  # type: ignore[attr-defined]
    assert outcome.reason == "stalled: no output for 0.5 s"  # type: ignore[attr-defined]
    assert time.monotonic() - began < 10
    assert log.lines[0] == "up" and log.lines[-1] == "[fleet] stalled: no output for 0.5 s"


@pytest.mark.anyio
async def test_a_run_that_keeps_talking_is_no_stall_and_a_quiet_end_is_none_either(tmp_path: Path) -> None:
    script = "for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.2; done"
    _, log, outcome = await supervise(tmp_path, script, stall_s=0.6)
    assert outcome.state is RunState.SUCCEEDED and len(log.lines) == 8  # type: ignore[attr-defined]


class CountingRunner(LocalRunner):
    """A local runner that counts how often a run is asked to stop."""

    stops = 0

    async def start(self, spec: RunSpec):  # type: ignore[no-untyped-def]
        handle = await super().start(spec)
        original = handle.stop

        async def counted() -> None:
            type(self).stops += 1
            await original()
        handle.stop = counted  # type: ignore[method-assign]
        return handle


@pytest.mark.anyio
async def test_a_second_stop_while_one_is_under_way_sends_nothing_more(tmp_path: Path) -> None:
    runner = CountingRunner(grace_s=1.0)
    # The agent ignores SIGTERM: the first stop takes the whole grace period before its SIGKILL.
    supervisor = AgentSupervisor(runner, ShellEngine("trap '' TERM; echo up; while :; do sleep 0.1; done"),
                                 log=ListLog())
    spec = make_spec(supervisor, tmp_path)
    results = []
    async with anyio.create_task_group() as tg:
        async def run() -> None:
            results.append(await supervisor.run(spec))

        with supervisor.feed.subscribe() as sub:
            tg.start_soon(run)
            assert await sub.__anext__() == ("up",)
            async with anyio.create_task_group() as stops:
                stops.start_soon(supervisor.stop)
                stops.start_soon(supervisor.stop, "stopped again")
                stops.start_soon(supervisor.stop)
    (outcome,) = results
    assert CountingRunner.stops == 1
    assert outcome.state is RunState.STOPPED and outcome.reason == "stopped by the operator"


@pytest.mark.anyio
async def test_past_the_output_budget_the_run_is_stopped(tmp_path: Path) -> None:
    """A run that prints without reporting usage (Codex reports tokens only at a turn's end) is stopped by
    the bytes it prints."""
    script = "i=0; while [ $i -lt 100 ]; do echo 0123456789abcdefghi; i=$((i+1)); done; sleep 60"
    began = time.monotonic()
    _, log, outcome = await supervise(tmp_path, script, budget=Budget(output_bytes=500))
    assert outcome.state is RunState.OVER_BUDGET
    assert "output budget spent" in outcome.reason and "limit is 500" in outcome.reason
    assert "(520 bytes printed" in outcome.reason  # 26 lines of 20 bytes: stopped at the first past the cap
    assert time.monotonic() - began < 10
    assert "output budget spent" in log.lines[-1]


@pytest.mark.anyio
async def test_output_under_the_budget_runs_to_the_end(tmp_path: Path) -> None:
    _, _, outcome = await supervise(tmp_path, "echo short; echo lines", budget=Budget(output_bytes=500))
    assert outcome.state is RunState.SUCCEEDED


@pytest.mark.anyio
async def test_lines_replayed_after_a_reattach_count_toward_the_output_budget(tmp_path: Path) -> None:
    """The lines the log already has are not written again, but they are the run's output all the same."""
    runner = LocalRunner(grace_s=0.5)
    first = AgentSupervisor(runner, ShellEngine("echo 0123456789abcdefghi; echo 0123456789abcdefghi; sleep 60"),
                            log=ListLog(), cleanup=False)
    spec = make_spec(first, tmp_path, run_id="replay-1")
    handle = await runner.start(spec)
    try:
        log = ListLog()
        again = AgentSupervisor(runner, first.engine, log=log, budget=Budget(output_bytes=30))
        with anyio.fail_after(20):
            outcome = await again.reattach(handle.run_id, scratch=spec.scratch, skip_lines=2)
    finally:
        await handle.stop()
    assert outcome.state is RunState.OVER_BUDGET
    assert "40 bytes printed" in outcome.reason
    assert log.lines == ["[fleet] output budget spent (40 bytes printed, the limit is 30)"]
