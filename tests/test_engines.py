"""Engines: the command lines and environments they build, and how their output streams are read."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fleet_tui.config import EngineConfig, FleetConfig, ForgeConfig
from fleet_tui.engines import EngineConfigError, make_engine
from fleet_tui.engines.aider import AiderEngine
from fleet_tui.engines.base import EngineResult, Invocation, LogLine, Output, OutputParser, Task, UsageUpdate
from fleet_tui.engines.claude import RUN_ENV as CLAUDE_RUN_ENV
from fleet_tui.engines.claude import ClaudeEngine
from fleet_tui.engines.codex import CodexEngine
from fleet_tui.engines.command import CommandEngine
from fleet_tui.engines.prices import cost_usd
from fleet_tui.engines.scripted import DEMO_SCRIPT, ScriptedEngine, ScriptError, validate_script
from fleet_tui.model import Role, Usage

FAKE_FORGE_TOKEN = "ghp_" + "x" * 36  # shape only, not a credential
OPERATOR_ENV = {
    "OPENAI_API_KEY": "test-openai-key",
    "ANTHROPIC_API_KEY": "test-anthropic-key",
    "GITHUB_TOKEN": FAKE_FORGE_TOKEN,
    "GH_TOKEN": FAKE_FORGE_TOKEN,
    "AWS_SECRET_ACCESS_KEY": "host-secret",
    "PATH": "/usr/bin:/bin",
}
TASK = Task(run_id="run-1", role=Role.DEV, prompt="Fix the bug in parser.py", issue=7, title="Fix parser",
            branch="fleet/7-fix-parser")


def feed_all(parser: OutputParser, lines: list[str]) -> list[Output]:
    out: list[Output] = []
    for line in lines:
        out += parser.feed(line)
    return out


def texts(outputs: list[Output]) -> list[str]:
    return [o.text for o in outputs if isinstance(o, LogLine)]


def usages(outputs: list[Output]) -> list[Usage]:
    return [o.usage for o in outputs if isinstance(o, UsageUpdate)]


# --- environment: only what is listed, never the forge token ---------------------------------------


@pytest.mark.parametrize("name", ["codex", "claude", "aider", "scripted"])
def test_builtin_engines_pass_only_listed_variables_and_a_scratch_home(name: str) -> None:
    engine = make_engine(name, FleetConfig(), environ=OPERATOR_ENV)
    inv = engine.invocation(TASK, workdir="/workspace", scratch="/scratch")
    listed = set(FleetConfig().engine(name).env)
    fixed = set(CLAUDE_RUN_ENV) if name == "claude" else set()  # the engine's own settings, not the operator's
    assert set(inv.env) - {"HOME", "PYTHONUNBUFFERED"} - fixed == listed & set(OPERATOR_ENV)
    assert inv.env["HOME"] == "/scratch/home"
    assert FAKE_FORGE_TOKEN not in inv.env.values()
    assert "AWS_SECRET_ACCESS_KEY" not in inv.env and "PATH" not in inv.env


def test_listed_variable_missing_from_the_environment_is_left_out() -> None:
    engine = make_engine("codex", FleetConfig(), environ={})
    assert engine.invocation(TASK, workdir="/w", scratch="/s").env == {"HOME": "/s/home"}


@pytest.mark.parametrize("kind", ["codex", "claude", "aider", "command", "scripted"])
@pytest.mark.parametrize("token_name", ["GITHUB_TOKEN", "GH_TOKEN"])
def test_listing_the_forge_token_is_refused(kind: str, token_name: str) -> None:
    config = FleetConfig(engines={"mine": EngineConfig(kind=kind, command="agent", env=["OPENAI_API_KEY", token_name])})
    with pytest.raises(EngineConfigError, match=token_name):
        make_engine("mine", config, environ=OPERATOR_ENV)


def test_the_configured_forge_token_variable_is_refused_too() -> None:
    config = FleetConfig(forge=ForgeConfig(token_env=["FLEET_GH"]),
                         engines={"mine": EngineConfig(kind="codex", command="codex", env=["FLEET_GH"])})
    with pytest.raises(EngineConfigError, match="FLEET_GH"):
        make_engine("mine", config, environ={"FLEET_GH": "whatever"})


def test_a_github_token_under_another_name_is_refused_without_showing_it() -> None:
    config = FleetConfig(engines={"mine": EngineConfig(kind="codex", command="codex", env=["SNEAKY"])})
    engine = make_engine("mine", config, environ={"SNEAKY": FAKE_FORGE_TOKEN})
    with pytest.raises(EngineConfigError, match="SNEAKY") as info:
        engine.invocation(TASK, workdir="/w", scratch="/s")
    assert FAKE_FORGE_TOKEN not in str(info.value)


def test_registry_builds_each_kind_and_names_unknown_engines() -> None:
    config = FleetConfig(engines={"custom": EngineConfig(kind="command", command="my-agent {prompt_file}")})
    kinds = {name: type(make_engine(name, config, environ={})) for name in
             ("codex", "claude", "aider", "scripted", "custom")}
    assert kinds == {"codex": CodexEngine, "claude": ClaudeEngine, "aider": AiderEngine,
                     "scripted": ScriptedEngine, "custom": CommandEngine}
    assert make_engine("custom", config, environ={}).name == "custom"
    with pytest.raises(EngineConfigError, match="nope"):
        make_engine("nope", config)


# --- codex ---------------------------------------------------------------------------------------

CODEX_CONFIG = EngineConfig(kind="codex", command="codex", model="gpt-5.5", args=["--disable", "plugins"],
                            env=["OPENAI_API_KEY"], price_input_per_mtok=1.25, price_output_per_mtok=10.0)

# Recorded from codex-cli 0.169.0 against a stub model (see test_codex_real.py).
CODEX_STREAM = [
    '{"type":"thread.started","thread_id":"01a21381-51a6-79a1-a327-686b169dfebd"}',
    '{"type":"turn.started"}',
    '{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc '
    "'echo hello > edited.txt'\",\"aggregated_output\":\"\",\"exit_code\":null,\"status\":\"in_progress\"}}",
    '{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc '
    "'echo hello > edited.txt'\",\"aggregated_output\":\"line one\\nline two\\n\",\"exit_code\":0,"
    '"status":"completed"}}',
    '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done: edited.txt written."}}',
    '{"type":"turn.completed","usage":{"input_tokens":300,"cached_input_tokens":70,'
    '"cache_write_input_tokens":0,"output_tokens":40,"reasoning_output_tokens":0}}',
]


def test_codex_argv_runs_exec_json_in_the_workdir_without_its_own_sandbox() -> None:
    inv = CodexEngine(CODEX_CONFIG, environ=OPERATOR_ENV).invocation(TASK, workdir="/ws", scratch="/scratch/")
    argv = list(inv.argv)
    assert argv[:3] == ["codex", "exec", "--json"]
    assert "--dangerously-bypass-approvals-and-sandbox" in argv and "--skip-git-repo-check" in argv
    assert argv[argv.index("-C") + 1] == "/ws"
    assert argv[argv.index("-o") + 1] == "/scratch/last_message.txt"
    assert argv[argv.index("-m") + 1] == "gpt-5.5"
    assert argv[-4:] == ["--disable", "plugins", "--", TASK.prompt]
    assert inv.files == {"prompt.md": TASK.prompt}
    assert inv.stdin_devnull and inv.needs_network
    assert inv.env == {"OPENAI_API_KEY": "test-openai-key", "HOME": "/scratch/home"}


def test_codex_prompt_too_long_for_one_argument_goes_through_stdin() -> None:
    task = Task(run_id="r", role=Role.DEV, prompt="x" * 200_000)
    argv = CodexEngine(CODEX_CONFIG, environ={}).invocation(task, workdir="/ws", scratch="/s").argv
    assert argv[:4] == ("sh", "-c", 'exec "$@" < "$0"', "/s/prompt.md")
    assert argv[4:6] == ("codex", "exec") and argv[-1] == "-"
    assert all(len(part) < 1000 for part in argv)


def test_codex_stream_gives_commands_message_and_priced_usage(tmp_path: Path) -> None:
    parser = CodexEngine(CODEX_CONFIG, environ={}).parser()
    out = feed_all(parser, CODEX_STREAM)
    lines = texts(out)
    assert "$ /bin/bash -lc 'echo hello > edited.txt'" in lines
    assert "line one" in lines and "line two" in lines
    assert "Done: edited.txt written." in lines
    expected_cost = (300 * 1.25 + 40 * 10.0) / 1_000_000
    assert usages(out) == [Usage(input_tokens=300, output_tokens=40, cached_tokens=70, cost_usd=expected_cost)]
    result = parser.result(0, tmp_path)
    assert result == EngineResult(ok=True, summary="Done: edited.txt written.", usage=usages(out)[0])
    assert result.verdict is None and result.findings == ()


def test_codex_last_message_file_wins_and_failures_are_not_ok(tmp_path: Path) -> None:
    (tmp_path / "last_message.txt").write_text("the final word\n")
    parser = CodexEngine(CODEX_CONFIG, environ={}).parser()
    feed_all(parser, CODEX_STREAM)
    assert parser.result(0, tmp_path).summary == "the final word"
    assert not parser.result(1, tmp_path).ok

    failed = CodexEngine(CODEX_CONFIG, environ={}).parser()
    out = feed_all(failed, ['{"type":"turn.started"}',
                            '{"type":"error","message":"stream disconnected"}',
                            '{"type":"turn.failed","error":{"message":"rate limited"}}'])
    assert "codex: turn failed: rate limited" in texts(out)
    result = failed.result(0, tmp_path / "missing")
    assert not result.ok and result.summary == "rate limited"


def test_codex_unknown_and_malformed_events_are_kept_as_plain_lines() -> None:
    parser = CodexEngine(CODEX_CONFIG, environ={}).parser()
    odd = [
        '{"type":"thread.renamed","name":"x"}',
        '{"type":"item.completed","item":{"id":"i","type":"hologram","beam":1}}',
        '{"type":"item.completed","item":"not an object"}',
        '{"type":"turn.completed","usage":"lots"}',
        '{"type": "item.completed", "item": {"type": "command_execution", "aggregated_output": 5, ',
        "[1, 2, 3]",
        "Reading additional input from stdin...",
        '{"no_type": true}',
    ]
    out = feed_all(parser, odd)
    assert texts(out) == odd
    assert usages(out) == []
    assert parser.feed("   ") == []


def test_codex_other_items_are_readable() -> None:
    parser = CodexEngine(CODEX_CONFIG, environ={}).parser()
    out = feed_all(parser, [
        json.dumps({"type": "item.completed", "item": {"id": "1", "type": "reasoning", "text": "Look at tests"}}),
        json.dumps({"type": "item.completed", "item": {"id": "2", "type": "file_change", "status": "completed",
                                                       "changes": [{"path": "src/a.py", "kind": "update"}]}}),
        json.dumps({"type": "item.started", "item": {"id": "3", "type": "todo_list",
                                                     "items": [{"text": "write test", "completed": True}]}}),
        json.dumps({"type": "item.completed", "item": {"id": "4", "type": "error", "message": "patch rejected"}}),
        json.dumps({"type": "item.completed", "item": {"id": "5", "type": "command_execution", "command": "yes",
                                                       "aggregated_output": "y\n" * 500, "exit_code": 0,
                                                       "status": "completed"}}),
    ])
    lines = texts(out)
    assert "thinking: Look at tests" in lines
    assert "codex: update src/a.py (completed)" in lines
    assert "[x] write test" in lines
    assert "codex: patch rejected" in lines
    assert lines.count("y") == 60 and "… 440 more lines" in lines


def test_cost_is_per_million_tokens_and_zero_without_prices() -> None:
    priced = EngineConfig(price_input_per_mtok=3.0, price_output_per_mtok=15.0)
    assert cost_usd(priced, 1_000_000, 100_000) == pytest.approx(4.5)
    assert cost_usd(EngineConfig(), 1_000_000, 100_000) == 0.0


# --- claude --------------------------------------------------------------------------------------

CLAUDE_CONFIG = EngineConfig(kind="claude", command="claude", model="sonnet", max_turns=12, env=["ANTHROPIC_API_KEY"])

CLAUDE_STREAM = [
    json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-sonnet",
                "tools": ["Bash", "Edit"], "cwd": "/ws"}),
    json.dumps({"type": "assistant", "session_id": "s-1", "message": {
        "id": "msg_1", "role": "assistant",
        "content": [{"type": "text", "text": "I will run the tests."},
                    {"type": "tool_use", "id": "tu_1", "name": "Bash", "input": {"command": "pytest -q"}}],
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                  "output_tokens": 50}}}),
    # The same message again (one line per content block): its usage must not count twice.
    json.dumps({"type": "assistant", "session_id": "s-1", "message": {
        "id": "msg_1", "role": "assistant", "content": [],
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                  "output_tokens": 50}}}),
    json.dumps({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "tu_1", "content": "3 passed\n1 failed", "is_error": True}]}}),
    json.dumps({"type": "assistant", "message": {"id": "msg_2", "role": "assistant",
                                                 "content": [{"type": "text", "text": "Fixed."}],
                                                 "usage": {"input_tokens": 5, "output_tokens": 20}}}),
    json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                "result": "Fixed the parser; all tests pass.", "session_id": "s-1", "total_cost_usd": 0.0421,
                "usage": {"input_tokens": 15, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                          "output_tokens": 70}}),
]


def test_claude_argv_is_headless_stream_json_with_a_turn_cap() -> None:
    inv = ClaudeEngine(CLAUDE_CONFIG, environ=OPERATOR_ENV).invocation(TASK, workdir="/ws", scratch="/s")
    argv = list(inv.argv)
    assert argv[:2] == ["claude", "-p"]
    assert argv[argv.index("--output-format") + 1] == "stream-json" and "--verbose" in argv
    assert argv[argv.index("--max-turns") + 1] == "12"
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert "--dangerously-skip-permissions" in argv
    assert argv[-2:] == ["--", TASK.prompt]
    assert inv.env == {"ANTHROPIC_API_KEY": "test-anthropic-key", "HOME": "/s/home", **CLAUDE_RUN_ENV}
    assert inv.env["IS_SANDBOX"] == "1" and inv.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert argv[argv.index("--setting-sources") + 1] == "user"


def test_claude_stream_gives_lines_and_the_result_usage_once(tmp_path: Path) -> None:
    parser = ClaudeEngine(CLAUDE_CONFIG, environ={}).parser()
    out = feed_all(parser, CLAUDE_STREAM)
    lines = texts(out)
    assert "I will run the tests." in lines and "$ Bash: pytest -q" in lines
    assert "1 failed" in lines and "Fixed." in lines
    # Assistant lines carry their message's start usage only; the result's totals and cost are the usage.
    assert usages(out) == [Usage(input_tokens=1115, output_tokens=70, cached_tokens=1000, cost_usd=0.0421)]
    result = parser.result(0, tmp_path)
    assert result.ok and result.summary == "Fixed the parser; all tests pass." and result.usage == usages(out)[0]


def test_claude_denied_tool_calls_and_api_errors_fail_the_run(tmp_path: Path) -> None:
    parser = ClaudeEngine(CLAUDE_CONFIG, environ={}).parser()
    out = feed_all(parser, [json.dumps({
        "type": "result", "subtype": "success", "is_error": False, "result": "Done.", "total_cost_usd": 0.01,
        "permission_denials": [{"tool_name": "Write", "tool_input": {"file_path": "/ws/a.txt"}},
                               {"tool_name": "Bash", "tool_input": {"command": "pytest -q"}}]})])
    assert "claude: denied Write /ws/a.txt" in texts(out)
    result = parser.result(0, tmp_path)
    assert not result.ok and result.summary == "claude denied 2 tool calls: Write /ws/a.txt; Bash pytest -q\nDone."
    parser = ClaudeEngine(CLAUDE_CONFIG, environ={}).parser()
    feed_all(parser, [json.dumps({"type": "result", "subtype": "success", "is_error": True,
                                  "result": "API Error: 400 bad request"})])
    result = parser.result(1, tmp_path)
    assert not result.ok and result.summary == "API Error: 400 bad request"
    parser = ClaudeEngine(CLAUDE_CONFIG, environ={}).parser()
    feed_all(parser, ["claude: crashed"])
    result = parser.result(137, tmp_path)
    assert result == EngineResult(ok=False, summary="claude exited with code 137 before its result")


def test_claude_error_result_unknown_and_malformed_lines() -> None:
    parser = ClaudeEngine(CLAUDE_CONFIG, environ={}).parser()
    odd = ['{"type":"stream_event","event":{"delta":"x"}}', '{"type":"assistant","message":"flat"}',
           '{"type": "result", "subtype"', "plain words"]
    out = feed_all(parser, odd)
    assert texts(out) == odd
    feed_all(parser, [json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True,
                                  "total_cost_usd": 0.5})])
    result = parser.result(0, Path("/nonexistent"))
    assert not result.ok and result.usage.cost_usd == 0.5


# --- aider ---------------------------------------------------------------------------------------

AIDER_CONFIG = EngineConfig(kind="aider", command="aider", model="gpt-4o", env=["OPENAI_API_KEY"],
                            price_input_per_mtok=2.0, price_output_per_mtok=8.0)


def test_aider_argv_never_commits_never_prompts_and_logs_analytics_locally() -> None:
    inv = AiderEngine(AIDER_CONFIG, environ=OPERATOR_ENV).invocation(TASK, workdir="/ws", scratch="/s")
    argv = list(inv.argv)
    assert argv[0] == "aider"
    assert argv[argv.index("--message-file") + 1] == "/s/prompt.md"
    for flag in ("--yes-always", "--no-auto-commits", "--no-pretty", "--no-stream", "--analytics-disable"):
        assert flag in argv
    assert argv[argv.index("--analytics-log") + 1] == "/s/analytics.jsonl"
    assert argv[argv.index("--model") + 1] == "gpt-4o"
    assert inv.files["prompt.md"] == TASK.prompt
    assert set(inv.files) == {"prompt.md", "aider.env", "aider.model.settings.yml",
                              "home/.aider/caches/model_prices_and_context_window.json"}
    assert inv.env == {"OPENAI_API_KEY": "test-openai-key", "HOME": "/s/home"}


def test_aider_usage_from_its_lines_then_from_the_analytics_log(tmp_path: Path) -> None:
    parser = AiderEngine(AIDER_CONFIG, environ={}).parser()
    out = feed_all(parser, [
        "Aider v0.86.1",
        "Applied edit to parser.py",
        "Tokens: 2.3k sent, 1.1k cache write, 450 received. Cost: $0.0123 message, $0.0123 session.",
        "Tokens: 1,000 sent, 50 received. Cost: $0.00 message, $0.00 session.",
        '{"not": "an event"}',
    ])
    assert "Applied edit to parser.py" in texts(out) and '{"not": "an event"}' in texts(out)
    running = usages(out)
    assert running[0] == Usage(input_tokens=2300, output_tokens=450, cost_usd=0.0123)
    assert running[1].input_tokens == 3300 and running[1].cost_usd == pytest.approx(cost_usd(AIDER_CONFIG, 3300, 500))
    assert parser.result(0, tmp_path).usage == running[1]  # no analytics log written

    events = [
        {"event": "launched", "properties": {}},
        {"event": "message_send", "properties": {"main_model": "gpt-4o", "prompt_tokens": 2000,
                                                 "completion_tokens": 300, "total_tokens": 2300,
                                                 "cost": 0.01, "total_cost": 0.01}},
        {"event": "message_send", "properties": {"prompt_tokens": 1000, "completion_tokens": 200,
                                                 "cost": 0.005, "total_cost": 0.015}},
    ]
    (tmp_path / "analytics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    result = parser.result(0, tmp_path)
    assert result.ok and "Applied edit to parser.py" in result.summary and "Tokens:" not in result.summary
    assert result.usage == Usage(input_tokens=3000, output_tokens=500, cost_usd=0.015)


def test_aider_analytics_without_cost_uses_the_price_table(tmp_path: Path) -> None:
    (tmp_path / "analytics.jsonl").write_text(json.dumps(
        {"event": "message_send", "properties": {"prompt_tokens": 1_000_000, "completion_tokens": 0, "cost": 0}}))
    result = AiderEngine(AIDER_CONFIG, environ={}).parser().result(2, tmp_path)
    assert not result.ok and result.usage.cost_usd == pytest.approx(2.0)


# --- command -------------------------------------------------------------------------------------


def test_command_template_fills_fields_and_leaves_other_braces() -> None:
    config = EngineConfig(kind="command", command="my-agent --prompt {prompt_file} --cwd '{workspace}'",
                          args=["--issue={issue}", '{"json": true}', "--out", "{output_file}"], env=["OPENAI_API_KEY"])
    inv = CommandEngine(config, environ=OPERATOR_ENV).invocation(TASK, workdir="/my ws", scratch="/s")
    assert inv.argv == ("my-agent", "--prompt", "/s/prompt.md", "--cwd", "/my ws", "--issue=7", '{"json": true}',
                        "--out", "/s/final_message.md")
    assert inv.env == {"OPENAI_API_KEY": "test-openai-key", "HOME": "/s/home"}


def test_command_output_is_plain_lines_and_the_summary_its_output_file(tmp_path: Path) -> None:
    engine = CommandEngine(EngineConfig(kind="command", command="agent"), environ={})
    parser = engine.parser()
    assert texts(feed_all(parser, ['{"type":"x"}', "done"])) == ['{"type":"x"}', "done"]
    assert parser.result(0, tmp_path).summary == '{"type":"x"}\ndone'
    (tmp_path / "final_message.md").write_text("All done.\n")
    assert parser.result(0, tmp_path) == EngineResult(ok=True, summary="All done.")
    assert not parser.result(3, tmp_path).ok


@pytest.mark.parametrize("command", ["", "   ", "agent 'unclosed"])
def test_command_needs_a_usable_command_line(command: str) -> None:
    with pytest.raises(EngineConfigError, match="engines.mine.command"):
        CommandEngine(EngineConfig(kind="command", command=command), name="mine")


# --- scripted ------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q")
    (ws / "README.md").write_text("sample\n")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "initial")
    return ws


def run_invocation(inv: Invocation, workspace: Path, scratch: Path, parser: OutputParser) -> tuple[list[Output],
                                                                                                  EngineResult]:
    """What a local runner does: write the files, start the process in the workspace, read its lines."""
    scratch.mkdir(exist_ok=True)
    for name, content in inv.files.items():
        (scratch / name).write_text(content)
    env = {**inv.env, "PATH": os.environ["PATH"]}
    proc = subprocess.run(inv.argv, cwd=workspace, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30, check=False)
    out = feed_all(parser, (proc.stdout + proc.stderr).splitlines())
    return out, parser.result(proc.returncode, scratch)


def test_scripted_demo_dev_edits_commits_and_reports(repo: Path, tmp_path: Path) -> None:
    engine = ScriptedEngine(EngineConfig(kind="scripted"), environ=OPERATOR_ENV, time_scale=0)
    scratch = tmp_path / "scratch"
    inv = engine.invocation(TASK, workdir=str(repo), scratch=str(scratch))
    assert inv.argv == ("python3", f"{scratch}/scripted_agent.py", f"{scratch}/script.json")
    assert not inv.needs_network and "OPENAI_API_KEY" not in inv.env
    out, result = run_invocation(inv, repo, scratch, engine.parser())
    assert result.ok, texts(out)
    assert (repo / "notes/issue-7.md").read_text().startswith("# #7: Fix parser")
    assert "#7: Fix parser" in (repo / "CHANGELOG.md").read_text()
    assert git(repo, "log", "-1", "--format=%s").strip() == "#7: Fix parser"
    assert git(repo, "status", "--porcelain") == ""
    assert sum(1 for line in texts(out) if line.startswith("Working on #7")) == 30
    assert result.usage == Usage(input_tokens=18400, output_tokens=2100, cached_tokens=9000, cost_usd=0.041)
    assert result.summary.startswith("Implemented #7 (Fix parser)")


def test_scripted_demo_qa_asks_for_changes_then_passes_and_pm_proposes(repo: Path, tmp_path: Path) -> None:
    engine = ScriptedEngine(EngineConfig(kind="scripted"), environ={}, time_scale=0)
    summaries = {}
    for label, task in {
        "qa1": Task(run_id="q1", role=Role.QA, prompt="review", issue=7, qa_round=1),
        "qa2": Task(run_id="q2", role=Role.QA, prompt="review", issue=7, qa_round=2),
        "pm": Task(run_id="p", role=Role.PM, prompt="propose"),
    }.items():
        _, result = run_invocation(engine.invocation(task, workdir=str(repo), scratch=str(tmp_path / label)),
                                   repo, tmp_path / label, engine.parser())
        assert result.ok
        summaries[label] = result.summary
    assert "VERDICT: changes" in summaries["qa1"]
    assert [line for line in summaries["qa1"].splitlines() if line.startswith("- ")]
    assert summaries["qa2"].rstrip().endswith("VERDICT: pass")
    block = summaries["pm"].split("```json", 1)[1].split("```", 1)[0]
    proposals = json.loads(block)
    assert 2 <= len(proposals) <= 3 and all(set(p) == {"title", "body"} for p in proposals)


def test_scripted_custom_script_exit_code_and_sleep(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"dev": [
        {"print": ["one", "two"], "interval": 0.01},
        {"sleep": 0.01},
        {"print": "oops", "stream": "err"},
        {"final": "gave up on {branch}"},
        {"exit": 3},
        {"print": "never printed"},
    ]}))
    engine = ScriptedEngine(EngineConfig(kind="scripted", script=str(script)), environ={})
    out, result = run_invocation(engine.invocation(TASK, workdir=str(repo), scratch=str(tmp_path / "s")),
                                 repo, tmp_path / "s", engine.parser())
    assert [line.text for line in out if isinstance(line, LogLine) and line.stream != "event"] == ["one", "two", "oops"]
    assert [line.stream for line in out if isinstance(line, LogLine) and line.text == "oops"] == ["err"]
    assert not result.ok and result.summary == "gave up on fleet/7-fix-parser"
    with pytest.raises(ScriptError, match="no steps for role qa"):
        engine.invocation(Task(run_id="q", role=Role.QA, prompt=""), workdir="/w", scratch="/s")


def test_scripted_parser_survives_a_crashed_agent(tmp_path: Path) -> None:
    parser = ScriptedEngine(EngineConfig(kind="scripted"), environ={}).parser()
    out = feed_all(parser, ['{"type":"log","text":"hi"}', "Traceback (most recent call last):",
                            '{"type":"usage","input_tokens":"12","output_tokens":null}', '{"type":"mystery"}'])
    assert texts(out) == ["hi", "Traceback (most recent call last):", '{"type":"mystery"}']
    assert usages(out) == [Usage(input_tokens=12)]
    assert not parser.result(1, tmp_path).ok
    assert not parser.result(0, tmp_path).ok  # no result line: the agent did not finish


@pytest.mark.parametrize(("script", "message"), [
    ([], "must be a JSON object"),
    ({"ops": []}, "unknown role 'ops'"),
    ({"dev": {"first": []}}, r"dev\[round first\]: rounds are numbers"),
    ({"dev": [{"dance": 1}]}, r"dev step 1: unknown 'dance'"),
    ({"dev": [{"print": "a", "final": "b"}]}, "exactly one action"),
    ({"dev": [{"write": "/etc/passwd", "content": "x"}]}, "must stay inside the workspace"),
    ({"dev": [{"print": "ok"}, {"append": "../up.txt"}]}, "dev step 2: append path"),
    ({"qa": {"1": [{"sleep": -1}]}}, r"qa\[round 1\] step 1: seconds"),
    ({"pm": [{"usage": {"tokens": 5}}]}, "usage takes an object"),
    ({"pm": [{"exit": "1"}]}, "exit takes an exit code"),
    ({"pm": [{"print": "x", "content": "y"}]}, "'print' does not take content"),
])
def test_script_validation_names_the_problem(script: object, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        validate_script(script, "demo.json")


def test_script_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="no such script file"):
        ScriptedEngine(EngineConfig(kind="scripted", script=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScriptError, match=r"bad\.json: not valid JSON"):
        make_engine("s", FleetConfig(engines={"s": EngineConfig(kind="scripted", script=str(bad))}))


def test_builtin_demo_script_is_valid() -> None:
    assert validate_script(DEMO_SCRIPT, "demo") is DEMO_SCRIPT


# --- engine settings: provider, key, sandbox, extra config, prices -------------------------------


def _codex_argv(config: EngineConfig, *, local: bool = False, environ: dict[str, str] | None = None
                ) -> tuple[list[str], dict[str, str]]:
    runner = "local" if local else "docker"
    from fleet_tui.config import RunnerConfig

    fleet = FleetConfig(engines={"e": config}, runner=RunnerConfig(kind=runner))
    inv = make_engine("e", fleet, environ=environ or {}).invocation(TASK, workdir="/ws", scratch="/s")
    return list(inv.argv), inv.env


def _overrides(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]


def test_codex_provider_from_base_url_key_variable_and_wire_api() -> None:
    config = EngineConfig(kind="codex", command="codex", model="m1", base_url="http://127.0.0.1:8000/v1",
                          api_key_env="LLM_KEY", wire_api="responses")
    argv, env = _codex_argv(config, environ={"LLM_KEY": "k-1", "OPENAI_API_KEY": "other"})
    assert _overrides(argv) == [
        'model_provider="fleet"',
        'model_providers.fleet.name="fleet engine e"',
        'model_providers.fleet.base_url="http://127.0.0.1:8000/v1"',
        'model_providers.fleet.env_key="LLM_KEY"',
        'model_providers.fleet.wire_api="responses"',
    ]
    assert env == {"LLM_KEY": "k-1", "HOME": "/s/home"}  # the key variable is passed without listing it in env
    assert argv[argv.index("-m") + 1] == "m1"


def test_codex_key_variable_alone_keeps_the_openai_url_and_extra_goes_through() -> None:
    config = EngineConfig(kind="codex", command="codex", api_key_env="WORK_OPENAI_KEY",
                          extra={"model_reasoning_effort": "high", "model_verbosity": '"low"'})
    overrides = _overrides(_codex_argv(config)[0])
    assert 'model_providers.fleet.base_url="https://api.openai.com/v1"' in overrides
    assert 'model_providers.fleet.env_key="WORK_OPENAI_KEY"' in overrides
    assert overrides[-2:] == ["model_reasoning_effort=high", 'model_verbosity="low"']
    plain = _overrides(_codex_argv(EngineConfig(kind="codex", command="codex"))[0])
    assert plain == []  # nothing set: Codex's own default provider


@pytest.mark.parametrize(("sandbox", "local", "expected"), [
    ("", False, ["--dangerously-bypass-approvals-and-sandbox"]),
    ("", True, ["--sandbox", "workspace-write", "-c", 'approval_policy="never"']),
    ("read-only", False, ["--sandbox", "read-only", "-c", 'approval_policy="never"']),
    ("danger-full-access", True, ["--sandbox", "danger-full-access", "-c", 'approval_policy="never"']),
])
def test_codex_sandbox_mode(sandbox: str, local: bool, expected: list[str]) -> None:
    argv, _ = _codex_argv(EngineConfig(kind="codex", command="codex", sandbox=sandbox), local=local)
    assert argv[3:3 + len(expected)] == expected
    assert ("--dangerously-bypass-approvals-and-sandbox" in argv) == (expected[0] != "--sandbox")


def test_a_forge_token_as_the_key_variable_is_refused() -> None:
    config = FleetConfig(engines={"e": EngineConfig(kind="codex", command="codex", api_key_env="GITHUB_TOKEN")})
    with pytest.raises(EngineConfigError, match="GITHUB_TOKEN"):
        make_engine("e", config, environ={})


def test_claude_base_url_and_key_variable() -> None:
    config = EngineConfig(kind="claude", command="claude", base_url="https://gateway.example/anthropic",
                          api_key_env="TEAM_ANTHROPIC_KEY")
    inv = ClaudeEngine(config, environ={"TEAM_ANTHROPIC_KEY": "sk-team"}).invocation(TASK, workdir="/w", scratch="/s")
    assert inv.env == {"ANTHROPIC_API_KEY": "sk-team", "ANTHROPIC_BASE_URL": "https://gateway.example/anthropic",
                       "HOME": "/s/home", **CLAUDE_RUN_ENV}


def test_aider_base_url() -> None:
    config = EngineConfig(kind="aider", command="aider", model="openai/m", base_url="http://127.0.0.1:8000/v1")
    argv = list(AiderEngine(config, environ={}).invocation(TASK, workdir="/w", scratch="/s").argv)
    assert argv[argv.index("--openai-api-base") + 1] == "http://127.0.0.1:8000/v1"


def test_default_prices_priced_out_of_the_box_and_overridable() -> None:
    from fleet_tui.engines.prices import default_price, prices_of

    builtin_codex = FleetConfig().engine("codex")
    assert builtin_codex.model == ""  # the CLI's default model, which is not pinned here
    assert prices_of(builtin_codex) == (1.25, 10.0)  # USD budgets hold the built-in engine without config
    assert cost_usd(builtin_codex, 1_000_000, 1_000_000) == pytest.approx(11.25)
    assert prices_of(EngineConfig(kind="command")) == (0.0, 0.0)
    assert default_price("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert default_price("openai/gpt-5.1-codex-mini") == (0.25, 2.0)
    assert default_price("gpt-5.1-codex") == (1.25, 10.0)
    assert default_price("my-local-model") is None and default_price("") is None
    own = EngineConfig(kind="codex", model="gpt-5.1-codex", price_input_per_mtok=9.0, price_output_per_mtok=1.0)
    assert prices_of(own) == (9.0, 1.0)
