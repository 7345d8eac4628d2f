"""A loopback stand-in for an OpenAI-compatible model API: `POST /v1/chat/completions`, streaming (SSE
`chat.completion.chunk` events ending in `data: [DONE]`, with a usage chunk when `stream_options.include_usage`
asks for it) and not (one `chat.completion` object with `usage`). Every request is recorded; `GET /v1/models`
lists the one model. Used by the real-CLI tests; no outbound traffic.

    with serve(answer="...", usage=(prompt, completion)) as stub:
        base_url = stub.base_url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fleet-stub"


@dataclass
class StubOpenAI:
    """What the stub answers, and what it was asked. `status` other than 200 answers every completion with
    that status and an OpenAI-shaped error body."""

    answer: str = ""
    usage: tuple[int, int] = (0, 0)  # (prompt_tokens, completion_tokens) reported per completion
    status: int = 200
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def record(self, path: str, authorization: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            self.paths.append(path)
            self.authorizations.append(authorization)
            if body is not None:
                self.requests.append(body)

    def usage_object(self) -> dict[str, int]:
        prompt, completion = self.usage
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-stub{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL),
            "system_fingerprint": "fp_stub",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.answer, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": self.usage_object(),
        }

    def chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        base = {"id": f"chatcmpl-stub{len(self.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", MODEL), "system_fingerprint": "fp_stub"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        # Split on line ends, as a model streams it: several deltas, the text whole once joined.
        pieces = self.answer.splitlines(keepends=True) or [""]
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces]
        events.append(chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append({**base, "choices": [], "usage": self.usage_object()})
        return events


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stub: StubOpenAI

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.stub.record(self.path, self.headers.get("authorization", ""), None)
        if self.path.rstrip("/").endswith("/models"):
            listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]}
            self._send(200, "application/json", json.dumps(listing).encode())
            return
        self._send(404, "application/json", b'{"error": {"message": "not found", "type": "invalid_request_error"}}')

    def do_CONNECT(self) -> None:
        """As a proxy the stub records the host asked for and refuses it: a test can see any outbound attempt."""
        self.stub.record(self.path, self.headers.get("authorization", ""), None)
        self._send(502, "text/plain", b"no outbound traffic from tests\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.stub.record(self.path, self.headers.get("authorization", ""), None)
            self.do_GET()
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        self.stub.record(self.path, self.headers.get("authorization", ""), body)
        stub = self.stub
        if stub.status != 200:
            error = {"error": {"message": "stub: internal error", "type": "server_error", "param": None,
                               "code": None}}
            # As OpenAI's own API may: tell the SDK not to retry on its own (the CLI's retries remain).
            self._send(stub.status, "application/json", json.dumps(error).encode(), {"x-should-retry": "false"})
            return
        if body.get("stream"):
            data = "".join(f"data: {json.dumps(event)}\n\n" for event in stub.chunks(body)) + "data: [DONE]\n\n"
            self._send(200, "text/event-stream", data.encode())
            return
        self._send(200, "application/json", json.dumps(stub.completion(body)).encode())


@contextmanager
def serve(answer: str = "", usage: tuple[int, int] = (0, 0), status: int = 200) -> Iterator[StubOpenAI]:
    """The stub listening on 127.0.0.1 (a free port) until the block ends."""
    stub = StubOpenAI(answer=answer, usage=usage, status=status)
    handler = type("StubHandler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    stub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
