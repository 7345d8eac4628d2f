"""What the runners that follow a remote engine share: blocking client calls in daemon threads (so quitting
never waits on an engine), a frame queue drained in batches, and resuming a timestamped log stream so every
line arrives exactly once. Used by the Docker runner and the Kubernetes runner alike."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from fleet_tui.runners.local import LineSplitter

_T = TypeVar("_T")
END = object()  # put on a frame queue: the log reader is done
TAKE_S = 0.25  # how long the consumer's thread blocks on the frame queue before it looks again


def parse_log_ts(raw: bytes) -> tuple[int, int] | None:
    """Docker's RFC 3339 log timestamp as (epoch seconds, nanoseconds), comparable without float loss."""
    match = re.fullmatch(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", raw)
    if not match:
        return None
    secs = int(datetime.fromisoformat(match.group(1).decode() + "+00:00").timestamp())
    return secs, int((match.group(2) or b"0").ljust(9, b"0"))


class ResumePoint:
    """Where a log stream got to, so a reopened stream delivers every frame exactly once. Frames of one
    stream are never dropped, even with equal timestamps (the pieces of a long line share one); a reopened
    stream starts a little before the last timestamp seen and skips what was already delivered."""

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None
        self.same = 0  # frames delivered with the timestamp `last`
        self._skip_equal = 0
        self._resuming = False

    def reopen(self) -> float | None:
        """The `since` for the next stream (epoch seconds, at or before the last frame), None for all."""
        if self.last is None:
            return None
        self._resuming, self._skip_equal = True, self.same
        return max(0.0, (self.last[0] * 1_000_000_000 + self.last[1] - 1_000_000) / 1e9)

    def accept(self, key: tuple[int, int]) -> bool:
        if self._resuming and self.last is not None:
            if key < self.last:
                return False
            if key == self.last and self._skip_equal > 0:
                self._skip_equal -= 1
                return False
            self._resuming = False
        if key == self.last:
            self.same += 1
        else:
            self.last, self.same = key, 1
        return True


def take_batch(frames: queue.Queue[Any]) -> list[Any]:
    """Thread: wait a little for one frame, then take whatever else is already there ([] when none came)."""
    try:
        batch = [frames.get(timeout=TAKE_S)]
    except queue.Empty:
        return []
    while len(batch) < 4096:
        try:
            batch.append(frames.get_nowait())
        except queue.Empty:
            break
    return batch


async def in_daemon_thread(fn: Callable[[], _T]) -> _T:
    """Run `fn` in a new daemon thread and wait for it; cancelling the wait abandons the thread."""
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed over to the waiting task
            box["error"] = exc
        with contextlib.suppress(Exception):  # the event loop is gone: nobody waits any more
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=target, name="fleet-engine-call", daemon=True).start()
    await done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


Put = Callable[[object], None]  # hands one item (bytes, or END) to the consumer; returns early once stopped
LogReader = Callable[[Put, threading.Event, dict[str, Any]], None]


def follow_lines(read: LogReader, *, name: str, limiter: Any, close: Callable[[dict[str, Any]], None],
                 queue_size: int = 4096) -> AsyncIterator[str]:
    """The lines of a log read by `read` in a daemon thread: it calls `put` with byte chunks and END when the
    log is over, stops early once the event is set, and leaves an exception in `holder["error"]` to be raised
    here after the last line. The queue between them is bounded (back-pressure on the reader). Closing the
    iterator sets the event and calls `close(holder)`, which must unblock a reader stuck in a quiet stream."""
    frames: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    holder: dict[str, Any] = {}

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    async def lines() -> AsyncIterator[str]:
        threading.Thread(target=read, args=(put, stop, holder), name=name, daemon=True).start()
        splitter = LineSplitter()
        try:
            while True:
                batch = await anyio.to_thread.run_sync(take_batch, frames, abandon_on_cancel=True, limiter=limiter)
                for line in splitter.feed(b"".join(item for item in batch if isinstance(item, bytes))):
                    yield line
                if any(item is END for item in batch):
                    break
            for line in splitter.flush():
                yield line
            if isinstance(holder.get("error"), BaseException):
                raise holder["error"]
        finally:
            stop.set()
            close(holder)

    return lines()

