"""The command engine: any CLI through an argv template; its output is read as plain lines.

`EngineConfig.command` (split like a shell would, never run by one) and `args` may hold the fields
`{prompt_file}`, `{workspace}`, `{issue}`, `{scratch}`, `{output_file}`, `{role}` and `{run_id}`. Other
braces are left alone. The final message is what the command wrote to `{output_file}`, else its last lines.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    PROMPT_FILE,
    ConfiguredEngine,
    EngineConfigError,
)
from fleet_tui.engines.base import EngineResult, Invocation, LogLine, Output, Task

OUTPUT_FILE = "final_message.md"
FIELDS = ("prompt_file", "workspace", "issue", "scratch", "output_file", "role", "run_id")
_FIELD_RE = re.compile(r"\{(" + "|".join(FIELDS) + r")\}")
MAX_SUMMARY_LINES = 40


class CommandEngine(ConfiguredEngine):
    default_name = "command"

    def __init__(self, config: EngineConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        name = self.name
        try:
            self._template = shlex.split(config.command) + list(config.args)
        except ValueError as exc:
            raise EngineConfigError(f"engines.{name}.command cannot be split into arguments: {exc}") from None
        if not config.command.strip() or not self._template:
            raise EngineConfigError(
                f"engines.{name}.command is empty; give the command line to run, e.g. "
                "\"my-agent --prompt-file {prompt_file} --cwd {workspace}\""
            )

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        values = {
            "prompt_file": f"{scratch}/{PROMPT_FILE}",
            "workspace": workdir,
            "issue": "" if task.issue is None else str(task.issue),
            "scratch": scratch,
            "output_file": f"{scratch}/{OUTPUT_FILE}",
            "role": str(task.role),
            "run_id": task.run_id,
        }
        argv = tuple(_FIELD_RE.sub(lambda m: values[m.group(1)], part) for part in self._template)
        env = self.env(scratch)
        return Invocation(argv=argv, env=env, files={PROMPT_FILE: task.prompt}, needs_network=True)

    def parser(self) -> CommandParser:
        return CommandParser()


class CommandParser:
    def __init__(self) -> None:
        self._tail: list[str] = []

    def feed(self, line: str) -> list[Output]:
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        self._tail.append(line)
        del self._tail[:-MAX_SUMMARY_LINES]
        return [LogLine(line)]

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        try:
            summary = (Path(scratch) / OUTPUT_FILE).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            summary = ""
        return EngineResult(ok=exit_code == 0, summary=summary or "\n".join(self._tail))
