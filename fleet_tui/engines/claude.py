"""The Claude Code engine: `claude -p --output-format stream-json --verbose` and its stream-json lines.

Lines: `system` (subtype `init` first), `assistant` and `user` messages with content blocks (text, thinking,
tool_use, tool_result), and a final `result` with `result` (the final text), `is_error`, `num_turns`,
`total_cost_usd`, `usage` (the run's totals) and `permission_denials`. Checked against Claude Code 2.1.332,
run for real in tests/test_claude_real.py: an `assistant` line is written per content block as it ends, with
the usage of its message's start (output_tokens 1), so usage is read from `result` alone; a refused tool call
still ends in `subtype: success` with exit 0 (only `permission_denials` shows it); an API error exits 1 with
`is_error: true` but `subtype: success`; the turn cap exits 1 with `error_max_turns` and its reason in `errors`.
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
# A denied tool call is named in the result with this much of its target (path or command).
MAX_DENIAL_CHARS = 80

# Set in every run unless the engine's `env` passes its own value.
RUN_ENV = {
    # Claude Code refuses --dangerously-skip-permissions as root (exit 1, before any request) unless it is
    # told it runs in a sandbox. Agents run as uid 1000 in their container, where the flag works anyway, but
    # a run as root (runner.user or the image set to root, the local runner started by root, CI) is still in
    # the sandbox the fleet made for it: the container, or bubblewrap with the local runner (or none, when
    # the operator chose runner.sandbox = "none"). One more effect: repeated 529 "overloaded" answers are
    # retried rather than failed early; the run's stall and budget limits still bound it.
    "IS_SANDBOX": "1",
    # No traffic but the model API: telemetry, error reports, auto-update checks, release notes and the like
    # are off (the first covers the rest; they are named too, as Claude Code's docs list them).
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


class ClaudeEngine(ConfiguredEngine):
    """Builds `claude -p` command lines with permissions skipped (the run's container, or bubblewrap with the
    local runner, is the sandbox), no non-essential traffic and no settings read from the workspace."""

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
            # No one answers permission prompts in a headless run, and a denied call does not fail it (exit 0,
            # `subtype: success`): every tool is allowed, the run's sandbox is what contains it. Not
            # `--permission-mode acceptEdits`, which works as root too but denies every command beyond simple
            # file ones (`python3 -c ...` "requires approval"). Deny rules the engine's args add (`--settings`
            # with `permissions.deny`) still hold, and a call they refuse fails the run. As root the flag
            # needs IS_SANDBOX=1 (RUN_ENV).
            "--dangerously-skip-permissions",
            # Settings come from the engine's config (and the empty HOME), not from the workspace: a
            # `.claude/settings.json` in the repository, which an earlier agent may have written, is read
            # otherwise, and its `env` overrides the run's own (ANTHROPIC_BASE_URL, the key's destination
            # with it). `--settings` in the engine's args still applies.
            "--setting-sources",
            "user",
        ]
        # With no prompt argument `claude -p` reads the prompt from stdin (used for very long prompts).
        return self.prompted(argv, task, scratch, model_flag="--model", stdin_marker="")

    def parser(self) -> ClaudeParser:
        return ClaudeParser(self.config)

    def env(self, scratch: str) -> dict[str, str]:
        """The run's environment, with `base_url` as ANTHROPIC_BASE_URL and the key in `api_key_env` given to
        the CLI as ANTHROPIC_API_KEY (Claude Code reads only those names)."""
        env = super().env(scratch)
        for name, value in RUN_ENV.items():
            env.setdefault(name, value)
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
        self.usage = Usage()
        self.final_text = ""
        self.last_text = ""
        self.is_error: bool | None = None
        self.subtype = ""
        self.denials: list[str] = []  # "Tool target" of each tool call the CLI refused
        self.errors: list[str] = []

    def _event(self, event: dict[str, Any]) -> list[Output] | None:
        kind = event["type"]
        if kind == "system":
            subtype = str(event.get("subtype", ""))
            if subtype == "init":
                return [LogLine(f"claude: session {event.get('session_id', '?')} model {event.get('model', '?')}",
                                "event")]
            return [LogLine(f"claude: system {subtype}", "event")]
        if kind in ("assistant", "user"):
            # An assistant line's usage is its message's start only (output_tokens 1): the totals come with
            # the result, and usage is counted from there, once.
            message = event.get("message")
            if not isinstance(message, dict):
                return None
            return self._blocks(message.get("content"))
        if kind == "result":
            return self._result(event)
        return None  # unknown: shown as the raw line

    def _result(self, event: dict[str, Any]) -> list[Output]:
        self.subtype = str(event.get("subtype", ""))
        # An API error ends in `is_error: true` with `subtype: success`; a turn cap in `error_max_turns`.
        self.is_error = bool(event.get("is_error", False)) or self.subtype.startswith("error")
        result = event.get("result")
        if isinstance(result, str):
            self.final_text = result
        errors = event.get("errors")  # error_max_turns and the like: no `result`, the reason here
        self.errors = [e for e in errors if isinstance(e, str)] if isinstance(errors, list) else []
        denials = event.get("permission_denials")
        self.denials = [_denial(d) for d in denials if isinstance(d, dict)] if isinstance(denials, list) else []
        cost = as_float(event.get("total_cost_usd"))
        raw = event.get("usage")
        if isinstance(raw, dict):
            self.usage = _claude_usage(self._config, raw, cost)
        elif cost is not None:
            self.usage = Usage(self.usage.input_tokens, self.usage.output_tokens, self.usage.cached_tokens, cost)
        u = self.usage
        out: list[Output] = [
            UsageUpdate(u),
            LogLine(f"claude: {self.subtype or 'result'} after {event.get('num_turns', '?')} turns: "
                    f"{u.input_tokens} in, {u.output_tokens} out, ${u.cost_usd:.4f}", "event"),
        ]
        out += [LogLine(f"claude: denied {denial}", "err") for denial in self.denials]
        if self.is_error:
            out += [LogLine(f"claude: {text}", "err") for text in [self.final_text, *self.errors] if text]
        return out

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
                shown = json.dumps(args)
                if isinstance(args, dict):  # a command or the file a tool writes says it; else the whole input
                    for key in ("command", "file_path", "notebook_path"):
                        if isinstance(args.get(key), str):
                            shown = args[key]
                            break
                out.append(LogLine(f"$ {block.get('name', '?')}: {shown}", "event"))
            elif kind == "tool_result":
                out += _tool_result(block)
            else:
                out.append(LogLine(json.dumps(block)))
        return out

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        summary = self.final_text or self.last_text
        if self.is_error is None:  # no result line: the CLI was stopped (or crashed) before its end
            reason = f"claude exited with code {exit_code} before its result"
            return EngineResult(ok=False, summary=f"{reason}\n{summary}" if summary else reason, usage=self.usage)
        if self.is_error or exit_code != 0:
            reason = (self.final_text or "; ".join(self.errors)
                      or f"claude: {self.subtype or 'error'} (exit code {exit_code})")
            return EngineResult(ok=False, summary=reason, usage=self.usage)
        if self.denials:
            # A refused call leaves the run "successful": the work it was to do is not done.
            count = len(self.denials)
            reason = f"claude denied {count} tool call{'s' if count > 1 else ''}: {'; '.join(self.denials)}"
            return EngineResult(ok=False, summary=f"{reason}\n{summary}" if summary else reason, usage=self.usage)
        return EngineResult(ok=True, summary=summary, usage=self.usage)


def _denial(denial: dict[str, Any]) -> str:
    """`Tool target` for one entry of `permission_denials` (the target: its path, command or pattern)."""
    name = str(denial.get("tool_name") or "?")
    args = denial.get("tool_input")
    target = ""
    if isinstance(args, dict):
        for key in ("file_path", "notebook_path", "command", "path", "pattern", "url"):
            if isinstance(args.get(key), str):
                target = args[key]
                break
    target = " ".join(target.split())
    if len(target) > MAX_DENIAL_CHARS:
        target = target[: MAX_DENIAL_CHARS - 1] + "…"
    return f"{name} {target}".strip()


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
