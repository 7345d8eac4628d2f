"""The console's side of the socket: `RemoteFleet`, a `FleetControl` that talks to a served fleet.

The console hosts it exactly like an in-process fleet: `run()` in a worker (here: the connection, which ends
when the fleet goes away), `events()` for the panes, the intents and reads as calls. `shutdown()` only
closes this console's connection: the fleet keeps running for everyone else.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from fleet_tui.control import Detail, local_user
from fleet_tui.model import Event, SnapshotPublished
from fleet_tui.remote import UnsafeSocket, check_socket, peer_uid, reachable
from fleet_tui.remote.protocol import (
    HEADER,
    MAX_FRAME_FROM_FLEET,
    EventQueue,
    ProtocolError,
    Refused,
    decode,
    frame_length,
    hello,
    pack,
    unpack,
    version_problem,
)
from fleet_tui.untrusted import line_for_terminal

CONNECT_TIMEOUT_S = 10.0


class RemoteError(Exception):
    """The fleet answered a call with an error; `str()` is its message (sanitized)."""


async def open_connection(path: Path, *, console: str, user: str,
                          timeout: float = CONNECT_TIMEOUT_S) -> tuple[SocketStream, BufferedByteReceiveStream,
                                                                       dict[str, Any]]:
    """Connect to the fleet at `path` and say hello. Raises `Refused` (another protocol version, or the
    fleet said no), `UnsafeSocket`, or OSError (nothing listens)."""
    check_socket(path)
    with anyio.fail_after(timeout):
        stream = await _connect(path)
        try:
            uid = peer_uid(stream.extra(SocketAttribute.raw_socket))
            if uid is not None and uid != os.geteuid():
                raise UnsafeSocket(f"{path} is served by uid {uid}, not by this user: refusing it")
            reader = BufferedByteReceiveStream(stream)
            await stream.send(pack(hello(console=console, user=user)))
            answer = await _read(reader)
            if answer is None:
                raise Refused(f"the fleet at {path} closed the connection before answering")
            if answer.get("t") == "refused":
                raise Refused(line_for_terminal(str(answer.get("reason", "refused")), 500))
            problem = version_problem(answer, where=str(path), we="console")
            if problem:
                raise Refused(problem)
        except BaseException:
            await stream.aclose()
            raise
    return stream, reader, answer


async def _connect(path: Path) -> SocketStream:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with reachable(path) as name:
            await anyio.to_thread.run_sync(raw.connect, name, abandon_on_cancel=True)
        # a transport-based stream (not anyio's raw UNIX stream): cancelling a blocked send on it is clean
        return await SocketStream.from_socket(raw)
    except BaseException:
        raw.close()
        raise


async def _read(reader: BufferedByteReceiveStream) -> dict[str, Any] | None:
    try:
        header = await reader.receive_exactly(HEADER.size)
        body = await reader.receive_exactly(frame_length(header, MAX_FRAME_FROM_FLEET))
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return None
    return unpack(body)


async def probe(path: Path, *, timeout: float = 3.0) -> dict[str, Any]:
    """The fleet's hello, when one answers at `path` (else the error `open_connection` raises)."""
    stream, _reader, answer = await open_connection(path, console="probe", user=local_user(), timeout=timeout)
    await stream.aclose()
    return answer


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: Any = None
        self.error: str | None = None


class RemoteFleet:
    """A `FleetControl` for a fleet served at `path` (see `fleet_tui.remote.server`)."""

    attached = True  # the console says so in its header, and leaves the fleet running on quit

    def __init__(self, path: Path, *, repo: str = "", forge_kind: str = "local", console: str | None = None,
                 queue_limit: int = 2000) -> None:
        self.path = Path(path)
        self.repo = repo or str(self.path.parent.name)
        self.forge_kind = forge_kind
        self.console = console or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.user = local_user()
        self.fleet_pid: int | None = None
        self.state = "idle"  # idle | starting | running | stopped
        self.stopped_reason = ""
        self._queue_limit = queue_limit
        self._stream: SocketStream | None = None
        self._send_lock = anyio.Lock()
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._subscribers: list[tuple[EventQueue, list[anyio.Event]]] = []
        self._last: SnapshotPublished | None = None
        self._changed = anyio.Event()
        self._stop = False
        self._server_dropped = 0
        self._local_dropped = 0

    @property
    def dropped_lines(self) -> int:
        """Log lines this console never saw because it fell behind (the fleet's count plus its own)."""
        return self._server_dropped + self._local_dropped + sum(q.dropped_lines for q, _ in self._subscribers)

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.stopped_reason = state, reason
        self._changed.set()
        self._changed = anyio.Event()

    # --- the connection -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, follow the fleet's events and answer calls until the fleet goes away or `shutdown()`."""
        if self._stop:
            return
        self._set_state("starting")
        reason = "the fleet closed the connection"
        try:
            stream, reader, answer = await open_connection(self.path, console=self.console, user=self.user)
            self._stream = stream
            self.repo = line_for_terminal(str(answer.get("repo") or self.repo), 200)
            self.forge_kind = "github" if answer.get("forge_kind") == "github" else "local"
            pid = answer.get("pid")
            self.fleet_pid = pid if isinstance(pid, int) else None
            async with stream:
                await stream.send(pack({"t": "subscribe"}))
                self._set_state("running")
                while not self._stop:
                    message = await _read(reader)
                    if message is None:
                        break
                    self._dispatch(message)
        except BaseException as exc:
            if not self._stop:
                reason = str(exc) or type(exc).__name__
                raise
        finally:
            self._stream = None
            for call in self._calls.values():
                call.error = f"the connection to the fleet closed ({reason})"
                call.done.set()
            self._calls.clear()
            self._set_state("stopped", "detached" if self._stop else reason)
        if not self._stop:
            raise ConnectionError(f"the fleet at {self.path} went away ({reason}); restart to attach again")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "event":
            event = decode(message.get("event"))
            if not isinstance(event, Event):
                raise ProtocolError("an event frame without an event")
            if isinstance(event, SnapshotPublished):
                self._last = event
            for queue, waiters in self._subscribers:
                queue.put(event)
                if waiters:
                    waiters[0].set()
        elif kind in ("result", "error"):
            call = self._calls.pop(message.get("id"), None)  # type: ignore[arg-type]
            if call is None:
                return
            if kind == "result":
                call.value = decode(message.get("value"))
            else:
                call.error = line_for_terminal(str(message.get("message", "error")), 500)
            call.done.set()
        elif kind == "dropped":
            lines = message.get("lines")
            if isinstance(lines, int) and lines >= self._server_dropped:
                self._server_dropped = lines
        else:
            raise ProtocolError(f"unknown frame type {kind!r} from the fleet")

    async def shutdown(self) -> None:
        """Detach this console; the fleet keeps running."""
        self._stop = True
        stream = self._stream
        if stream is not None:
            await stream.aclose()
        self._changed.set()

    async def _call(self, method: str, **args: Any) -> Any:
        while self._stream is None or self.state != "running":
            if self.state == "stopped" or self._stop:
                raise RuntimeError(f"not attached to the fleet ({self.stopped_reason or 'detached'}); restart "
                                   "to attach again")
            await self._changed.wait()
        call_id = next(self._ids)
        call = self._calls[call_id] = _Call()
        async with self._send_lock:
            await self._stream.send(pack({"t": "call", "id": call_id, "method": method, "args": args}))
        await call.done.wait()
        if call.error is not None:
            raise RemoteError(call.error)
        return call.value

    # --- FleetControl -------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        queue = EventQueue(self._queue_limit)
        waiters = [anyio.Event()]
        if self._last is not None:
            queue.put(self._last)
        entry = (queue, waiters)
        self._subscribers.append(entry)
        try:
            while True:
                if len(queue):
                    yield queue.take()
                    continue
                waiters[0] = anyio.Event()
                await waiters[0].wait()
        finally:
            self._subscribers.remove(entry)
            self._local_dropped += queue.dropped_lines

    async def approve(self, issue: int) -> None:
        await self._call("approve", issue=issue)

    async def reject(self, issue: int) -> None:
        await self._call("reject", issue=issue)

    async def stop_run(self, run_id: str) -> None:
        await self._call("stop_run", run_id=run_id)

    async def retry(self, issue: int) -> None:
        await self._call("retry", issue=issue)

    async def run_pm(self) -> None:
        await self._call("run_pm")

    async def set_paused(self, paused: bool) -> None:
        await self._call("set_paused", paused=paused)

    async def merge(self, pr: int) -> None:
        await self._call("merge", pr=pr)

    def log_path(self, run_id: str) -> Path | None:
        return None  # the fleet's files may be on another machine: `log_tail` asks the fleet instead

    async def log_tail(self, run_id: str, lines: int) -> list[str]:
        """The last `lines` raw lines of a run's log, read by the fleet (sanitize before showing them)."""
        value = await self._call("log_tail", run_id=run_id, lines=lines)
        return [line for line in value if isinstance(line, str)]

    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail:
        value = await self._call("detail", issue=issue, pr=pr)
        if not isinstance(value, Detail):
            raise RemoteError("the fleet answered detail with something else")
        return value

    async def stats(self) -> Any:
        return await self._call("stats")


__all__ = ["RemoteError", "RemoteFleet", "open_connection", "probe"]
