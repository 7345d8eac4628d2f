"""LLM workers: how each coding CLI is invoked headlessly and how its output is read."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fleet_tui.engines.base import Invocation, LogLine, Task

if TYPE_CHECKING:
    from fleet_tui.config import EngineConfig, FleetConfig
    from fleet_tui.engines.base import Engine, Output

# Forge token variables that never enter an agent's environment, whatever the engine config lists.
FORGE_TOKEN_NAMES: frozenset[str] = frozenset(
    {"GITHUB_TOKEN", "GH_TOKEN", "GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN"}
)
# GitHub token shapes: a value like this is refused even under another variable name.
_GITHUB_TOKEN_VALUE_RE = re.compile(r"^\s*(?:ghp_|gho_|ghs_|ghu_|ghr_|github_pat_)")
# Linux refuses a single argv string longer than this (MAX_ARG_STRLEN); longer prompts go through stdin.
MAX_PROMPT_ARG_BYTES = 100_000
PROMPT_FILE = "prompt.md"


class EngineConfigError(ValueError):
    """An engine that cannot be built or run as configured; `str()` is the message to show."""


def forbidden_env_names(config: FleetConfig | None = None) -> frozenset[str]:
    """Variables that hold the forge token: the well-known names plus the ones fleet.toml reads it from."""
    names = set(FORGE_TOKEN_NAMES)
    if config is not None:
        names.update(config.forge.token_env)
        if config.forge.operator_token_env:
            names.add(config.forge.operator_token_env)
    return frozenset(names)


def check_env_names(engine: str, names: Iterable[str], forbidden: Iterable[str]) -> None:
    """Refuse an engine config that lists a forge token variable."""
    refused = sorted(set(names) & set(forbidden))
    if refused:
        raise EngineConfigError(
            f"engines.{engine}.env lists {', '.join(refused)}: the forge token never goes to an agent; "
            "remove it (the orchestrator pushes and opens PRs itself)"
        )


class ConfiguredEngine:
    """What every engine shares: its config, its name, the environment it may read, and the refusal of any
    forge token variable among the names it is to pass."""

    default_name = "engine"

    def __init__(
        self,
        config: EngineConfig,
        *,
        name: str | None = None,
        environ: Mapping[str, str] | None = None,
        forbidden_env: Iterable[str] = FORGE_TOKEN_NAMES,
        local_runner: bool = False,
    ) -> None:
        self.name = name or self.default_name
        self.config = config
        self._environ = environ
        self._forbidden = frozenset(forbidden_env) | FORGE_TOKEN_NAMES
        self.local_runner = local_runner  # runs are subprocesses on the host, not containers
        check_env_names(self.name, self.env_names(), self._forbidden)

    def env_names(self) -> list[str]:
        """The variables the runs receive: `env`, and `api_key_env` (the provider's key)."""
        names = list(self.config.env)
        if self.config.api_key_env and self.config.api_key_env not in names:
            names.append(self.config.api_key_env)
        return names

    def env(self, scratch: str) -> dict[str, str]:
        """The run's environment: the configured variables that exist, and a HOME inside scratch."""
        return engine_env(self.name, self.env_names(), current_environ(self._environ), scratch, self._forbidden)

    def prompted(self, argv: list[str], task: Task, scratch: str, *, model_flag: str,
                 stdin_marker: str) -> Invocation:
        """`argv` plus the model and extra args, with the prompt as the last argument (or on stdin when too
        long; `stdin_marker` is what the CLI takes for that), for a CLI that calls its model API."""
        if self.config.model:
            argv = [*argv, model_flag, self.config.model]
        argv = [*argv, *self.config.args]
        full = prompt_argv(argv, task.prompt, f"{scratch}/{PROMPT_FILE}", stdin_marker=stdin_marker)
        return Invocation(argv=full, env=self.env(scratch), files={PROMPT_FILE: task.prompt}, needs_network=True)


class JsonLinesParser:
    """What the JSON-lines engines (codex, claude) share: one event per line, anything that is not a JSON
    object with a string `type` (or that the engine cannot read) is kept as a plain line, never raised."""

    def feed(self, line: str) -> list[Output]:
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        event = json_object(line)
        if event is None or not isinstance(event.get("type"), str):
            return [LogLine(line)]
        try:
            out = self._event(event)
        except (AttributeError, TypeError, ValueError, KeyError):
            out = None
        return [LogLine(line)] if out is None else out

    def _event(self, event: dict[str, Any]) -> list[Output] | None:
        """The meaning of one event; None keeps the raw line."""
        raise NotImplementedError


def engine_env(
    engine: str,
    names: Iterable[str],
    environ: Mapping[str, str],
    scratch: str,
    forbidden: Iterable[str] = FORGE_TOKEN_NAMES,
) -> dict[str, str]:
    """The agent's environment: the listed variables that exist in `environ`, and a HOME inside scratch."""
    blocked = set(forbidden)
    env: dict[str, str] = {}
    for name in names:
        if name in blocked or name not in environ:
            continue
        value = environ[name]
        if _GITHUB_TOKEN_VALUE_RE.match(value):
            raise EngineConfigError(
                f"engines.{engine}.env: {name} holds a GitHub token; the forge token never goes to an agent"
            )
        env[name] = value
    env["HOME"] = f"{scratch.rstrip('/')}/home"
    return env


def prompt_argv(argv: list[str], prompt: str, prompt_path: str, stdin_marker: str | None) -> tuple[str, ...]:
    """`argv` with the prompt appended as the last argument, or, when it is too long for one argument,
    fed on stdin from the prompt file (`stdin_marker` is what the CLI takes for "read the prompt from stdin")."""
    if len(prompt.encode("utf-8")) <= MAX_PROMPT_ARG_BYTES or stdin_marker is None:
        return (*argv, "--", prompt)
    # `sh -c 'exec "$@" < file' file argv...`: the CLI still runs as the container's process, reading the file.
    tail = [stdin_marker] if stdin_marker else []
    return ("sh", "-c", 'exec "$@" < "$0"', prompt_path, *argv, *tail)


def json_object(line: str) -> dict[str, Any] | None:
    """The JSON object on `line`, or None when the line is not one (plain text, malformed, a list...)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def as_int(value: object) -> int:
    """A token count from untrusted JSON: ints and numeric strings, anything else is 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value == value:
        return max(int(value), 0)
    if isinstance(value, str):
        try:
            return max(int(float(value)), 0)
        except ValueError:
            return 0
    return 0


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and number >= 0 else None


def make_engine(name: str, config: FleetConfig, *, environ: Mapping[str, str] | None = None) -> Engine:
    """The engine called `name` in `config` (an `[engines]` entry or a built-in), by its `kind`.

    `environ` is the operator's environment the listed variables are read from (default: this process's,
    read at each invocation). Raises EngineConfigError for a config that cannot work.
    """
    try:
        engine_config: EngineConfig = config.engine(name)
    except KeyError:
        known = sorted(set(config.engines) | {"codex", "claude", "aider", "scripted"})
        raise EngineConfigError(f"no engine named {name!r} (known: {', '.join(known)})") from None
    forbidden = forbidden_env_names(config)
    kind = engine_config.kind
    local = config.runner.kind == "local"
    if kind == "codex":
        from fleet_tui.engines.codex import CodexEngine

        return CodexEngine(engine_config, name=name, environ=environ, forbidden_env=forbidden, local_runner=local)
    if kind == "claude":
        from fleet_tui.engines.claude import ClaudeEngine

        return ClaudeEngine(engine_config, name=name, environ=environ, forbidden_env=forbidden, local_runner=local)
    if kind == "aider":
        from fleet_tui.engines.aider import AiderEngine

        return AiderEngine(engine_config, name=name, environ=environ, forbidden_env=forbidden, local_runner=local)
    if kind == "command":
        from fleet_tui.engines.command import CommandEngine

        return CommandEngine(engine_config, name=name, environ=environ, forbidden_env=forbidden, local_runner=local)
    if kind == "scripted":
        from fleet_tui.engines.scripted import ScriptedEngine

        return ScriptedEngine(engine_config, name=name, environ=environ, forbidden_env=forbidden, local_runner=local)
    raise EngineConfigError(f"engines.{name}.kind {kind!r} is not known")


def current_environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ
