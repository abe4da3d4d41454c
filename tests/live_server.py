"""Helpers of the server tests: a real ``dermfm serve`` on a free loopback port, either in a
thread of the test process (uvicorn) or as a separate process (the installed command)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

DERMFM = Path(sys.executable).with_name("dermfm")


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    base: str,
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
    timeout: float = 120.0,
) -> None:
    """Wait until ``GET /api/health`` answers 200; fail early (with the log) when ``proc`` dies."""
    tail = (lambda: log.read_text()[-3000:]) if log else (lambda: "")
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"dermfm serve exited with {proc.returncode}:\n{tail()}")
        try:
            answer = httpx.get(f"{base}/api/health", timeout=5)
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:300]}"
        time.sleep(0.1)
    raise RuntimeError(f"dermfm serve not healthy after {timeout:g} s (last: {last}):\n{tail()}")


def serve_process(data: Path, port: int, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """``dermfm serve --data DATA [OPTIONS]`` on ``port`` as its own process, output to
    ``log``."""
    command = [str(DERMFM), "serve", "--host", "127.0.0.1", "--port", str(port), "--data"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, str(data), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a server process (kill it when it does not stop)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(data: Path, **options: object) -> tuple[str, Any, threading.Thread]:
    """The app on uvicorn in a thread of this process: ``(base URL, server, thread)``; stop it
    with ``server.should_exit = True`` and ``thread.join()``."""
    import uvicorn

    from dermfm.server.app import create_app
    from dermfm.server.settings import ServerSettings

    app = create_app(ServerSettings(data_dir=data, **options))  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    return url, server, thread
