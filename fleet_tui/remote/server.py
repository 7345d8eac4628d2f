"""The fleet's side of the socket: serves one `FleetControl` to any number of attached consoles.

Whoever hosts the fleet (`--headless`, or a console) runs `serving(control, journal_dir)` around it. Each
connection is independent: its own bounded outgoing queue, its own tasks; a connection that breaks the
protocol, or stops reading, is its own problem and never the fleet's. Operator intents from a connection are
journaled with who sent them (the OS user behind the socket and the console's id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from fleet_tui import __version__
from fleet_tui.control import Detail, FleetControl, record_intent
from fleet_tui.errors import leaf_error
from fleet_tui.model import Event
from fleet_tui.remote import UnsafeSocket, check_directory, peer_uid, reachable, socket_path
from fleet_tui.remote.protocol import (
    HEADER,
    INTENTS,
    MAX_FRAME,
    MAX_FRAME_FROM_FLEET,
    EventQueue,
    ProtocolError,
    check_args,
    encode,
    frame_length,
    hello,
    pack,
    unpack,
    version_problem,
)
from fleet_tui.untrusted import line_for_terminal

log = logging.getLogger("fleet_tui.remote")

HELLO_TIMEOUT_S = 10.0  # a connection that says nothing is closed
MAX_CALLS = 16  # calls one connection may have in flight
LOG_TAIL_MAX = 5000  # lines one log_tail call returns at most
QUEUE_LIMIT = 1000  # events a connection may fall behind by before its log lines are dropped
WRITE_BATCH = 256 * 1024  # bytes of frames written to a console at once


def _user(uid: int | None) -> str:
    if uid is None:
        uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class Connection:
    """One attached console."""

    def __init__(self, server: FleetServer, stream: SocketStream, number: int) -> None:
        self.server = server
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.queue = EventQueue(server.queue_limit)
        self.ready = anyio.Event()
        self.number = number
        self.console = f"#{number}"
        self.user = "?"
        self.calls = 0
        self.reported_drops = 0
        self.subscribed = False

    async def read(self) -> dict[str, Any] | None:
        """The next message, or None at the end of the stream."""
        try:
            header = await self.reader.receive_exactly(HEADER.size)
            body = await self.reader.receive_exactly(frame_length(header, MAX_FRAME))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return None
        return unpack(body)

    def send(self, message: dict[str, Any] | Event) -> None:
        self.queue.put(message)
        self.ready.set()

    async def serve(self) -> None:
        raw = self.stream.extra(SocketAttribute.raw_socket)
        uid = peer_uid(raw)
        if uid is not None and uid != os.geteuid():
            log.warning("refused a connection from uid %s", uid)
            return
        self.user = _user(uid)
        first = None
        with anyio.move_on_after(HELLO_TIMEOUT_S):
            first = await self.read()
        if first is None:
            return
        problem = version_problem(first, where=str(self.server.path), we="fleet")
        if problem:
            await self.stream.send(pack({"t": "refused", "reason": problem}))
            return
        console = first.get("console")
        if isinstance(console, str) and console:
            self.console = line_for_terminal(console, 64)
        control = self.server.control
        await self.stream.send(pack(hello(repo=control.repo, forge_kind=control.forge_kind, pid=os.getpid(),
                                          package=__version__, user=self.user), MAX_FRAME_FROM_FLEET))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            while True:
                message = await self.read()
                if message is None:
                    break
                kind = message["t"]
                if kind == "subscribe" and not self.subscribed:
                    self.subscribed = True
                    tg.start_soon(self._pump)
                elif kind == "call":
                    call_id = message.get("id")
                    if not isinstance(call_id, int) or isinstance(call_id, bool):
                        raise ProtocolError("a call without an id")
                    if self.calls >= MAX_CALLS:
                        self.send({"t": "error", "id": call_id, "message": "too many calls at once"})
                        continue
                    args = check_args(message.get("method"), message.get("args", {}))
                    self.calls += 1
                    tg.start_soon(self._call, call_id, message["method"], args)
                elif kind != "subscribe":
                    raise ProtocolError(f"unknown frame type {kind!r}")
            tg.cancel_scope.cancel()

    async def _pump(self) -> None:
        """Fleet events into this connection's queue, at the fleet's pace: never waits for the socket."""
        async for event in self.server.control.events():
            self.send(event)

    async def _writer(self) -> None:
        while True:
            if not len(self.queue):
                self.ready = anyio.Event()
                if self.queue.dropped_lines != self.reported_drops:
                    self.reported_drops = self.queue.dropped_lines
                    await self.stream.send(pack({"t": "dropped", "lines": self.reported_drops}))
                    continue
                await self.ready.wait()
                continue
            # what is waiting goes out in one write (up to WRITE_BATCH bytes): fewer wake-ups under a flood
            frames: list[bytes] = []
            size = 0
            while len(self.queue) and size < WRITE_BATCH:
                frame = self._frame(self.queue.take())
                if frame is not None:
                    frames.append(frame)
                    size += len(frame)
            if self.queue.dropped_lines != self.reported_drops:
                self.reported_drops = self.queue.dropped_lines
                frames.append(pack({"t": "dropped", "lines": self.reported_drops}))
            if frames:
                await self.stream.send(b"".join(frames))

    @staticmethod
    def _frame(item: Any) -> bytes | None:
        if not isinstance(item, Event):
            return pack(item, MAX_FRAME_FROM_FLEET)
        try:
            return pack({"t": "event", "event": encode(item)}, MAX_FRAME_FROM_FLEET)
        except ProtocolError as exc:
            log.warning("an event was not sent: %s", exc)
            return None

    async def _call(self, call_id: int, method: str, args: dict[str, Any]) -> None:
        try:
            value = await self.server.invoke(method, args, user=self.user, console=self.console)
            answer = {"t": "result", "id": call_id, "value": encode(value)}
            try:
                pack(answer, MAX_FRAME_FROM_FLEET)
            except ProtocolError:
                answer = {"t": "error", "id": call_id, "message": f"the answer to {method} is too large to send"}
        except Exception as exc:  # noqa: BLE001 - the console shows the reason; the fleet goes on
            answer = {"t": "error", "id": call_id, "message": str(exc) or type(exc).__name__}
        finally:
            self.calls -= 1
        self.send(answer)


class FleetServer:
    """Serves `control` on `<journal_dir>/fleet.sock` until cancelled."""

    def __init__(self, control: FleetControl, journal_dir: Path, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self.control = control
        self.path = socket_path(journal_dir)
        self.queue_limit = queue_limit
        self.connections: set[Connection] = set()
        self.refused = 0  # connections closed for breaking the protocol
        self._count = 0

    async def invoke(self, method: str, args: dict[str, Any], *, user: str, console: str) -> Any:
        control = self.control
        if method in INTENTS:
            record_intent(control, method, args, user=user, console=console)
            await getattr(control, method)(**args)
            return None
        if method == "detail":
            return _fit(await control.detail(issue=args.get("issue"), pr=args.get("pr")))
        if method == "stats":
            return await control.stats()
        if method == "log_tail":
            path = control.log_path(args["run_id"])
            if path is None:
                return ()
            return await anyio.to_thread.run_sync(_log_tail, path, max(0, min(args["lines"], LOG_TAIL_MAX)))
        raise ProtocolError(f"unknown method {method!r}")

    def _prepare(self) -> None:
        """Make the directory ours alone and clear a stale socket of ours; refuse anything else."""
        directory = self.path.parent
        with contextlib.suppress(OSError):
            info = os.stat(directory)
            if info.st_uid == os.geteuid() and info.st_mode & 0o022:
                os.chmod(directory, stat.S_IMODE(info.st_mode) & ~0o022)
        check_directory(directory)
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
            raise UnsafeSocket(f"{self.path} exists and is not a socket of this user's: not serving the fleet "
                               "there; remove it if it is not yours to keep")
        os.unlink(self.path)  # ours and stale: the journal lock we hold says no other fleet serves here

    def bind(self) -> socket.socket:
        """The listening socket, mode 0600; `UnsafeSocket` when the path or its directory is not safe."""
        self._prepare()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with reachable(self.path) as name:
                sock.bind(name)
            os.chmod(self.path, 0o600)  # before listen(): nobody can connect while the mode is wider
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        return sock

    async def serve(self, listening: socket.socket | None = None, *,
                    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept consoles until cancelled; `listening` is a socket `bind()` returned (else one is bound)."""
        if listening is None:
            listening = self.bind()
        listening.setblocking(False)
        inode = os.lstat(self.path).st_ino
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                log.info("serving the fleet on %s", self.path)
                while True:
                    await anyio.wait_readable(listening)
                    try:
                        raw, _ = listening.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:  # out of descriptors: say so, let the next accept try again
                        log.warning("cannot accept a console: %s", exc)
                        await anyio.sleep(0.5)
                        continue
                    # a transport-based stream: cancelling a blocked send on it is clean
                    stream = await SocketStream.from_socket(raw)
                    self._count += 1
                    tg.start_soon(self._handle, Connection(self, stream, self._count))
        finally:
            listening.close()
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == inode:
                    os.unlink(self.path)

    async def _handle(self, connection: Connection) -> None:
        self.connections.add(connection)
        try:
            async with connection.stream:
                await connection.serve()
        except Exception as exc:  # one connection's failure is never the fleet's
            error = leaf_error(exc)
            if isinstance(error, ProtocolError):
                self.refused += 1
                log.info("closed console connection %s: %s", connection.console, error)
            elif isinstance(error, (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)):
                log.info("console connection %s went away: %r", connection.console, error)
            else:
                log.exception("console connection %s failed", connection.console)
        finally:
            self.connections.discard(connection)


def _log_tail(path: Path, lines: int) -> tuple[str, ...]:
    from fleet_tui.store import read_tail

    tail = [line[:4000] for line in read_tail(path, lines)]
    budget, kept = MAX_FRAME_FROM_FLEET // 2, []
    for line in reversed(tail):  # the newest lines first, within what one answer may carry
        budget -= len(line) * 4 + 8
        if budget < 0:
            break
        kept.append(line)
    return tuple(reversed(kept))


def _fit(detail: Detail) -> Detail:
    """A diff too large for one answer is cut, and says so (the console shows the first lines only)."""
    limit = MAX_FRAME_FROM_FLEET // 8
    if len(detail.diff) > limit:
        return replace(detail, diff=detail.diff[:limit] + "\n(the diff is cut here: too large for an attached "
                                                          "console)\n")
    return detail


@asynccontextmanager
async def serving(control: FleetControl, journal_dir: Path, *,
                  queue_limit: int = QUEUE_LIMIT) -> AsyncIterator[FleetServer]:
    """Serve `control` to attached consoles for as long as the block runs."""
    server = FleetServer(control, journal_dir, queue_limit=queue_limit)
    listening = server.bind()  # here, so an unsafe path is reported as itself, not inside a task group
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, listening)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def serving_if_possible(control: FleetControl, journal_dir: Path) -> AsyncIterator[FleetServer | None]:
    """`serving()`, or, when the socket cannot be served (an unsafe directory, an odd filesystem), the fleet
    alone: the host still runs it and says why no console can attach."""
    async with contextlib.AsyncExitStack() as stack:
        server: FleetServer | None = None
        try:
            server = await stack.enter_async_context(serving(control, journal_dir))
        except (UnsafeSocket, OSError) as exc:
            message = f"consoles cannot attach to this fleet: {exc}"
            log.warning("%s", message)
            notice = getattr(getattr(control, "ctx", None), "notice", None)
            if notice is not None:
                notice(message, "warning")
        yield server


__all__ = ["FleetServer", "serving", "serving_if_possible"]
