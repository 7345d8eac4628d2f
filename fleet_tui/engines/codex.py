"""The Codex CLI engine: `codex exec --json` and its JSONL thread/turn/item events.

Event shapes follow codex-rs/exec's `exec_events.rs` (checked against codex-cli 0.169.0):
`thread.started`, `turn.started`, `item.started|updated|completed` (item types agent_message, reasoning,
command_execution, file_change, mcp_tool_call, web_search, todo_list, error, ...), `turn.completed` with
`usage` {input_tokens, cached_input_tokens, output_tokens} (totals of the thread so far), `turn.failed`
and `error`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    ConfiguredEngine,
    JsonLinesParser,
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

LAST_MESSAGE_FILE = "last_message.txt"
# A command's output is shown up to this many lines; the rest is counted, not shown.
MAX_OUTPUT_LINES = 60


# The id of the model provider an engine with `base_url` / `api_key_env` / `wire_api` defines for Codex.
PROVIDER_ID = "fleet"
OPENAI_BASE_URL = "https://api.openai.com/v1"


class CodexEngine(ConfiguredEngine):
    """Builds `codex exec` command lines. In a container Codex's own sandbox is bypassed (the container is the
    sandbox); with the local runner it runs `workspace-write` unless the engine says otherwise.

    Runs get a HOME of their own, so the operator's ~/.codex/config.toml is not read: the model, provider,
    sandbox and any other option come from the engine's config, as `-c key=value` overrides."""

    default_name = "codex"

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        argv = [
            self.config.command or "codex",
            "exec",
            "--json",
            *self.sandbox_args(),
            "--skip-git-repo-check",
            "-C",
            workdir,
            "-o",
            f"{scratch}/{LAST_MESSAGE_FILE}",
            *self.config_args(),
        ]
        # Codex reads stdin until EOF even with a prompt argument (the runner gives it /dev/null); "-" makes
        # it take the whole prompt from stdin, used for prompts too long for one argument.
        return self.prompted(argv, task, scratch, model_flag="-m", stdin_marker="-")

    def parser(self) -> CodexParser:
        return CodexParser(self.config)

    def sandbox_args(self) -> list[str]:
        mode = self.config.sandbox or ("workspace-write" if self.local_runner else "")
        if not mode:
            # Codex's landlock/seccomp sandbox does not work inside an unprivileged container, and it is not
            # needed: the run's container (limits, network policy, no secrets) is the sandbox.
            return ["--dangerously-bypass-approvals-and-sandbox"]
        # No one answers approval prompts in a headless run.
        return ["--sandbox", mode, "-c", 'approval_policy="never"']

    def config_args(self) -> list[str]:
        """`-c` overrides: the engine's own model provider (base_url, api_key_env, wire_api), then `extra`."""
        config = self.config
        pairs: list[tuple[str, str]] = []
        if config.base_url or config.api_key_env or config.wire_api:
            prefix = f"model_providers.{PROVIDER_ID}"
            pairs += [
                ("model_provider", toml_string(PROVIDER_ID)),
                (f"{prefix}.name", toml_string(f"fleet engine {self.name}")),
                (f"{prefix}.base_url", toml_string(config.base_url or OPENAI_BASE_URL)),
                (f"{prefix}.env_key", toml_string(config.api_key_env or "OPENAI_API_KEY")),
                (f"{prefix}.wire_api", toml_string(config.wire_api or "responses")),
            ]
        pairs += sorted(config.extra.items())
        out: list[str] = []
        for key, value in pairs:
            out += ["-c", f"{key}={value}"]
        return out


class CodexParser(JsonLinesParser):
    """Turns `codex exec --json` lines into log lines and usage; never raises on odd input."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self.usage = Usage()
        self.last_message = ""
        self.errors: list[str] = []
        self.turn_failed = False
        self.thread_id = ""

    def _event(self, event: dict[str, Any]) -> list[Output] | None:
        kind = event["type"]
        if kind == "thread.started":
            self.thread_id = str(event.get("thread_id", ""))
            return [LogLine(f"codex: thread {self.thread_id} started", "event")]
        if kind == "turn.started":
            return [LogLine("codex: turn started", "event")]
        if kind == "turn.completed":
            usage = event.get("usage")
            if not isinstance(usage, dict):
                return None
            self.usage = priced_usage(
                self._config,
                input_tokens=as_int(usage.get("input_tokens")),
                output_tokens=as_int(usage.get("output_tokens")),
                cached_tokens=as_int(usage.get("cached_input_tokens")),
            )
            u = self.usage
            return [
                UsageUpdate(u),
                LogLine(f"codex: turn completed: {u.input_tokens} in ({u.cached_tokens} cached), "
                        f"{u.output_tokens} out, ${u.cost_usd:.4f}", "event"),
            ]
        if kind == "turn.failed":
            self.turn_failed = True
            error = event.get("error")
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
            self.errors.append(message)
            return [LogLine(f"codex: turn failed: {message}", "err")]
        if kind == "error":
            message = str(event.get("message", ""))
            self.errors.append(message)
            return [LogLine(f"codex: error: {message}", "err")]
        if kind in ("item.started", "item.updated", "item.completed"):
            item = event.get("item")
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                return None
            return self._item(kind.split(".", 1)[1], item)
        return None  # unknown event: shown as the raw line

    def _item(self, phase: str, item: dict[str, Any]) -> list[Output] | None:
        kind = item["type"]
        if kind == "agent_message":
            if phase != "completed":
                return []
            text = str(item.get("text", ""))
            self.last_message = text
            return _lines(text, "out")
        if kind == "reasoning":
            return _lines(str(item.get("text", "")), "event", prefix="thinking: ") if phase == "completed" else []
        if kind == "plan":
            return _lines(str(item.get("text", "")), "event", prefix="plan: ") if phase == "completed" else []
        if kind == "command_execution":
            command = str(item.get("command", ""))
            if phase == "started":
                return [LogLine(f"$ {command}", "event")]
            if phase != "completed":
                return []
            shown = _lines(str(item.get("aggregated_output", "")), "out", limit=MAX_OUTPUT_LINES)
            status = item.get("status", "")
            code = item.get("exit_code")
            shown.append(LogLine(f"codex: command {status} (exit {code}): {command}", "event"))
            return shown
        if kind == "file_change":
            if phase != "completed":
                return []
            changes = item.get("changes") or []
            status = item.get("status", "")
            edits: list[Output] = []
            for change in changes if isinstance(changes, list) else []:
                if isinstance(change, dict):
                    edits.append(LogLine(f"codex: {change.get('kind', 'change')} {change.get('path', '?')} "
                                         f"({status})", "event"))
            return edits or [LogLine(f"codex: file change ({status})", "event")]
        if kind == "mcp_tool_call":
            return [LogLine(f"codex: tool {item.get('server', '?')}.{item.get('tool', '?')} "
                            f"{item.get('status', phase)}", "event")]
        if kind == "web_search":
            return [LogLine(f"codex: web search {item.get('query', '')!s}", "event")] if phase == "started" else []
        if kind == "todo_list":
            todo = item.get("items") or []
            return [LogLine(f"[{'x' if entry.get('completed') else ' '}] {entry.get('text', '')}", "event")
                    for entry in todo if isinstance(entry, dict)]
        if kind == "error":
            message = str(item.get("message", ""))
            return [LogLine(f"codex: {message}", "err")]
        return None  # unknown item type: shown as the raw line

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        summary = self.last_message
        try:
            written = (Path(scratch) / LAST_MESSAGE_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            written = ""
        if written.strip():
            summary = written.strip()
        ok = exit_code == 0 and not self.turn_failed
        if not summary and self.errors:
            summary = self.errors[-1]
        return EngineResult(ok=ok, summary=summary, usage=self.usage)


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (what `-c key=value` parses)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ch >= " " and ch != "\x7f" else f"\\u{ord(ch):04x}" for ch in escaped)
    return f'"{escaped}"'


def _lines(text: str, stream: str, *, prefix: str = "", limit: int | None = None) -> list[Output]:
    rows = text.splitlines() or ([text] if text else [])
    out: list[Output] = []
    shown = rows if limit is None else rows[:limit]
    for index, row in enumerate(shown):
        out.append(LogLine(f"{prefix}{row}" if index == 0 else row, stream))
    if limit is not None and len(rows) > limit:
        out.append(LogLine(f"… {len(rows) - limit} more lines", "event"))
    return out
