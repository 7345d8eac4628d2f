"""The aider engine: `aider --message-file ... --yes-always` with plain-text output, and tokens and cost
from its analytics log (`message_send` events) after the run, or from its "Tokens: ..." lines meanwhile."""

from __future__ import annotations

import re
from pathlib import Path

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    PROMPT_FILE,
    ConfiguredEngine,
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
from fleet_tui.engines.prices import priced_usage
from fleet_tui.model import Usage

ANALYTICS_FILE = "analytics.jsonl"
# "Tokens: 2.3k sent, 1.1k cache write, 45 received. Cost: $0.01 message, $0.03 session."
_TOKENS_RE = re.compile(r"^Tokens:\s*(?P<sent>[\d.,]+[kKmM]?) sent,.*?(?P<recv>[\d.,]+[kKmM]?) received\.")
_SESSION_COST_RE = re.compile(r"\$(?P<cost>[\d.,]+) session")
MAX_SUMMARY_LINES = 40


class AiderEngine(ConfiguredEngine):
    """Builds aider command lines that never commit (the fleet commits on the branch) and never prompt."""

    default_name = "aider"

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        argv = [
            self.config.command or "aider",
            "--message-file",
            f"{scratch}/{PROMPT_FILE}",
            "--yes-always",
            "--no-auto-commits",
            "--no-pretty",
            "--no-stream",
            "--analytics-log",
            f"{scratch}/{ANALYTICS_FILE}",
            # --yes-always would also say yes to sharing analytics; the log file above is local only.
            "--analytics-disable",
            "--no-check-update",
            "--no-show-release-notes",
            # Otherwise aider adds .aider* to .gitignore, a change no issue asked for.
            "--no-gitignore",
        ]
        if self.config.model:
            argv += ["--model", self.config.model]
        if self.config.base_url:
            argv += ["--openai-api-base", self.config.base_url]
        argv += self.config.args
        env = self.env(scratch)
        return Invocation(argv=tuple(argv), env=env, files={PROMPT_FILE: task.prompt}, needs_network=True)

    def parser(self) -> AiderParser:
        return AiderParser(self.config)


def _count(text: str) -> int:
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        return int(float(text.rstrip("kKmM")) * scale)
    except ValueError:
        return 0


class AiderParser:
    """Plain lines; usage from aider's per-message "Tokens:" reports, replaced by the analytics log at the end."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._lines: list[str] = []
        self._sent = 0
        self._received = 0
        self.usage = Usage()

    def feed(self, line: str) -> list[Output]:
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        self._lines.append(line)
        del self._lines[:-MAX_SUMMARY_LINES]
        out: list[Output] = [LogLine(line)]
        match = _TOKENS_RE.match(line.strip())
        if match:
            self._sent += _count(match.group("sent"))
            self._received += _count(match.group("recv"))
            cost_match = _SESSION_COST_RE.search(line)
            cost = as_float(cost_match.group("cost").replace(",", "")) if cost_match else None
            self.usage = priced_usage(self._config, self._sent, self._received, 0, cost or None)
            out.append(UsageUpdate(self.usage))
        return out

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        usage = read_analytics(self._config, Path(scratch) / ANALYTICS_FILE) or self.usage
        summary = "\n".join(row for row in self._lines if not _TOKENS_RE.match(row.strip())).strip()
        return EngineResult(ok=exit_code == 0, summary=summary, usage=usage)


def read_analytics(config: EngineConfig, path: Path) -> Usage | None:
    """Totals of the `message_send` events in aider's analytics log; None when there are none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    sent = received = 0
    cost = 0.0
    session_cost: float | None = None
    seen = False
    for line in text.splitlines():
        event = json_object(line)
        if event is None or event.get("event") != "message_send":
            continue
        props = event.get("properties")
        if not isinstance(props, dict):
            continue
        seen = True
        sent += as_int(props.get("prompt_tokens"))
        received += as_int(props.get("completion_tokens"))
        cost += as_float(props.get("cost")) or 0.0
        session_cost = as_float(props.get("total_cost")) or session_cost
    if not seen:
        return None
    reported = session_cost if session_cost else (cost or None)
    return priced_usage(config, sent, received, 0, reported)
