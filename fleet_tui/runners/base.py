"""The runner contract: where an agent process runs (a Docker container, or a local subprocess)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleet_tui.engines.base import Invocation
from fleet_tui.model import Role


@dataclass(frozen=True, slots=True)
class RunSpec:
    run_id: str
    role: Role
    issue: int | None
    invocation: Invocation
    workspace: Path  # host path, mounted read-write at the runner's workdir
    scratch: Path  # host path for prompt/output files, mounted at the runner's scratch path
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


class RunHandle(Protocol):
    run_id: str

    def lines(self) -> AsyncIterator[str]:
        """Output lines (stdout and stderr merged) as they arrive, until the process ends."""
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
    async def find_runs(self) -> list[LiveRun]: ...
    async def attach(self, run_id: str) -> RunHandle: ...
    async def cleanup(self, run_id: str) -> None:
        """Remove what the run left (the container), once its result is collected."""
        ...
