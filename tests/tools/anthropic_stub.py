"""A loopback stub of the Anthropic Messages API, for driving the real Claude Code CLI in tests.

`POST /v1/messages` answers from a script (a function of the request body) as the real API streams it: SSE
`message_start` (with the input usage), `content_block_start` / `content_block_delta` / `content_block_stop`
per block (text in `text_delta` chunks, tool input in `input_json_delta` chunks), `message_delta` (stop reason
and output usage) and `message_stop`; or a JSON error with its HTTP status. A non-streaming request gets the
same message as one JSON body. `POST /v1/messages/count_tokens` answers a count; anything else is a 404.
Every request is recorded, so a test can assert that the CLI called nothing but the stub's endpoints.

Run alone (`python tests/tools/anthropic_stub.py`) it serves a script that writes `stub-was-here.txt` in the
directory it is started from, then says it is done, and prints each request it gets.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, as the API reports them (input_tokens leaves out cache reads and writes)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True)
class Message:
    """One scripted answer: content blocks, in order. A block is `{"type": "text", "text": ...}` or
    `{"type": "tool_use", "name": ..., "input": {...}}` (its id is filled in)."""

    blocks: tuple[dict[str, Any], ...]
    usage: Usage = Usage()
    stop_reason: str = ""  # empty: "tool_use" when a block calls a tool, else "end_turn"


@dataclass(frozen=True)
class ApiError:
    """An error answer: the HTTP status and the API's error object."""

    status: int = 400
    type: str = "invalid_request_error"
    message: str = "rejected by the stub"


Answer = Message | ApiError
Script = Callable[[dict[str, Any]], Answer]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the request's last user message (what the CLI sends back after a tool call)."""
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user" or not isinstance(messages[-1].get("content"), list):
        return []
    return [b for b in messages[-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def tool_names(body: dict[str, Any]) -> set[str]:
    return {str(tool.get("name")) for tool in body.get("tools") or [] if isinstance(tool, dict)}


def is_agent_turn(body: dict[str, Any]) -> bool:
    """A request of the agent's own loop (it offers the file tools), not a side call such as a title or a
    quota check, which the CLI makes without tools."""
    return bool(tool_names(body) & {"Write", "Edit", "Bash"})


def side_answer(body: dict[str, Any]) -> Message:
    return Message(({"type": "text", "text": "ok"},), Usage(input_tokens=1, output_tokens=1))


class AnthropicStub:
    """The stub server on 127.0.0.1 (a free port); `script` answers the agent's turns, `side` the rest."""

    def __init__(self, script: Script, side: Script = side_answer, model: str = "claude-sonnet-4-5") -> None:
        self.script = script
        self.side = side
        self.model = model
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="anthropic-stub", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def agent_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.requests if r.path.split("?")[0].endswith("/messages")
                    and is_agent_turn(r.body)]

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}_stub{self._ids:04d}"

    def answer(self, body: dict[str, Any]) -> Answer:
        return self.script(body) if is_agent_turn(body) else self.side(body)

    def message_json(self, message: Message, model: str) -> dict[str, Any]:
        blocks = [self._with_id(block) for block in message.blocks]
        return {"id": self._next_id("msg"), "type": "message", "role": "assistant", "model": model,
                "content": blocks, "stop_reason": _stop_reason(message), "stop_sequence": None,
                "usage": _usage_json(message.usage, message.usage.output_tokens)}

    def _with_id(self, block: dict[str, Any]) -> dict[str, Any]:
        if block.get("type") == "tool_use" and "id" not in block:
            return {"type": "tool_use", "id": self._next_id("toolu"), **block}
        return dict(block)

    def events(self, message: Message, model: str) -> list[tuple[str, dict[str, Any]]]:
        """The SSE events of one streamed message, in the API's order."""
        whole = self.message_json(message, model)
        start = {**whole, "content": [], "stop_reason": None,
                 "usage": _usage_json(message.usage, min(1, message.usage.output_tokens))}
        out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start}),
                                                 ("ping", {"type": "ping"})]
        for index, block in enumerate(whole["content"]):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": part} for part in _halves(block["text"])]
            elif block["type"] == "tool_use":
                first = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": part}
                          for part in _halves(json.dumps(block["input"]))]
            else:
                first, deltas = block, []
            out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": first}))
            out += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                    for d in deltas]
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                                      "usage": {"output_tokens": message.usage.output_tokens}}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _record(self, body: dict[str, Any]) -> None:
                with stub._lock:
                    stub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in
                                                                           self.headers.items()}, body))

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                if content_type == "application/json" or status >= 400:
                    self.send_header("request-id", stub._next_id("req"))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, value: dict[str, Any]) -> None:
                self._send(status, "application/json", json.dumps(value).encode())

            def _not_found(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                           "message": f"stub: no route {self.path}"}})

            def do_GET(self) -> None:
                self._record({})
                self._not_found()

            do_HEAD = do_DELETE = do_PUT = do_GET

            def do_CONNECT(self) -> None:
                # Set as the run's HTTPS_PROXY, the stub sees (and refuses) any request to another host.
                self._record({})
                self._send(403, "text/plain", b"stub: no traffic to other hosts\n")

            def do_POST(self) -> None:
                if not self.path.startswith("/"):  # an absolute URL: a plain-HTTP proxy request for another host
                    self.do_GET()
                    return
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unreadable": raw[:200].decode("utf-8", "replace")}
                if not isinstance(body, dict):
                    body = {"unreadable": body}
                self._record(body)
                route = self.path.split("?")[0].rstrip("/")
                if route.endswith("/v1/messages/count_tokens"):
                    self._json(200, {"input_tokens": len(json.dumps(body)) // 4})
                    return
                if not route.endswith("/v1/messages"):
                    self._not_found()
                    return
                answer = stub.answer(body)
                if isinstance(answer, ApiError):
                    self._json(answer.status, {"type": "error", "error": {"type": answer.type,
                                                                          "message": answer.message}})
                    return
                model = str(body.get("model") or stub.model)
                if not body.get("stream"):
                    self._json(200, stub.message_json(answer, model))
                    return
                data = "".join(f"event: {name}\ndata: {json.dumps(event)}\n\n"
                               for name, event in stub.events(answer, model))
                self._send(200, "text/event-stream", data.encode())

        return Handler


def _stop_reason(message: Message) -> str:
    if message.stop_reason:
        return message.stop_reason
    return "tool_use" if any(b.get("type") == "tool_use" for b in message.blocks) else "end_turn"


def _usage_json(usage: Usage, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens, "output_tokens": output_tokens}


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [part for part in (text[:middle], text[middle:]) if part] or [""]


def write_then_finish(path: str, content: str, final: str, usages: tuple[Usage, Usage] = (Usage(), Usage())
                      ) -> Script:
    """A script of two turns: a `Write` of `content` to `path` (absolute), then, once the tool's result comes
    back, the final text."""

    def script(body: dict[str, Any]) -> Answer:
        if not tool_results(body):
            return Message(({"type": "text", "text": f"I will write {Path(path).name}."},
                            {"type": "tool_use", "name": "Write", "input": {"file_path": path, "content": content}}),
                           usages[0])
        return Message(({"type": "text", "text": final},), usages[1])

    return script


def main() -> None:
    target = str(Path.cwd() / "stub-was-here.txt")
    stub = AnthropicStub(write_then_finish(target, "written by the stub\n", "Done."))
    with stub:
        print(f"ANTHROPIC_BASE_URL={stub.base_url}", flush=True)
        seen = 0
        try:
            while True:
                threading.Event().wait(0.5)
                for request in stub.requests[seen:]:
                    print(request.method, request.path, json.dumps(request.body)[:200], flush=True)
                seen = len(stub.requests)
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
