"""The local runner: an agent as a subprocess in its workspace, for trusted setups.

The process gets its own session (so its whole process group can be killed), stdin from /dev/null, stdout
and stderr merged, and an environment of only what the Invocation gives plus PATH, HOME and LANG.
Also home of `LineSplitter`, which the Docker runner shares.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc

from fleet_tui.runners.base import LiveRun, RunSpec

TIMEOUT_EXIT = 124  # what `timeout(1)` returns; a run killed at its timeout reports it
MAX_LINE_BYTES = 64 * 1024  # a longer line is cut into pieces, so one endless line cannot eat memory
_PASSED_THROUGH = ("PATH", "HOME", "LANG")


class RunnerError(Exception):
    """A runner could not do what was asked (start, attach); the message is for the operator."""


class LineSplitter:
    """Bytes in, complete text lines out (no line ending); a line longer than `max_bytes` is cut."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        lines: list[str] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            lines.append(self._decode(self._buf[start:end]))
            start = end + 1
        del self._buf[:start]
        while len(self._buf) >= self._max:
            lines.append(self._decode(self._buf[: self._max]))
            del self._buf[: self._max]
        return lines

    def flush(self) -> list[str]:
        """The last line when the stream ended without a newline."""
        if not self._buf:
            return []
        line = self._decode(self._buf)
        self._buf.clear()
        return [line]

    @staticmethod
    def _decode(raw: bytes | bytearray) -> str:
        return bytes(raw).decode("utf-8", errors="replace").removesuffix("\r")


def exit_code_of(returncode: int) -> int:
    """Shell-style exit code: a process killed by signal N reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class LocalRunHandle:
    """A live local process. Read `lines()` once; `wait()` enforces the run's timeout."""

    def __init__(self, spec: RunSpec, process: anyio.abc.Process, started_at: float, grace_s: float) -> None:
        self.run_id = spec.run_id
        self.spec = spec
        self.started_at = started_at
        self.timed_out = False
        self.stopped = False
        self.exit_code: int | None = None
        self._process = process
        self._deadline = anyio.current_time() + spec.timeout_s
        self._grace_s = grace_s
        self._done = anyio.Event()
        self._waiting = False

    @property
    def pid(self) -> int:
        return self._process.pid

    async def lines(self) -> AsyncIterator[str]:
        stdout = self._process.stdout
        assert stdout is not None
        splitter = LineSplitter()
        while True:
            try:
                data = await stdout.receive(65536)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                break
            for line in splitter.feed(data):
                yield line
        for line in splitter.flush():
            yield line

    async def wait(self) -> int:
        if self._waiting:  # a second waiter just waits for the first one's answer
            await self._done.wait()
            assert self.exit_code is not None
            return self.exit_code
        self._waiting = True
        try:
            with anyio.move_on_after(max(0.0, self._deadline - anyio.current_time())) as scope:
                returncode = await self._process.wait()
            if scope.cancelled_caught and not self.stopped:
                self.timed_out = True
                await self._kill_group()
                returncode = await self._process.wait()
            self._signal_group(signal.SIGKILL)  # whatever the process left behind in its group goes too
            self.exit_code = TIMEOUT_EXIT if self.timed_out else exit_code_of(returncode)
        finally:
            self._done.set()
        return self.exit_code

    async def stop(self) -> None:
        if self._process.returncode is not None:
            self._signal_group(signal.SIGKILL)
            return
        self.stopped = True
        await self._kill_group()

    async def _kill_group(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace period."""
        self._signal_group(signal.SIGTERM)
        with anyio.move_on_after(self._grace_s):
            await self._process.wait()
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._process.pid, sig)  # the process leads its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass


class LocalRunner:
    """Runs each agent as a subprocess of this orchestrator (no isolation: trusted setups only)."""

    kind = "local"

    def __init__(self, *, grace_s: float = 2.0) -> None:
        self._grace_s = grace_s
        self._runs: dict[str, LocalRunHandle] = {}

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return str(spec_workspace), str(spec_scratch)

    async def start(self, spec: RunSpec) -> LocalRunHandle:
        if spec.run_id in self._runs:
            raise RunnerError(f"run {spec.run_id} is already running")
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.update(spec.invocation.env)
        try:
            process = await anyio.open_process(
                list(spec.invocation.argv), cwd=str(spec.workspace), env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            argv0 = spec.invocation.argv[0] if spec.invocation.argv else "(empty command)"
            raise RunnerError(f"cannot start {argv0!r} for run {spec.run_id}: {exc.strerror or exc}") from None
        handle = LocalRunHandle(spec, process, time.time(), self._grace_s)
        self._runs[spec.run_id] = handle
        return handle

    async def find_runs(self) -> list[LiveRun]:
        """Runs started by this runner and not yet cleaned up. A local process does not outlive its
        orchestrator's pipes in a useful way, so a restarted orchestrator finds none."""
        return [LiveRun(h.run_id, h.spec.role, h.spec.issue, h.started_at) for h in self._runs.values()]

    async def attach(self, run_id: str) -> LocalRunHandle:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunnerError(f"run {run_id} is not running here (local runs cannot be re-attached "
                              "after a restart)") from None

    async def cleanup(self, run_id: str) -> None:
        handle = self._runs.pop(run_id, None)
        if handle is not None and handle._process.returncode is None:
            await handle.stop()
            await handle.wait()
