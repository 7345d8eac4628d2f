"""The Claude Code engine: `claude -p --output-format stream-json --verbose` and its stream-json lines.

Lines: `system` (subtype `init` first), `assistant` and `user` messages with content blocks (text, thinking,
tool_use, tool_result), and a final `result` with `result` (the final text), `is_error`, `num_turns`,
`total_cost_usd` and `usage`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    ConfiguredEngine,
    JsonLinesParser,
    as_float,
    as_int,
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

MAX_RESULT_LINES = 20


class ClaudeEngine(ConfiguredEngine):
    """Builds `claude -p` command lines with permissions skipped: the container is the sandbox."""

    default_name = "claude"

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        argv = [
            self.config.command or "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--max-turns",
            str(self.config.max_turns),
            # No one answers permission prompts in a headless run; the container is the sandbox. Claude Code
            # refuses this flag when running as root, which is one reason the runner uses a non-root uid.
            "--dangerously-skip-permissions",
        ]
        # With no prompt argument `claude -p` reads the prompt from stdin (used for very long prompts).
        return self.prompted(argv, task, scratch, model_flag="--model", stdin_marker="")

    def parser(self) -> ClaudeParser:
        return ClaudeParser(self.config)

    def env(self, scratch: str) -> dict[str, str]:
        """The run's environment, with `base_url` as ANTHROPIC_BASE_URL and the key in `api_key_env` given to
        the CLI as ANTHROPIC_API_KEY (Claude Code reads only those names)."""
        env = super().env(scratch)
        key_name = self.config.api_key_env
        if key_name and key_name != "ANTHROPIC_API_KEY" and key_name in env:
            env["ANTHROPIC_API_KEY"] = env.pop(key_name)
        if self.config.base_url:
            env["ANTHROPIC_BASE_URL"] = self.config.base_url
        return env


def _claude_usage(config: EngineConfig, raw: dict[str, Any], reported_cost: float | None = None) -> Usage:
    cache_read = as_int(raw.get("cache_read_input_tokens"))
    cache_write = as_int(raw.get("cache_creation_input_tokens"))
    # Anthropic's input_tokens leaves out cache reads and writes; ours counts every input token.
    total_in = as_int(raw.get("input_tokens")) + cache_read + cache_write
    return priced_usage(config, total_in, as_int(raw.get("output_tokens")), cache_read, reported_cost)


class ClaudeParser(JsonLinesParser):
    """Turns stream-json lines into log lines and usage; never raises on odd input."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._by_message: dict[str, Usage] = {}
        self.usage = Usage()
        self.final_text = ""
        self.last_text = ""
        self.is_error: bool | None = None
        self.subtype = ""

    def _event(self, event: dict[str, Any]) -> list[Output] | None:
        kind = event["type"]
        if kind == "system":
            subtype = str(event.get("subtype", ""))
            if subtype == "init":
                return [LogLine(f"claude: session {event.get('session_id', '?')} model {event.get('model', '?')}",
                                "event")]
            return [LogLine(f"claude: system {subtype}", "event")]
        if kind in ("assistant", "user"):
            message = event.get("message")
            if not isinstance(message, dict):
                return None
            out = self._blocks(message.get("content"))
            if kind == "assistant" and isinstance(message.get("usage"), dict):
                key = str(message.get("id") or len(self._by_message))
                self._by_message[key] = _claude_usage(self._config, message["usage"])
                total = sum(self._by_message.values(), Usage())
                if total != self.usage:
                    self.usage = total
                    out.append(UsageUpdate(total))
            return out
        if kind == "result":
            self.subtype = str(event.get("subtype", ""))
            self.is_error = bool(event.get("is_error", False)) or self.subtype.startswith("error")
            result = event.get("result")
            if isinstance(result, str):
                self.final_text = result
            cost = as_float(event.get("total_cost_usd"))
            raw = event.get("usage")
            if isinstance(raw, dict):
                self.usage = _claude_usage(self._config, raw, cost)
            elif cost is not None:
                self.usage = Usage(self.usage.input_tokens, self.usage.output_tokens, self.usage.cached_tokens, cost)
            u = self.usage
            return [
                UsageUpdate(u),
                LogLine(f"claude: {self.subtype or 'result'} after {event.get('num_turns', '?')} turns: "
                        f"{u.input_tokens} in, {u.output_tokens} out, ${u.cost_usd:.4f}", "event"),
            ]
        return None  # unknown: shown as the raw line

    def _blocks(self, content: object) -> list[Output]:
        if isinstance(content, str):
            self.last_text = content
            return [LogLine(row) for row in content.splitlines()]
        out: list[Output] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                text = str(block.get("text", ""))
                self.last_text = text
                out += [LogLine(row) for row in text.splitlines()]
            elif kind == "thinking":
                out += [LogLine(f"thinking: {row}", "event") for row in str(block.get("thinking", "")).splitlines()]
            elif kind == "tool_use":
                args = block.get("input")
                shown = args.get("command") if isinstance(args, dict) and "command" in args else json.dumps(args)
                out.append(LogLine(f"$ {block.get('name', '?')}: {shown}", "event"))
            elif kind == "tool_result":
                out += _tool_result(block)
            else:
                out.append(LogLine(json.dumps(block)))
        return out

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        summary = self.final_text or self.last_text
        ok = exit_code == 0 and self.is_error is not True
        return EngineResult(ok=ok, summary=summary, usage=self.usage)


def _tool_result(block: dict[str, Any]) -> list[Output]:
    content = block.get("content")
    if isinstance(content, list):
        text = "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    else:
        text = str(content or "")
    rows = text.splitlines()
    stream = "err" if block.get("is_error") else "out"
    out: list[Output] = [LogLine(row, stream) for row in rows[:MAX_RESULT_LINES]]
    if len(rows) > MAX_RESULT_LINES:
        out.append(LogLine(f"… {len(rows) - MAX_RESULT_LINES} more lines", "event"))
    return out
