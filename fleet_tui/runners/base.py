"""The runner contract: where an agent process runs (a Docker container, or a local subprocess)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleet_tui.engines.base import Invocation
from fleet_tui.model import Role

LABEL_INSTANCE = "fleet.instance"  # the fleet instance a run belongs to: the only key to its ownership
LABEL_REPO = "fleet.repo"  # the forge repository, for people reading `docker ps`


def fleet_instance_id(repo_id: str, state_dir: Path) -> str:
    """The stable id of one fleet: its forge repository and where it keeps its state. Two fleets of the
    same repository with different state dirs are different fleets; restarting one keeps its id."""
    key = f"{repo_id.strip()}\0{Path(state_dir).expanduser().resolve()}"
    return "f" + hashlib.sha256(key.encode()).hexdigest()[:15]


def check_instance(instance: str) -> str:
    """`instance` when it can name a fleet in labels, names and file names; a clear error otherwise."""
    if not isinstance(instance, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", instance):
        raise ValueError(f"a fleet instance id must be 1-63 letters, digits, '.', '_' or '-', got {instance!r}")
    return instance


class HostUnreachable(Exception):
    """The host a run lives on cannot be reached right now. The run is not lost: it is kept, shown as "host
    unreachable", and followed again once the host answers (`fleet_tui.supervise`)."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    run_id: str
    role: Role
    issue: int | None
    invocation: Invocation
    workspace: Path  # host path; the run sees it at the runner's workdir (shared, or sent in as an archive)
    scratch: Path  # host path for prompt/output files, at the runner's scratch path; `collect()` brings it back
    timeout_s: float
    network: str = "none"  # docker network mode for this run
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A run found alive by `find_runs()` (e.g. after an orchestrator restart)."""

    run_id: str
    role: Role
    issue: int | None
    started_at: float  # epoch seconds
    host: str = ""  # the pool host it runs on ("" for a runner with one place to run)


class RunHandle(Protocol):
    run_id: str

    def lines(self) -> AsyncIterator[str]:
        """Output lines (stdout and stderr merged) as they arrive, until the process ends. A handle from
        `attach()` starts at the run's first line, so nothing written while nobody watched is lost."""
        ...

    async def wait(self) -> int:
        """Wait for the end; returns the exit code (the process is killed at its timeout: 124)."""
        ...

    async def stop(self) -> None:
        """Kill the process (and its group / container) now."""
        ...


class Runner(Protocol):
    kind: str

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        """(workdir, scratch) as the process will see them."""
        ...

    async def start(self, spec: RunSpec) -> RunHandle: ...

    async def find_runs(self) -> list[LiveRun]:
        """This fleet instance's runs not yet cleaned up (live, or ended with a result to collect); never
        another instance's, even on a shared engine."""
        ...

    async def attach(self, run_id: str) -> RunHandle:
        """A handle on one of this instance's runs, its output readable from the start."""
        ...

    async def collect(self, run_id: str, scratch: Path) -> None:
        """Copy the run's scratch dir (its result files, the Dev run's `result.bundle`) back into `scratch` on
        this machine; called after `wait()` and before `cleanup()`. A no-op where the run wrote there itself."""
        ...

    async def cleanup(self, run_id: str) -> None:
        """Remove what the run left (the container, the process record), once its result is collected."""
        ...
