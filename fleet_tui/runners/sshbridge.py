"""An `ssh://` Docker host reached through the `ssh` binary: a private Unix socket on this machine whose every
connection is piped to `ssh HOST docker system dial-stdio` (what `docker -H ssh://…` itself does).

The docker SDK's own ssh transport needs paramiko even when told to shell out to `ssh`; this keeps the one
thing that matters from it (the user's `ssh`, with its ~/.ssh/config, keys, agent and known_hosts) without
that dependency. The socket lives in a 0700 directory of its own; a connection that cannot reach the host
closes at once, which the runner reads as "host unreachable".
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

_CHUNK = 65536
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10",
               "-o", "ServerAliveCountMax=3")


def ssh_argv(url: str) -> list[str]:
    """The `ssh` command line that opens the Engine API of the Docker host `url` (ssh://[user@]host[:port])."""
    match = re.fullmatch(r"ssh://(?:([^@/\s]+)@)?([^:/@\s]+|\[[0-9a-fA-F:]+\])(?::(\d+))?/?", url.strip())
    if not match:
        raise ValueError(f"not an ssh:// Docker host: {url!r} (ssh://[user@]host[:port])")
    user, host, port = match.groups()
    argv = ["ssh", *SSH_OPTIONS]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", port]
    return [*argv, "--", host.strip("[]"), "docker system dial-stdio"]


class SshBridge:
    """A Unix socket that forwards each connection to `ssh … docker system dial-stdio`; `base_url` for the SDK."""

    def __init__(self, url: str) -> None:
        self.argv = ssh_argv(url)
        self._dir = Path(tempfile.mkdtemp(prefix="fleet-ssh-"))
        os.chmod(self._dir, 0o700)
        self.path = self._dir / "engine.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, name="fleet-ssh-bridge", daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="fleet-ssh-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """One connection: an ssh process for it, bytes pumped both ways until either side closes."""
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            conn.close()
            return
        assert proc.stdin is not None and proc.stdout is not None

        def upstream() -> None:  # our side -> ssh
            try:
                while chunk := conn.recv(_CHUNK):
                    proc.stdin.write(chunk)
                    proc.stdin.flush()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        writer = threading.Thread(target=upstream, name="fleet-ssh-up", daemon=True)
        writer.start()
        try:
            while chunk := proc.stdout.read1(_CHUNK):
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
                proc.stdout.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        shutil.rmtree(self._dir, ignore_errors=True)


_bridges: dict[str, SshBridge] = {}
_bridges_lock = threading.Lock()


def bridge_for(url: str) -> SshBridge:
    """The process's one bridge to `url` (made on first use, removed at exit)."""
    with _bridges_lock:
        bridge = _bridges.get(url)
        if bridge is None:
            if not _bridges:
                import atexit

                atexit.register(_close_all)
            bridge = _bridges[url] = SshBridge(url)
        return bridge


def _close_all() -> None:
    with _bridges_lock:
        for bridge in _bridges.values():
            bridge.close()
        _bridges.clear()
