"""The real Codex CLI driven end to end through the codex engine, against a stub model on loopback.

The stub speaks the Responses API (SSE): first a `function_call` of the CLI's shell tool that edits a file,
then, once the call's output comes back, a final assistant message. Install the CLI with
`tests/tools/install-codex.sh`. Skipped without the binary, except under CI=true where it must run.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import installed_cli

from fleet_tui.config import EngineConfig
from fleet_tui.engines.base import Invocation, LogLine, Output, Task, UsageUpdate
from fleet_tui.engines.codex import CodexEngine
from fleet_tui.model import Role, Usage

pytestmark = pytest.mark.codex

FINAL_MESSAGE = "Appended a line to greeting.txt."
EDIT_COMMAND = "printf 'edited by codex\\n' >> greeting.txt && echo edit-done"
# Usage the stub reports per response; codex's turn.completed carries the thread's totals.
RESPONSE_USAGE = [(1000, 200, 40), (1500, 600, 25)]  # (input, cached, output)


@pytest.fixture(scope="module")
def codex() -> str:
    return installed_cli("codex", "FLEET_CODEX_PREFIX", "codex CLI")


@dataclass
class StubModel:
    """Answers POST /v1/responses; records each request body."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
        outputs = [item for item in body.get("input", []) if item.get("type") == "function_call_output"]
        if not outputs:
            item = self.shell_call(body)
            response_id, index = "resp_1", 0
        else:
            item = {"type": "message", "role": "assistant", "id": "msg_1",
                    "content": [{"type": "output_text", "text": FINAL_MESSAGE}]}
            response_id, index = "resp_2", 1
        inp, cached, out = RESPONSE_USAGE[index]
        return [
            {"type": "response.created", "response": {"id": response_id}},
            {"type": "response.output_item.added", "item": item},
            {"type": "response.output_item.done", "item": item},
            {"type": "response.completed", "response": {"id": response_id, "usage": {
                "input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": out, "output_tokens_details": None, "total_tokens": inp + out}}},
        ]

    @staticmethod
    def shell_call(body: dict[str, Any]) -> dict[str, Any]:
        """A call of whichever shell tool this CLI version offers."""
        tools = {tool.get("name") for tool in body.get("tools", []) if isinstance(tool, dict)}
        if "exec_command" in tools:
            name, arguments = "exec_command", {"cmd": EDIT_COMMAND}
        elif "shell_command" in tools:
            name, arguments = "shell_command", {"command": EDIT_COMMAND}
        else:
            name, arguments = "shell", {"command": ["bash", "-lc", EDIT_COMMAND]}
        return {"type": "function_call", "id": "fc_1", "call_id": "call_edit_1", "name": name,
                "arguments": json.dumps(arguments)}


@pytest.fixture
def stub() -> Iterator[StubModel]:
    model = StubModel()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/responses"):
                self.do_GET()
                return
            model.authorizations.append(self.headers.get("authorization", ""))
            events = model.reply(json.loads(raw or b"{}"))
            data = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    model.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def stub_engine(codex: str, port: int) -> CodexEngine:
    provider = (f'model_providers.stub={{name="stub", base_url="http://127.0.0.1:{port}/v1", '
                'wire_api="responses"}')
    config = EngineConfig(
        kind="codex", command=codex, model="gpt-5.5",
        args=["--disable", "plugins", "-c", 'model_provider="stub"', "-c", provider],
        env=["FLEET_TEST_PASSED"], price_input_per_mtok=2.0, price_output_per_mtok=8.0,
    )
    return CodexEngine(config, environ={"FLEET_TEST_PASSED": "yes", "GITHUB_TOKEN": "not-for-agents"})


def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    (ws / "greeting.txt").write_text("hello\n")
    return ws


def run(inv: Invocation, ws: Path, scratch: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """As the local runner would: files into scratch, the argv in the workspace, stdin from /dev/null."""
    scratch.mkdir()
    for name, content in inv.files.items():
        (scratch / name).write_text(content)
    env = {**inv.env, "PATH": os.environ["PATH"]}  # node for the CLI's launcher
    assert "GITHUB_TOKEN" not in env
    proc = subprocess.run(inv.argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, check=False)
    return proc, proc.stdout.splitlines() + proc.stderr.splitlines()


def test_real_codex_edits_the_workspace_and_reports_events_and_usage(
    codex: str, stub: StubModel, tmp_path: Path
) -> None:
    engine = stub_engine(codex, stub.port)
    ws, scratch = workspace(tmp_path), tmp_path / "scratch"
    task = Task(run_id="run-real", role=Role.DEV, prompt="Append a line to greeting.txt.", issue=1)
    inv = engine.invocation(task, workdir=str(ws), scratch=str(scratch))
    proc, lines = run(inv, ws, scratch)
    assert proc.returncode == 0, "\n".join(lines[-30:])

    assert (ws / "greeting.txt").read_text() == "hello\nedited by codex\n"

    parser = engine.parser()
    outputs: list[Output] = []
    for line in lines:
        outputs += parser.feed(line)
    texts = [o.text for o in outputs if isinstance(o, LogLine)]
    assert any(t.startswith("$ ") and "greeting.txt" in t for t in texts), texts
    assert "edit-done" in texts
    assert FINAL_MESSAGE in texts

    inp = sum(u[0] for u in RESPONSE_USAGE)
    cached = sum(u[1] for u in RESPONSE_USAGE)
    out = sum(u[2] for u in RESPONSE_USAGE)
    expected = Usage(input_tokens=inp, output_tokens=out, cached_tokens=cached,
                     cost_usd=(inp * 2.0 + out * 8.0) / 1_000_000)
    assert [o.usage for o in outputs if isinstance(o, UsageUpdate)][-1] == expected

    result = parser.result(proc.returncode, scratch)
    assert result.ok and result.summary == FINAL_MESSAGE and result.usage == expected
    assert (scratch / "last_message.txt").read_text().strip() == FINAL_MESSAGE

    # The prompt reached the model, the command's output came back to it, and codex kept its state in
    # the scratch HOME rather than anywhere else.
    assert len(stub.requests) == 2
    assert "Append a line to greeting.txt." in json.dumps(stub.requests[0]["input"])
    returned = [i for i in stub.requests[1]["input"] if i.get("type") == "function_call_output"]
    assert returned and returned[0]["call_id"] == "call_edit_1" and "edit-done" in json.dumps(returned[0])
    assert (scratch / "home" / ".codex").is_dir()


def test_real_codex_takes_a_prompt_too_long_for_argv_on_stdin(codex: str, stub: StubModel, tmp_path: Path) -> None:
    engine = stub_engine(codex, stub.port)
    ws, scratch = workspace(tmp_path), tmp_path / "scratch"
    prompt = "Context line.\n" * 12_000 + "END-OF-LONG-PROMPT: append a line to greeting.txt."
    inv = engine.invocation(Task(run_id="run-long", role=Role.DEV, prompt=prompt), workdir=str(ws),
                            scratch=str(scratch))
    assert inv.argv[0] == "sh"
    proc, lines = run(inv, ws, scratch)
    assert proc.returncode == 0, "\n".join(lines[-30:])
    assert "END-OF-LONG-PROMPT" in json.dumps(stub.requests[0]["input"])
    assert (ws / "greeting.txt").read_text() == "hello\nedited by codex\n"


def test_real_codex_takes_the_provider_key_and_options_from_the_engine_config(
    codex: str, stub: StubModel, tmp_path: Path
) -> None:
    """base_url, api_key_env, wire_api and extra become `-c` overrides the real CLI accepts: it reaches the
    stub with the key from the named variable, in a run whose HOME has no config of its own."""
    config = EngineConfig(kind="codex", command=codex, model="gpt-5.5", base_url=f"http://127.0.0.1:{stub.port}/v1",
                          api_key_env="FLEET_STUB_KEY", wire_api="responses",
                          extra={"model_reasoning_effort": '"low"'}, args=["--disable", "plugins"])
    engine = CodexEngine(config, environ={"FLEET_STUB_KEY": "stub-key-123", "OPENAI_API_KEY": "not-this-one"})
    ws, scratch = workspace(tmp_path), tmp_path / "scratch"
    inv = engine.invocation(Task(run_id="run-provider", role=Role.DEV, prompt="Append a line."), workdir=str(ws),
                            scratch=str(scratch))
    assert inv.env["FLEET_STUB_KEY"] == "stub-key-123" and "OPENAI_API_KEY" not in inv.env
    proc, lines = run(inv, ws, scratch)
    assert proc.returncode == 0, "\n".join(lines[-30:])
    assert (ws / "greeting.txt").read_text() == "hello\nedited by codex\n"
    assert stub.authorizations and set(stub.authorizations) == {"Bearer stub-key-123"}
    assert stub.requests[0].get("reasoning", {}).get("effort") == "low"
