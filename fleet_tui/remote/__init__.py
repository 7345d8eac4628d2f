"""One fleet, many consoles: the fleet is served over a Unix socket in its journal directory, and consoles
attach to it (`server.py`, `client.py`, the wire format in `protocol.py`). This module owns where that socket
lives, who may trust it, and whether a fleet already runs for a journal directory.

The socket is the only door: it is created mode 0600 in a directory only the user can write, and both ends
check the other's uid (SO_PEERCRED). A socket path another user could have planted is refused, not used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from fleet_tui.remote.protocol import SOCKET_NAME

LOCK_FILENAME = "orchestrator.lock"  # fleet_tui.store's lock: held by whoever hosts the fleet
MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes; longer paths are reached through /proc/self/fd


class UnsafeSocket(Exception):
    """The socket or its directory could be someone else's: it is not used. `str()` says why and what to do."""


def socket_path(journal_dir: Path) -> Path:
    return Path(journal_dir) / SOCKET_NAME


def check_directory(directory: Path) -> None:
    """The directory holding the socket must be ours and writable by nobody else (else another user could
    swap the socket for their own)."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise UnsafeSocket(f"{directory}: {exc.strerror}") from None
    if info.st_uid != os.geteuid():
        raise UnsafeSocket(f"{directory} belongs to uid {info.st_uid}, not to this user: refusing its socket")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSocket(f"{directory} is writable by other users: refusing its socket; run "
                           f"`chmod go-w {directory}`")


def check_socket(path: Path) -> None:
    """`path` must be a socket of ours that nobody else may open (mode 0600)."""
    check_directory(path.parent)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnsafeSocket(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafeSocket(f"{path} is not a socket: refusing it; remove it if it is not yours to keep")
    if info.st_uid != os.geteuid():
        raise UnsafeSocket(f"{path} belongs to uid {info.st_uid}, not to this user: refusing it")
    if info.st_mode & 0o077:
        raise UnsafeSocket(f"{path} can be opened by other users (mode {stat.S_IMODE(info.st_mode):o}): refusing it")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux); None where the OS cannot say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for `path` that fits a socket address: the path itself, or, when it is too long (deep state
    dirs), `/proc/self/fd/<dir fd>/<name>` for as long as the block runs."""
    text = os.fsencode(path)
    if len(text) <= MAX_SUN_PATH or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def lock_holder(journal_dir: Path) -> int | None:
    """The pid holding the orchestrator lock of `journal_dir` (0 when held and the pid is unknown), or None
    when no fleet holds it."""
    lock = Path(journal_dir) / LOCK_FILENAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                try:
                    return int(os.pread(fd, 64, 0).decode("ascii", "replace").strip() or 0)
                except ValueError:
                    return 0
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


__all__ = ["UnsafeSocket", "check_directory", "check_socket", "lock_holder", "peer_uid", "reachable",
           "socket_path"]
