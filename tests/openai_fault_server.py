"""A real local HTTP server speaking the OpenAI chat API, with scripted faults (429, 500,
malformed JSON, slow answers, a dead server). It is a test double for fault injection only: the
backend's behaviour against a real model server is tested with llama.cpp
(tests/test_llamacpp_server.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = ["The", " answer", " is", " 4", "."]


class FaultServer:
    """Serves /v1/models and /v1/chat/completions on 127.0.0.1. `faults` is consumed one per
    completion request: ("status", code[, headers]), ("malformed",), ("slow", seconds); an
    empty queue answers normally. `requests` records every completion request's body and
    headers."""

    def __init__(self, model: str = "fault-model") -> None:
        self.model = model
        self.faults: list[tuple] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                body = {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                self._send(200, json.dumps(body).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.requests.append({"body": body, "headers": dict(self.headers)})
                    fault = server.faults.pop(0) if server.faults else None
                if fault and fault[0] == "status":
                    # Echo the Authorization header, as a careless server might: the client
                    # must redact it from its error messages.
                    echo = {"error": {"message": "injected",
                                      "authorization": self.headers.get("Authorization")}}
                    self._send(fault[1], json.dumps(echo).encode(),
                               fault[2] if len(fault) > 2 else None)
                    return
                if fault and fault[0] == "malformed":
                    self._send(200, b'{"choices": [')
                    return
                if fault and fault[0] == "slow":
                    time.sleep(fault[1])
                if body.get("model") != server.model:
                    self._send(404, json.dumps({"error": {"message": "model not found"}}).encode())
                    return
                content = [{"token": t, "logprob": -0.25, "bytes": list(t.encode())}
                           for t in TOKENS]
                answer = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                               "content": "".join(TOKENS)},
                                       "logprobs": {"content": content},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 20, "completion_tokens": len(TOKENS)}}
                self._send(200, json.dumps(answer).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
