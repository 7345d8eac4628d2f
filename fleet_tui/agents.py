"""Supervision of one agent run: start it on a runner, pump its output through the engine's parser into the
run log and to subscribers, account for usage, kill it at its timeout, budget or stall, and report the outcome.

After the process ends, the runner copies the run's scratch dir back (`Runner.collect`) before the result is
read from it and the run is cleaned up. A run whose host stops answering is not judged: the outcome says
`host_unreachable`, nothing is cleaned up, and `fleet_tui.supervise` follows it again when the host is back.

A re-attached run (after a restart) is read from its first line: the parser sees the whole output once, so
usage and verdicts count exactly once, and the log gets only the lines it did not have yet.

Subscribers get sanitized display lines in batches through bounded buffers: one that does not keep up
loses its oldest lines and never slows the run. The run log gets every raw line.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from fleet_tui.engines.base import Engine, EngineResult, LogLine, Task, UsageUpdate
from fleet_tui.model import RunState, Usage
from fleet_tui.runners.base import HostUnreachable, RunHandle, Runner, RunSpec
from fleet_tui.untrusted import line_for_terminal
from fleet_tui.workspace import SAFE_DIRECTORY_ENV, write_scratch_files

Publish = Callable[[tuple[str, ...]], None]  # must not block: called from the run's pump


class RunLogWriter(Protocol):
    """What the supervisor needs of the journal's per-run log."""

    def write(self, line: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one run; 0 means no limit."""

    tokens: int = 0
    usd: float = 0.0
    output_bytes: int = 0  # acts mid-run for engines that report usage only at a turn's end (Codex)

    def exceeded(self, usage: Usage) -> str:
        """Why `usage` is over this budget, or "" when it is not."""
        if self.tokens and usage.tokens > self.tokens:
            return f"token budget of {self.tokens} passed ({usage.tokens} tokens used)"
        if self.usd and usage.cost_usd > self.usd:
            return f"budget of ${self.usd:.2f} passed (${usage.cost_usd:.2f} spent)"
        return ""

    def output_exceeded(self, printed: int) -> str:
        """Why `printed` bytes of output are over this budget, or "" when they are not."""
        if self.output_bytes and printed > self.output_bytes:
            return f"output budget spent ({printed} bytes printed, the limit is {self.output_bytes})"
        return ""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: what the orchestrator records in the journal and acts on."""

    run_id: str
    state: RunState
    exit_code: int | None
    usage: Usage
    result: EngineResult
    reason: str = ""
    last_line: str = ""  # sanitized
    started_at: float = 0.0  # epoch seconds
    ended_at: float = 0.0
    lines: int = 0  # raw lines seen
    host_unreachable: bool = False  # not ended: its host stopped answering (state and result mean nothing yet)


class Subscription:
    """One subscriber's view of a `LineFeed`: iterate for batches of lines; old lines go when it lags."""

    def __init__(self, feed: LineFeed, maxlen: int) -> None:
        self._feed = feed
        self._buffer: deque[str] = deque(maxlen=maxlen)
        self._ready = anyio.Event()
        self._closed = False
        self.dropped = 0

    def _push(self, lines: Sequence[str]) -> None:
        overflow = len(self._buffer) + len(lines) - (self._buffer.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
        self._buffer.extend(lines)
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    def pending(self) -> int:
        return len(self._buffer)

    def __aiter__(self) -> AsyncIterator[tuple[str, ...]]:
        return self

    async def __anext__(self) -> tuple[str, ...]:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._ready.wait()
            self._ready = anyio.Event()
        batch = tuple(self._buffer)
        self._buffer.clear()
        return batch

    def close(self) -> None:
        self._feed._subs.discard(self)
        self._close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineFeed:
    """Fan-out of display lines to any number of subscribers; `publish` never blocks."""

    def __init__(self, maxlen: int = 5000) -> None:
        self.maxlen = maxlen
        self._subs: set[Subscription] = set()
        self.closed = False

    def subscribe(self, maxlen: int | None = None) -> Subscription:
        sub = Subscription(self, maxlen or self.maxlen)
        if self.closed:
            sub._close()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, lines: tuple[str, ...]) -> None:
        for sub in list(self._subs):
            sub._push(lines)

    def close(self) -> None:
        """The run ended: subscribers finish once they have read what is buffered."""
        self.closed = True
        for sub in list(self._subs):
            sub._close()
        self._subs.clear()


class AgentSupervisor:
    """Runs one agent from start (or re-attach) to outcome. Make one per run."""

    def __init__(self, runner: Runner, engine: Engine, *, log: RunLogWriter, publish: Publish | None = None,
                 budget: Budget = Budget(), feed: LineFeed | None = None, flush_interval_s: float = 0.05,
                 batch_max: int = 500, drain_s: float = 10.0, cleanup: bool = True, stall_s: float = 0,
                 on_handle: Callable[[RunHandle], None] | None = None) -> None:
        """`stall_s`: a run with no output for that long is killed as TIMED_OUT ("stalled"); 0: never.
        `on_handle`: told the run's handle once it has started or been attached (e.g. which host it is on)."""
        self.runner = runner
        self.engine = engine
        self.log = log
        self.budget = budget
        self.feed = feed or LineFeed()
        self._publishers: list[Publish] = [self.feed.publish, *([publish] if publish else [])]
        self._flush_interval_s = flush_interval_s
        self._batch_max = batch_max
        self._drain_s = drain_s
        self._cleanup = cleanup
        self.stall_s = max(0.0, float(stall_s))
        self.state = RunState.QUEUED
        self.usage = Usage()
        self.lines_seen = 0
        self.bytes_seen = 0  # raw output, replayed lines included: all of it is the run's output
        self.last_line = ""
        self._pending: list[str] = []
        self._handle: RunHandle | None = None
        self._kill_state: RunState | None = None
        self._kill_reason = ""
        self._stop_requested = False
        self._kill_requested = anyio.Event()
        self._stopping: anyio.Event | None = None  # a stop under way; set once it has been sent
        self._skip = 0  # lines at the start already in the log (a re-attach): parsed, not written again
        self._last_output = 0.0
        self._on_handle = on_handle

    # --- building the run ---------------------------------------------------------------------

    def build_spec(self, task: Task, *, workspace: Path, scratch: Path, timeout_s: float, network: str = "none",
                   labels: dict[str, str] | None = None, extra_env: dict[str, str] | None = None) -> RunSpec:
        """The RunSpec of `task`: the engine's invocation with its files written into `scratch`. A run
        whose engine needs no model API gets no network, whatever `network` says."""
        workdir, scratch_seen = self.runner.paths(workspace, scratch)
        invocation = self.engine.invocation(task, workdir=workdir, scratch=scratch_seen)
        write_scratch_files(scratch, invocation.files)
        env = {**SAFE_DIRECTORY_ENV, **(extra_env or {}), **invocation.env}
        invocation = type(invocation)(argv=invocation.argv, env=env, files=invocation.files,
                                      needs_network=invocation.needs_network,
                                      stdin_devnull=invocation.stdin_devnull)
        return RunSpec(run_id=task.run_id, role=task.role, issue=task.issue, invocation=invocation,
                       workspace=workspace, scratch=scratch, timeout_s=timeout_s,
                       network=network if invocation.needs_network else "none", labels=dict(labels or {}))

    # --- running ------------------------------------------------------------------------------

    async def run(self, spec: RunSpec) -> RunOutcome:
        """Start `spec` and supervise it to the end."""
        started = time.time()
        self.state = RunState.STARTING
        try:
            handle = await self.runner.start(spec)
        except Exception as exc:  # noqa: BLE001 - any start failure is a failed run with a reason
            reason = f"could not start: {exc}"
            self._note(f"[fleet] {reason}")
            self._flush()
            self.feed.close()
            self.state = RunState.FAILED
            return RunOutcome(spec.run_id, RunState.FAILED, None, Usage(), EngineResult(ok=False, summary=reason),
                              reason, line_for_terminal(reason), started, time.time())
        return await self._supervise(handle, spec.scratch, spec.timeout_s, started)

    async def reattach(self, run_id: str, *, scratch: Path, timeout_s: float | None = None,
                       started_at: float | None = None, skip_lines: int = 0) -> RunOutcome:
        """Supervise a run found by `runner.find_runs()` after a restart (running, or ended meanwhile). Its
        whole output is read from the start and parsed once, so usage and the verdict are all counted, once;
        the first `skip_lines` lines (what the run log already holds) are not written to the log or the feed
        again. The outcome's usage is the run's total, not what came after the restart."""
        self._skip = max(0, int(skip_lines))
        handle = await self.runner.attach(run_id)
        started = started_at if started_at is not None else float(getattr(handle, "started_at", time.time()))
        return await self._supervise(handle, scratch, timeout_s, started)

    async def stop(self, reason: str = "stopped by the operator") -> None:
        """The operator's stop: kill the run now; the outcome says STOPPED. A stop while another stop (or a
        kill for timeout, budget or stall) is under way does nothing more: it waits for that one."""
        self._stop_requested = True
        await self._kill(RunState.STOPPED, reason)

    async def _supervise(self, handle: RunHandle, scratch: Path, timeout_s: float | None,
                         started: float) -> RunOutcome:
        self._handle = handle
        self.state = RunState.RUNNING
        if self._on_handle is not None:
            self._on_handle(handle)
        parser = self.engine.parser()
        pump_done = anyio.Event()
        exit_code: int | None = None
        error = ""

        async def pump() -> None:
            try:
                async for raw in handle.lines():
                    self._on_line(raw, parser)
            except Exception as exc:  # noqa: BLE001 - a broken stream must not lose the run's result
                self._note(f"[fleet] log stream ended early: {exc}")
            finally:
                pump_done.set()

        async def killer() -> None:
            await self._kill_requested.wait()
            try:
                await self._stop_handle()
            except HostUnreachable as exc:  # the wait below sees the host gone too
                self._note(f"[fleet] cannot stop the run now: {exc}")

        watching = anyio.CancelScope()

        async def watchdog() -> None:
            """Kills a run that has written nothing for `stall_s` (a hung agent before its timeout)."""
            self._last_output = anyio.current_time()
            with watching:
                await stall_watch()

        async def stall_watch() -> None:
            while self._kill_state is None:
                silent = anyio.current_time() - self._last_output
                if silent >= self.stall_s:
                    self._start_kill(RunState.TIMED_OUT, f"stalled: no output for {self.stall_s:g} s")
                    return
                await anyio.sleep(min(self.stall_s - silent + 0.01, max(0.05, self.stall_s / 4)))

        async def flusher() -> None:
            while True:
                await anyio.sleep(self._flush_interval_s)
                self._flush()

        # Backstop for a runner that does not enforce the timeout itself; runners answer 124 at it.
        guard_s = math.inf if timeout_s is None else max(0.0, started + timeout_s - time.time()) + 15.0
        unreachable = ""
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            tg.start_soon(flusher)
            tg.start_soon(killer)
            if self.stall_s:
                tg.start_soon(watchdog)
            if self._stop_requested:
                self._kill_requested.set()
            try:
                with anyio.move_on_after(guard_s) as guard:
                    exit_code = await handle.wait()
                if guard.cancelled_caught:
                    self._kill_state = self._kill_state or RunState.TIMED_OUT
                    self._kill_reason = self._kill_reason or f"timed out after {timeout_s:g} s"
                    await self._stop_handle()
                    with anyio.move_on_after(30):
                        exit_code = await handle.wait()
            except HostUnreachable as exc:
                unreachable = str(exc)
            except Exception as exc:  # noqa: BLE001 - the runner lost the run (engine gone, container removed)
                error = str(exc)
            if not unreachable and not error:
                unreachable = await self._collect(handle, scratch)
            watching.cancel()  # the process has ended: a quiet drain is no stall
            # Drain what the process wrote before it ended: as long as lines keep coming, however many,
            # and at most `drain_s` of silence (a stream that never ends must not hold the outcome).
            while not pump_done.is_set():
                seen = self.lines_seen
                with anyio.move_on_after(self._drain_s):
                    await pump_done.wait()
                if self.lines_seen == seen:
                    break
            tg.cancel_scope.cancel()

        if unreachable:  # not ended, not judged, not cleaned up: followed again when the host is back
            self._note(f"[fleet] host unreachable: {unreachable}")
            self._flush()
            self.feed.close()
            return RunOutcome(handle.run_id, RunState.RUNNING, None, self.usage, EngineResult(ok=False),
                              unreachable, self.last_line, started, time.time(), self.lines_seen,
                              host_unreachable=True)
        state, reason = self._judge(handle, exit_code, error, timeout_s)
        if reason and state is not RunState.SUCCEEDED:
            self._note(f"[fleet] {reason}")
        self._flush()
        self.feed.close()
        try:
            result = parser.result(exit_code if exit_code is not None else -1, scratch)
        except Exception as exc:  # noqa: BLE001 - an engine bug must not lose the outcome
            result = EngineResult(ok=False, summary=f"could not read the result: {exc}", usage=self.usage)
        usage = result.usage if (result.usage.tokens or result.usage.cost_usd) else self.usage
        if state is RunState.SUCCEEDED and not result.ok:
            state, reason = RunState.FAILED, "the agent reported failure"
        self.state = state
        self.usage = usage
        if self._cleanup:
            # Not shielded: a quit here leaves the ended run in place, and the next start collects it again.
            with anyio.move_on_after(60):
                try:
                    await self.runner.cleanup(handle.run_id)
                except Exception:  # noqa: BLE001 - a leftover container is found again by find_runs
                    pass
        return RunOutcome(handle.run_id, state, exit_code, usage, result, reason, self.last_line, started,
                          time.time(), self.lines_seen)

    async def _collect(self, handle: RunHandle, scratch: Path) -> str:
        """Bring the run's scratch dir back from where it ran; "" when done, why when its host is unreachable.
        Any other failure is noted and leaves the result unread (the parser then finds none)."""
        collect = getattr(self.runner, "collect", None)
        if collect is None:
            return ""
        try:
            with anyio.move_on_after(300):
                await collect(handle.run_id, scratch)
        except HostUnreachable as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - the outcome says the result could not be read
            self._note(f"[fleet] cannot copy the run's files back: {exc}")
        return ""

    def _judge(self, handle: RunHandle, exit_code: int | None, error: str,
               timeout_s: float | None) -> tuple[RunState, str]:
        if self._kill_state is not None:
            return self._kill_state, self._kill_reason
        if error:
            return RunState.LOST, f"lost the run: {error}"
        if getattr(handle, "timed_out", False):
            return RunState.TIMED_OUT, f"timed out after {timeout_s:g} s" if timeout_s else "timed out"
        if getattr(handle, "stopped", False):
            return RunState.STOPPED, "stopped"
        if exit_code == 0:
            return RunState.SUCCEEDED, ""
        reason = f"exited with code {exit_code}"
        if getattr(handle, "oom_killed", False):
            reason += " (out of memory)"
        return RunState.FAILED, reason

    # --- output -------------------------------------------------------------------------------

    def _on_line(self, raw: str, parser: Any) -> None:
        self.lines_seen += 1
        self.bytes_seen += len(raw.encode("utf-8", "replace")) + 1  # the line and its newline
        self._last_output = anyio.current_time()
        replayed = self.lines_seen <= self._skip  # already in the log before a restart
        if not replayed:
            self.log.write(raw)
        try:
            outputs = parser.feed(raw)
        except Exception:  # noqa: BLE001 - the contract says never raises; keep the line if one does
            outputs = [LogLine(raw)]
        for out in outputs:
            if isinstance(out, LogLine):
                shown = line_for_terminal(out.text)
                if not replayed:  # the console showed it before the restart
                    self._pending.append(shown)
                if shown.strip():
                    self.last_line = shown
            elif isinstance(out, UsageUpdate):
                self.usage = out.usage
                over = self.budget.exceeded(out.usage)
                if over and self._kill_state is None:
                    self._start_kill(RunState.OVER_BUDGET, over)
        if self._kill_state is None:
            over = self.budget.output_exceeded(self.bytes_seen)
            if over:
                self._start_kill(RunState.OVER_BUDGET, over)
        if len(self._pending) >= self._batch_max:
            self._flush()

    def _start_kill(self, state: RunState, reason: str) -> None:
        """Ask for a kill from inside the pump; the killer task stops the run while the pump keeps reading."""
        self._kill_state, self._kill_reason = state, reason
        self._kill_requested.set()

    async def _kill(self, state: RunState, reason: str) -> None:
        if self._kill_state is None:
            self._kill_state, self._kill_reason = state, reason
        if self._handle is not None:
            await self._stop_handle()

    async def _stop_handle(self) -> None:
        """Stop the run's process once: later callers wait for the first stop instead of sending another."""
        if self._handle is None:
            return
        if self._stopping is not None:
            await self._stopping.wait()
            return
        self._stopping = stopping = anyio.Event()
        try:
            await self._handle.stop()
        finally:
            self._stopping = None  # done (or failed): a later stop may try again
            stopping.set()

    def _note(self, line: str) -> None:
        """A line of our own in the log and the feed (why a run was killed, why it could not start)."""
        self.log.write(line)
        self._pending.append(line_for_terminal(line))
        self.last_line = line_for_terminal(line)

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = tuple(self._pending)
        self._pending.clear()
        for publish in self._publishers:
            publish(batch)
