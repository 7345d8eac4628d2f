"""The local runner: an agent as a process on this machine, in a bubblewrap sandbox where the host has one.

Each run leads its own session (its whole process group can be killed), reads /dev/null and writes stdout
and stderr merged into `.fleet-output.log` in its scratch dir, through a small shell wrapper that records
its exit code in the runner's own directory (never in a place the agent can write: the wrapper runs outside
the sandbox and must not follow a link the agent planted). Nothing ties the process to the orchestrator: a
console quit leaves it running, and a restarted orchestrator finds it (a record per run in `runs_dir`, with
the process's start time, so a reused pid is never taken for it), reads its whole output and collects its
exit code, also of a run that ended meanwhile. The output file is read through the file the runner
created (its inode is recorded): a run that swaps it for a link to another file gets no one to read that. The environment is only what the Invocation gives plus PATH and
LANG; HOME is the Invocation's, else the scratch dir.

Sandbox (`bwrap`, when on PATH or asked for): new user, PID, mount, IPC, UTS and cgroup namespaces, and
no network unless the run's network is other than "none"; all capabilities dropped; / read-only; a fresh
/proc that shows only the sandbox's processes; /dev minimal; private /tmp, /var/tmp and /run (so no
socket there, the Docker socket included, is reachable); tmpfs over /home, /root and the operator's HOME,
so no dotfile or token there is readable; the workspace and the scratch dir bind-mounted writable at their
own paths. `--die-with-parent` is deliberately not used: an agent outlives a console quit, as a container
does, and is re-attached or stopped by the next orchestrator. Without bwrap ("none") the agent runs as the
operator with no isolation: trusted setups only.

Also home of `LineSplitter`, which the Docker runner shares.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc

from fleet_tui.model import Role
from fleet_tui.runners.base import LiveRun, RunSpec, check_instance

TIMEOUT_EXIT = 124  # what `timeout(1)` returns; a run killed at its timeout reports it
KILLED_EXIT = 128 + signal.SIGKILL  # a run that ended without recording its code was killed
MAX_LINE_BYTES = 64 * 1024  # a longer line is cut into pieces, so one endless line cannot eat memory
OUTPUT_FILE = ".fleet-output.log"  # in the scratch dir: everything the run wrote
_PASSED_THROUGH = ("PATH", "LANG")
_READ_BYTES = 1 << 20
_POLL_S = (0.01, 0.2)  # how often an idle output file is looked at: from quick to relaxed
# Runs the agent, then records its exit code atomically; $0 is the exit file.
_WRAPPER = 'code=0; "$@" || code=$?; printf "%s\\n" "$code" > "$0.tmp" && mv -f "$0.tmp" "$0"; exit "$code"'

Sandbox = Literal["auto", "bwrap", "none"]


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


def _safe(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in run_id)


def exit_code_of(returncode: int) -> int:
    """Shell-style exit code: a process killed by signal N reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def local_sandbox_available() -> bool:
    """Whether local runs can be sandboxed here: bwrap is on PATH and can create its namespaces."""
    bwrap = shutil.which("bwrap")
    return bwrap is not None and _bwrap_works(bwrap)


@functools.lru_cache(maxsize=4)
def _bwrap_works(bwrap: str) -> bool:
    try:
        done = subprocess.run([bwrap, "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                               "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when there is no such live process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] == "Z":
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _open_output(record: RunRecord) -> int | None:
    """The run's output file, if it is still the very file the runner created (not a link planted since)."""
    try:
        fd = os.open(Path(record.scratch) / OUTPUT_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    stat = os.fstat(fd)
    if (stat.st_dev, stat.st_ino) != tuple(record.output_inode):
        os.close(fd)
        return None
    return fd


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What a restarted orchestrator needs to find a local run again; kept outside the sandbox."""

    run_id: str
    instance: str
    repo: str
    pid: int
    proc_start: int | None
    role: str
    issue: int | None
    scratch: str
    started_at: float
    timeout_s: float
    exit_file: str  # where the wrapper writes the exit code (outside the sandbox's reach)
    output_inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the output file the runner created

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        try:
            data = json.loads(path.read_text())
            data["output_inode"] = tuple(data.get("output_inode") or (0, 0))
            return cls(**{name: data[name] for name in cls.__slots__})  # type: ignore[attr-defined]
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def alive(self) -> bool:
        return self.proc_start is not None and _proc_start(self.pid) == self.proc_start


class LocalRunHandle:
    """A local run. `lines()` reads its output file from the start (each call anew); `wait()` enforces the
    run's timeout; `stop()` kills its process group."""

    def __init__(self, record: RunRecord, process: anyio.abc.Process | None, grace_s: float,
                 spec: RunSpec | None = None, output_fd: int | None = None) -> None:
        self.run_id = record.run_id
        self.record = record
        self.spec = spec
        self.started_at = record.started_at
        self.timed_out = False
        self.stopped = False
        self.exit_code: int | None = None
        self._process = process  # None when attached after a restart: not our child
        self._deadline = record.started_at + record.timeout_s  # epoch seconds
        self._grace_s = grace_s
        self._done = anyio.Event()
        self._waiting = False
        self._stop_done: anyio.Event | None = None
        self._output_fd = output_fd if output_fd is not None else _open_output(record)

    def close(self) -> None:
        """Let go of the output file (after the run's output has been read)."""
        fd, self._output_fd = self._output_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def output_path(self) -> Path:
        return Path(self.record.scratch) / OUTPUT_FILE

    @property
    def exit_path(self) -> Path:
        return Path(self.record.exit_file)

    def ended(self) -> bool:
        if self._process is not None:
            return self._process.returncode is not None
        return not self.record.alive()

    async def lines(self) -> AsyncIterator[str]:
        if self._output_fd is None:
            raise RunnerError(f"the output of run {self.run_id} cannot be read: its file in the scratch dir is "
                              "gone or was replaced")
        splitter = LineSplitter()
        offset = 0  # each reader its own: positional reads share no file offset

        def read() -> bytes:
            nonlocal offset
            if self._output_fd is None:
                return b""
            data = os.pread(self._output_fd, _READ_BYTES, offset)
            offset += len(data)
            return data

        idle = 0
        while True:
            data = read()
            if data:
                idle = 0
                for line in splitter.feed(data):
                    yield line
                continue
            if self.ended():
                # The writer is gone: what is in the file now is all there is.
                while data := read():
                    for line in splitter.feed(data):
                        yield line
                break
            idle += 1
            await anyio.sleep(min(_POLL_S[1], _POLL_S[0] * idle))
        for line in splitter.flush():
            yield line

    async def wait(self) -> int:
        if self._waiting:  # a second waiter just waits for the first one's answer
            await self._done.wait()
            assert self.exit_code is not None
            return self.exit_code
        self._waiting = True
        try:
            with anyio.move_on_after(max(0.0, self._deadline - time.time())) as scope:
                code = await self._wait_end()
            if scope.cancelled_caught and not self.stopped:
                self.timed_out = True
                await self._kill_group()
                code = await self._wait_end()
            self._signal_group(signal.SIGKILL)  # whatever the process left behind in its group goes too
            self.exit_code = TIMEOUT_EXIT if self.timed_out else code
        finally:
            if self.exit_code is not None:
                self._done.set()
            else:
                self._waiting = False
        return self.exit_code

    async def _wait_end(self) -> int:
        if self._process is not None:
            return exit_code_of(await self._process.wait())
        idle = 0
        while self.record.alive():
            idle += 1
            await anyio.sleep(min(_POLL_S[1], _POLL_S[0] * idle))
        try:
            return int(self.exit_path.read_text().strip())
        except (OSError, ValueError):
            return KILLED_EXIT

    async def stop(self) -> None:
        if self.ended():
            self._signal_group(signal.SIGKILL)
            return
        self.stopped = True
        if self._stop_done is not None:  # a stop is under way: wait for it, do not signal twice
            await self._stop_done.wait()
            return
        self._stop_done = anyio.Event()
        try:
            await self._kill_group()
        finally:
            self._stop_done.set()
            self._stop_done = None

    async def _kill_group(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace period."""
        self._signal_group(signal.SIGTERM)
        with anyio.move_on_after(self._grace_s):
            await self._wait_end()
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        if self._process is None and not self.record.alive():
            return  # not our child: signal only the very process we started, never a reused pid
        try:
            os.killpg(self.record.pid, sig)  # the wrapper leads its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass


class LocalRunner:
    """Runs each agent as a local process of this fleet instance, sandboxed with bwrap when available."""

    kind = "local"

    def __init__(self, *, instance: str = "local", repo: str = "", runs_dir: Path | None = None,
                 sandbox: Sandbox = "auto", ro_paths: Sequence[Path] = (), grace_s: float = 2.0) -> None:
        """`instance`: this fleet's id (`fleet_instance_id()`). `runs_dir`: where a record of each run is kept
        so a restarted orchestrator finds it (None: runs are known to this object only). `sandbox`: "auto"
        uses bwrap when it works here, "bwrap" requires it, "none" runs unsandboxed. `ro_paths`: host paths
        the sandbox shows read-only although they lie in a hidden place (an agent CLI installed in a home
        directory, e.g. ~/.nvm)."""
        if sandbox not in ("auto", "bwrap", "none"):
            raise ValueError(f'sandbox must be "auto", "bwrap" or "none", got {sandbox!r}')
        self.instance = check_instance(instance)
        self.repo = repo
        self.runs_dir = runs_dir
        self.ro_paths = tuple(Path(p).expanduser().absolute() for p in ro_paths)
        self._grace_s = grace_s
        self._runs: dict[str, LocalRunHandle] = {}
        self._private: Path | None = None
        self._bwrap: str | None = None
        if sandbox != "none":
            found = shutil.which("bwrap")
            self._bwrap = found if found is not None and _bwrap_works(found) else None
            if sandbox == "bwrap" and self._bwrap is None:
                raise RunnerError("runner sandbox is bwrap, but bubblewrap is not installed or cannot create "
                                  "namespaces here (install bubblewrap, or allow unprivileged user namespaces)")
        self.sandboxed = self._bwrap is not None

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return str(spec_workspace), str(spec_scratch)

    def _record_path(self, run_id: str) -> Path | None:
        if self.runs_dir is None:
            return None
        return self.runs_dir / self.instance / f"{_safe(run_id)}.json"

    def _private_dir(self) -> Path:
        """The runner's own directory (exit codes): `runs_dir`, else a private temporary one."""
        if self._private is None:
            if self.runs_dir is not None:
                self._private = self.runs_dir / self.instance
                self._private.mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                self._private = Path(tempfile.mkdtemp(prefix=f"fleet-{self.instance}-"))
        return self._private

    def _argv(self, spec: RunSpec, shown: Sequence[str] = ()) -> list[str]:
        argv = list(spec.invocation.argv)
        if self._bwrap is None:
            return argv
        binds = []
        for path in (spec.workspace, spec.scratch):  # at the path the run was told, and the real one
            seen, real = str(path.absolute()), str(path.resolve())
            binds += ["--bind", real, seen] + (["--bind", real, real] if real != seen else [])
        args = [self._bwrap, "--unshare-all", "--cap-drop", "ALL"]
        if spec.network and spec.network != "none":
            args.append("--share-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for path in self._hidden():
            args += ["--tmpfs", path]
        # The fleet's own Python stays runnable (the scripted engine, Python-based agents), wherever it lives.
        pythons = [p for p in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)} if p != "/"]
        for path in dict.fromkeys([*map(str, self.ro_paths), *shown, *sorted(pythons)]):
            args += ["--ro-bind-try", path, path]
        return [*args, *binds, "--chdir", str(spec.workspace.absolute()), "--", *argv]

    def _hidden(self) -> list[str]:
        """What the sandbox covers with an empty tmpfs: temp dirs, /run (sockets), and home directories."""
        hidden = ["/tmp", "/var/tmp", "/run", "/home", "/root"]
        if not Path("/var/run").is_symlink():
            hidden.append("/var/run")
        operator_home = os.path.realpath(os.path.expanduser("~"))
        if operator_home not in ("/", "") and not any(operator_home.startswith(h + "/") for h in hidden):
            hidden.append(operator_home)
        return [path for path in hidden if Path(path).is_dir()]

    def _program_paths(self, spec: RunSpec, path_env: str | None) -> list[str]:
        """Where the agent's program lives, when the sandbox would hide it: its installation prefix (the
        directory above its bin/), shown read-only. Only a tool's own tree deep in a home directory qualifies
        (~/.pyenv/versions/3.12.1, ~/.nvm/versions/node/v22); anything else there needs `ro_paths`.
        Raises a clear `RunnerError` when the program cannot be found or cannot be shown."""
        argv0 = spec.invocation.argv[0]
        if "/" in argv0 and not os.path.isabs(argv0):
            return []  # relative to the workspace: found (or not) by the process itself
        found = shutil.which(argv0, path=path_env)
        if found is None:
            raise RunnerError(f"cannot start {argv0!r} for run {spec.run_id}: no such program")
        if self._bwrap is None:
            return []
        hidden = self._hidden()
        shown = [*map(str, self.ro_paths), str(spec.workspace.absolute()), str(spec.scratch.absolute())]

        def under(path: str, roots: Sequence[str]) -> str | None:
            return next((r for r in roots if path == r or path.startswith(r.rstrip("/") + "/")), None)

        real = os.path.realpath(found)
        if not under(real, hidden) or under(real, shown):
            return []
        bin_dir = os.path.dirname(real)
        prefix = os.path.dirname(bin_dir)
        homes = [os.path.realpath(os.path.expanduser("~")), "/".join(real.split("/")[:3]), *hidden]
        base = max((h for h in homes if under(real, [h])), key=len)  # the home (or hidden dir) it is in
        depth = len(Path(prefix).relative_to(base).parts) if under(prefix, [base]) else 0
        if os.path.basename(bin_dir) != "bin" or depth < 2:
            raise RunnerError(f"cannot start {argv0!r} for run {spec.run_id}: it is {real}, which the local "
                              "sandbox hides (home and temp directories); install it elsewhere (e.g. /usr/local) "
                              "or list its directory in the runner's read-only paths")
        return [prefix]

    async def start(self, spec: RunSpec) -> LocalRunHandle:
        if spec.run_id in self._runs:
            raise RunnerError(f"run {spec.run_id} is already running")
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env["HOME"] = str(spec.scratch)
        env.update(spec.invocation.env)
        if not spec.invocation.argv:
            raise RunnerError(f"cannot start run {spec.run_id}: the command is empty")
        argv0 = spec.invocation.argv[0]
        program_paths = self._program_paths(spec, env.get("PATH"))
        argv = self._argv(spec, program_paths)
        output = spec.scratch / OUTPUT_FILE
        started_at = time.time()
        read_fd: int | None = None
        try:
            exit_file = self._private_dir() / f"{_safe(spec.run_id)}.exit"
            exit_file.unlink(missing_ok=True)
            output.unlink(missing_ok=True)  # whatever was there (a link, say) goes; the new file is ours
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            try:
                read_fd = os.open(output, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                process = await anyio.open_process(
                    ["/bin/sh", "-c", _WRAPPER, str(exit_file), *argv], cwd=str(spec.workspace), env=env,
                    stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True)
                stat = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if read_fd is not None:
                os.close(read_fd)
            raise RunnerError(f"cannot start {argv0!r} for run {spec.run_id}: {exc.strerror or exc}") from None
        record = RunRecord(spec.run_id, self.instance, self.repo, process.pid, _proc_start(process.pid),
                           str(spec.role), spec.issue, str(spec.scratch), started_at, spec.timeout_s,
                           str(exit_file), (stat.st_dev, stat.st_ino))
        path = self._record_path(spec.run_id)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(record)))
            tmp.replace(path)
        handle = LocalRunHandle(record, process, self._grace_s, spec, read_fd)
        self._runs[spec.run_id] = handle
        return handle

    def _records(self) -> dict[str, RunRecord]:
        if self.runs_dir is None or not (self.runs_dir / self.instance).is_dir():
            return {}
        found = {}
        for path in sorted((self.runs_dir / self.instance).glob("*.json")):
            record = RunRecord.read(path)
            if record is not None and record.instance == self.instance:
                found[record.run_id] = record
        return found

    async def find_runs(self) -> list[LiveRun]:
        """This instance's runs not yet cleaned up, live or ended with a result to collect: the ones started
        here, and (with `runs_dir`) those an earlier orchestrator of this instance started."""
        records = {**self._records(), **{h.run_id: h.record for h in self._runs.values()}}
        runs = []
        for record in records.values():
            try:
                role = Role(record.role)
            except ValueError:
                continue
            runs.append(LiveRun(record.run_id, role, record.issue, record.started_at))
        return runs

    async def attach(self, run_id: str) -> LocalRunHandle:
        """The handle of a run of this instance; its `lines()` read the whole output from the start."""
        handle = self._runs.get(run_id)
        if handle is not None:
            return handle
        path = self._record_path(run_id)
        record = RunRecord.read(path) if path is not None else None
        if record is None or record.instance != self.instance or record.run_id != run_id:
            raise RunnerError(f"run {run_id} is not a local run of this fleet (no record of it in "
                              f"{self.runs_dir or 'memory'})")
        handle = LocalRunHandle(record, None, self._grace_s)
        self._runs[run_id] = handle
        return handle

    async def collect(self, run_id: str, scratch: Path) -> None:
        """Nothing to copy: a local run writes its scratch dir in place."""

    async def cleanup(self, run_id: str) -> None:
        """Stop the run if it still runs and forget it; its output file stays in the scratch dir."""
        handle = self._runs.pop(run_id, None)
        if handle is None:
            with contextlib.suppress(RunnerError):
                handle = await self.attach(run_id)
                self._runs.pop(run_id, None)
        if handle is not None and not handle.ended():
            await handle.stop()
            await handle.wait()
        if handle is not None:
            handle.close()
            Path(handle.record.exit_file).unlink(missing_ok=True)
        if self.runs_dir is None and self._private is not None and not self._runs:
            with contextlib.suppress(OSError):  # the temporary one goes once empty
                self._private.rmdir()
                self._private = None
        path = self._record_path(run_id)
        if path is not None:
            path.unlink(missing_ok=True)
