"""The scripted engine: a deterministic agent with no model, for the demo and tests.

It runs `python3 <scratch>/scripted_agent.py <scratch>/script.json`; both files are written into scratch
through `Invocation.files`, so it works in any container with python3 and git. The script (JSON, from
`EngineConfig.script`, or the built-in demo) gives the steps per role, and for QA per review round:

    {"pm": [steps], "dev": [steps], "qa": {"1": [steps], "default": [steps]}}

A step is one object with one action: {"print": "line" | ["lines"], "interval": s, "stream": "out"|"err"},
{"sleep": s}, {"write": "path", "content": "..."}, {"append": "path", "content": "..."}, {"commit": "msg"},
{"usage": {"input_tokens", "output_tokens", "cached_tokens", "cost_usd"}} (added to the run's totals),
{"final": "message"}, {"exit": code}, {"resolve": "union"} (settle conflicted files keeping both sides, as an
update round needs). Strings may use {issue}, {title}, {role}, {round}, {run_id}, {branch}.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    ConfiguredEngine,
    EngineConfigError,
    as_float,
    as_int,
    json_object,
)
from fleet_tui.engines.base import (
    EngineResult,
    Invocation,
    LogLine,
    Output,
    Task,
    UsageUpdate,
)
from fleet_tui.model import Role, Usage

AGENT_FILE = "scripted_agent.py"
SCRIPT_FILE = "script.json"
ACTIONS = ("print", "sleep", "write", "append", "commit", "resolve", "usage", "final", "exit")
_OPTIONS = {"print": {"interval", "stream"}, "write": {"content"}, "append": {"content"}}
_USAGE_KEYS = ("input_tokens", "output_tokens", "cached_tokens", "cost_usd")
_FIELD_RE = re.compile(r"\{(issue|title|role|round|run_id|branch)\}")

Steps = list[dict[str, Any]]


class ScriptError(EngineConfigError):
    """A scripted-engine script that cannot be followed; the message names the file and the step."""


def _demo_script() -> dict[str, Any]:
    work = [f"Working on #{{issue}}: step {n} of 30 ({what})" for n, what in enumerate(
        ["reading the issue", "looking at the layout", "reading the tests", "planning the change"] * 7
        + ["editing", "running the tests"], start=1)]
    proposals = [
        {"title": "Add a --version flag to the command line",
         "body": "Print the package version and exit 0. Mention the flag in the README's usage section."},
        {"title": "Handle an empty input file gracefully",
         "body": "An empty input file currently ends in a traceback. Print a one-line error and exit 1 instead."},
        {"title": "Document the configuration options",
         "body": "List every configuration option with its default in docs/configuration.md."},
    ]
    return {
        "pm": [
            {"print": ["Reading the repository", "Reading the open issues", "Looking for gaps"], "interval": 0.3},
            {"usage": {"input_tokens": 5200, "output_tokens": 640, "cached_tokens": 1800, "cost_usd": 0.012}},
            {"final": "I propose these issues:\n\n```json\n" + json.dumps(proposals, indent=2) + "\n```\n"},
        ],
        "dev": [
            {"resolve": "union"},  # an update round: the base's CHANGELOG lines and ours both stay
            {"print": work[:4], "interval": 0.2},
            {"write": "notes/issue-{issue}.md",
             "content": "# #{issue}: {title}\n\nHandled by the scripted demo agent (round {round}).\n"},
            {"append": "CHANGELOG.md", "content": "- #{issue}: {title} (round {round})\n"},
            {"print": work[4:], "interval": 0.1},
            {"usage": {"input_tokens": 18400, "output_tokens": 2100, "cached_tokens": 9000, "cost_usd": 0.041}},
            {"commit": "#{issue}: {title}"},
            {"final": "Implemented #{issue} ({title}): added notes/issue-{issue}.md and a CHANGELOG entry."},
        ],
        "qa": {
            "1": [
                {"print": ["Reading the diff", "Running the tests", "Reviewing the change"], "interval": 0.3},
                {"usage": {"input_tokens": 9100, "output_tokens": 700, "cached_tokens": 3000, "cost_usd": 0.018}},
                {"final": "The change for #{issue} goes the right way but is not finished.\n\n"
                          "VERDICT: changes\n\n"
                          "- notes/issue-{issue}.md does not say how the change was tested.\n"
                          "- The CHANGELOG entry should name the issue title in full.\n"},
            ],
            "default": [
                {"print": ["Reading the diff again", "Running the tests", "Checking the earlier findings"],
                 "interval": 0.3},
                {"usage": {"input_tokens": 9600, "output_tokens": 400, "cached_tokens": 3000, "cost_usd": 0.016}},
                {"final": "The findings of the last round are addressed and the tests pass.\n\nVERDICT: pass\n"},
            ],
        },
    }


DEMO_SCRIPT: dict[str, Any] = _demo_script()


def _check_step(where: str, step: object) -> None:
    if not isinstance(step, dict):
        raise ScriptError(f"{where}: a step must be an object like {{\"print\": \"text\"}}, got {type(step).__name__}")
    actions = [key for key in step if key in ACTIONS]
    if len(actions) != 1:
        unknown = sorted(set(step) - set(ACTIONS))
        hint = f"unknown {', '.join(repr(k) for k in unknown)}; " if unknown else ""
        raise ScriptError(f"{where}: {hint}a step needs exactly one action of {', '.join(ACTIONS)}")
    action = actions[0]
    extra = set(step) - {action} - _OPTIONS.get(action, set())
    if extra:
        raise ScriptError(f"{where}: {action!r} does not take {', '.join(sorted(extra))}")
    value = step[action]
    if action == "print" and not (isinstance(value, str) or
                                  (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise ScriptError(f"{where}: print takes a string or a list of strings")
    if action in ("sleep",) or "interval" in step:
        number = step.get("interval", value if action == "sleep" else 0)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 3600:
            raise ScriptError(f"{where}: seconds must be a number from 0 to 3600, got {number!r}")
    if action in ("write", "append"):
        if not isinstance(value, str) or not value.strip():
            raise ScriptError(f"{where}: {action} takes a relative path")
        parts = Path(value).parts
        if Path(value).is_absolute() or ".." in parts:
            raise ScriptError(f"{where}: {action} path {value!r} must stay inside the workspace (relative, no ..)")
        if not isinstance(step.get("content", ""), str):
            raise ScriptError(f"{where}: content must be a string")
    if action in ("commit", "final") and not isinstance(value, str):
        raise ScriptError(f"{where}: {action} takes a string")
    if action == "usage":
        if not isinstance(value, dict) or set(value) - set(_USAGE_KEYS):
            raise ScriptError(f"{where}: usage takes an object with {', '.join(_USAGE_KEYS)}")
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                raise ScriptError(f"{where}: usage.{key} must be a number >= 0, got {number!r}")
    if action == "exit" and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255):
        raise ScriptError(f"{where}: exit takes an exit code from 0 to 255, got {value!r}")


def validate_script(script: object, source: str = "script") -> dict[str, Any]:
    """The script if it can be followed; otherwise ScriptError naming the role, round and step."""
    if not isinstance(script, dict):
        raise ScriptError(f"{source}: must be a JSON object with keys pm, dev, qa")
    unknown = sorted(set(script) - {role.value for role in Role})
    if unknown:
        raise ScriptError(f"{source}: unknown role {', '.join(repr(k) for k in unknown)} (roles: pm, dev, qa)")
    for role, body in script.items():
        rounds = body if isinstance(body, dict) else {"": body}
        for key, steps in rounds.items():
            where = f"{source}: {role}" + (f"[round {key}]" if key else "")
            if key and key != "default" and not key.isdigit():
                raise ScriptError(f"{where}: rounds are numbers (\"1\", \"2\") or \"default\"")
            if not isinstance(steps, list):
                raise ScriptError(f"{where}: must be a list of steps")
            for index, step in enumerate(steps):
                _check_step(f"{where} step {index + 1}", step)
    return script


def load_script(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptError(f"{file}: no such script file (engines.*.script)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"{file}: cannot read the script: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ScriptError(f"{file}: not valid JSON: {exc}") from None
    return validate_script(data, str(file))


def steps_for(script: Mapping[str, Any], role: Role, qa_round: int) -> Steps:
    """The steps of `role`; for per-round scripts the round's own, else "default" (round 0 counts as 1)."""
    body = script.get(role.value)
    if body is None:
        raise ScriptError(f"the script has no steps for role {role.value}")
    if isinstance(body, list):
        return body
    for key in (str(max(qa_round, 1)), "default"):
        if key in body:
            return body[key]
    raise ScriptError(f"the script has no steps for {role.value} round {max(qa_round, 1)} and no \"default\"")


def _fill(value: Any, fields: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _FIELD_RE.sub(lambda m: fields[m.group(1)], value)
    if isinstance(value, list):
        return [_fill(v, fields) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, fields) for k, v in value.items()}
    return value


def agent_source() -> str:
    return resources.files("fleet_tui.engines").joinpath(AGENT_FILE).read_text(encoding="utf-8")


class ScriptedEngine(ConfiguredEngine):
    """Follows a script; `time_scale` multiplies every sleep (0 makes tests instant)."""

    default_name = "scripted"

    def __init__(self, config: EngineConfig, *, time_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.time_scale = time_scale
        self.script = load_script(config.script) if config.script else DEMO_SCRIPT

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        fields = {
            "issue": "" if task.issue is None else str(task.issue),
            "title": task.title,
            "role": task.role.value,
            "round": str(task.qa_round),
            "run_id": task.run_id,
            "branch": task.branch,
        }
        steps = _fill(steps_for(self.script, task.role, task.qa_round), fields)
        resolved = {"workdir": workdir, "time_scale": self.time_scale, "steps": steps}
        env = self.env(scratch)
        env["PYTHONUNBUFFERED"] = "1"
        # on the host, the fleet's own interpreter (which the local sandbox shows); in a container, the image's
        python = self.config.command or (sys.executable if self.local_runner and sys.executable else "python3")
        argv = (python, f"{scratch}/{AGENT_FILE}", f"{scratch}/{SCRIPT_FILE}")
        files = {AGENT_FILE: agent_source(), SCRIPT_FILE: json.dumps(resolved, indent=1)}
        return Invocation(argv=argv, env=env, files=files, needs_network=False)

    def parser(self) -> ScriptedParser:
        return ScriptedParser()


class ScriptedParser:
    """Reads the agent's JSON lines; anything else is a plain line."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.message: str | None = None
        self.reported_ok = True

    def feed(self, line: str) -> list[Output]:
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        event = json_object(line)
        kind = event.get("type") if event else None
        if event is None or kind not in ("log", "usage", "result"):
            return [LogLine(line)]
        if kind == "log":
            stream = event.get("stream") if event.get("stream") in ("out", "err", "event") else "out"
            return [LogLine(str(event.get("text", "")), str(stream))]
        if kind == "usage":
            self.usage = Usage(
                input_tokens=as_int(event.get("input_tokens")),
                output_tokens=as_int(event.get("output_tokens")),
                cached_tokens=as_int(event.get("cached_tokens")),
                cost_usd=as_float(event.get("cost_usd")) or 0.0,
            )
            return [UsageUpdate(self.usage)]
        self.message = str(event.get("message", ""))
        self.reported_ok = event.get("ok") is not False
        return [LogLine("scripted agent finished", "event")]

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        ok = exit_code == 0 and self.reported_ok and self.message is not None
        return EngineResult(ok=ok, summary=self.message or "", usage=self.usage)
