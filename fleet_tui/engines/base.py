"""The engine contract: how a coding CLI is invoked for a role, and how its output becomes log lines,
usage and a result. Engines do no I/O of their own beyond reading files the run left in its scratch dir."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleet_tui.model import Role, Usage, Verdict


@dataclass(frozen=True, slots=True)
class Task:
    """What one agent run is asked to do. `prompt` is already sanitized (`untrusted.for_prompt`)."""

    run_id: str
    role: Role
    prompt: str
    issue: int | None = None
    title: str = ""
    branch: str = ""
    qa_round: int = 0


@dataclass(frozen=True, slots=True)
class Invocation:
    """A process to start. Paths in `argv` are as the process sees them (inside the container for Docker)."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # only what the engine config lists, plus HOME etc.
    files: dict[str, str] = field(default_factory=dict)  # scratch-relative name -> content (prompt files)
    needs_network: bool = True  # engines that call a model API need egress
    stdin_devnull: bool = True


@dataclass(frozen=True, slots=True)
class LogLine:
    text: str  # untrusted: the runner/console sanitize before showing
    stream: str = "out"  # "out", "err", "event"


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    usage: Usage  # cumulative for the run so far


@dataclass(frozen=True, slots=True)
class EngineResult:
    ok: bool
    summary: str = ""  # the agent's final message
    usage: Usage = Usage()
    verdict: Verdict | None = None  # QA runs: the verdict the agent gave
    findings: tuple[str, ...] = ()  # QA runs: the findings, one per entry


Output = LogLine | UsageUpdate


class OutputParser(Protocol):
    def feed(self, line: str) -> list[Output]:
        """One raw line of the process output in, what it means out. Never raises on odd input."""
        ...

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        """After exit: the final result (`scratch` is the host path of the run's scratch dir)."""
        ...


class Engine(Protocol):
    name: str

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        """The command for `task`; `workdir`/`scratch` are the paths the process sees."""
        ...

    def parser(self) -> OutputParser: ...
