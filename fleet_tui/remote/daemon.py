"""Finding a running fleet to attach to, and starting one in the background (`--detach`, `fleet-tui web`).

A fleet runs for a journal directory when its orchestrator lock is held; it can be attached to when its
socket answers the hello. The lock is taken before the socket is served, so a fleet that is starting is
given a few seconds before it counts as unreachable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from fleet_tui.remote import lock_holder, socket_path

START_TIMEOUT_S = 60.0  # a daemon that does not serve within this is reported with its error output
ANSWER_GRACE_S = 5.0  # a lock holder may still be starting: how long its socket may stay silent


class FleetUnreachable(Exception):
    """A fleet holds the repository's journal but cannot be attached to; `str()` says what to do."""


def journal_for(config: Any, repo_path: Path, state_dir: Path) -> Path:
    """The journal directory of the fleet `fleet-tui` would run with `config` on `repo_path` (the same id
    `build_fleet` uses)."""
    from fleet_tui.store import journal_dir

    repo_id = config.forge.repo if config.forge.kind == "github" else str(Path(repo_path).resolve())
    return journal_dir(state_dir, repo_id)


def _probe(path: Path, timeout: float) -> dict[str, Any]:
    from fleet_tui.remote.client import probe

    return anyio.run(lambda: probe(path, timeout=timeout))


def running_fleet(journal_dir: Path, *, grace_s: float = ANSWER_GRACE_S) -> dict[str, Any] | None:
    """The hello of the fleet running for `journal_dir`, or None when none runs. A fleet that runs but does
    not answer raises `FleetUnreachable`; one of another protocol version raises `Refused`; an unsafe socket
    `UnsafeSocket`."""
    from fleet_tui.remote.protocol import Refused

    pid = lock_holder(journal_dir)
    if pid is None:
        return None
    path = socket_path(journal_dir)
    deadline = time.monotonic() + grace_s
    while True:
        try:
            return _probe(path, timeout=3.0)
        except Refused:
            raise
        except (OSError, TimeoutError) as exc:
            if lock_holder(journal_dir) is None:
                return None  # it stopped meanwhile
            if time.monotonic() >= deadline:
                who = f"pid {pid}" if pid else "a process"
                raise FleetUnreachable(f"another fleet-tui ({who}) runs this repository but does not answer on "
                                       f"{path} ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})"
                                       ": it may be an older version; stop it, or upgrade it") from None
        time.sleep(0.2)  # the host locks the journal first and serves the socket a moment later


def start_daemon(argv: list[str], journal_dir: Path, *, cwd: Path | None = None,
                 timeout: float = START_TIMEOUT_S) -> int:
    """Start `fleet-tui --headless <argv>` in its own session (it outlives this process and its terminal),
    wait until it serves its socket, and return its pid. Its stderr goes to `<journal>/daemon.err`."""
    journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    err_path = journal_dir / "daemon.err"
    with open(err_path, "ab") as err:
        process = subprocess.Popen([sys.executable, "-m", "fleet_tui", "--headless", *argv],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                   cwd=cwd, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            tail = _tail(err_path)
            raise FleetUnreachable(f"the background fleet exited with code {code} before serving"
                                   + (f": {tail}" if tail else f" (see {err_path})"))
        if lock_holder(journal_dir) == process.pid:
            try:
                _probe(socket_path(journal_dir), timeout=3.0)
                return process.pid
            except (OSError, TimeoutError):
                pass
        time.sleep(0.1)
    raise FleetUnreachable(f"the background fleet (pid {process.pid}) did not serve {socket_path(journal_dir)} "
                           f"within {timeout:.0f} s; see {err_path}")


def _tail(path: Path) -> str:
    from fleet_tui.untrusted import line_for_terminal

    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return line_for_terminal(lines[-1], 300) if lines else ""


def passthrough_args(args: Any) -> list[str]:
    """The flags a background `--headless` (or a browser's console) needs to find the same fleet."""
    out: list[str] = []
    if getattr(args, "config", None):
        out += ["--config", str(Path(args.config).expanduser().resolve())]
    if getattr(args, "repo", None):
        out += ["--repo", str(Path(args.repo).expanduser().resolve())]
    if getattr(args, "log_level", None):
        out += ["--log-level", args.log_level]
    return out


__all__ = ["FleetUnreachable", "journal_for", "passthrough_args", "running_fleet", "start_daemon"]
