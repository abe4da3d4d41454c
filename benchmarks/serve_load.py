"""Requests/second and latency of ``POST /api/diagnose`` under concurrent clients, with and
without micro-batching of the image embeddings.

The real server (``dermfm serve``, uvicorn, the bundled model unless ``--model``) is started in
a subprocess on a free loopback port, twice, one after the other, on the same fresh data folder:

* ``no batching`` (the reference, measured in the same run): ``--batch-max 1``, every request
  runs the image tower alone;
* ``batching``: ``--batch-max 16 --batch-wait-ms 5`` (the server's defaults).

A clinician and an API token are created with the CLI (``dermfm server user add ...
--password-stdin``, ``dermfm server token create``); the per-token rate limit is lifted for the
run. For each number of clients (threads, each with its own keep-alive ``requests.Session``),
every client posts real HAM10000 images from ../shared/data (read into memory once, cycled) to
``/api/diagnose``, ``--requests`` each or for ``--seconds``, all clients released at once. A few
untimed requests warm each server up first (the first one builds the class embeddings). Printed:
throughput (successful requests / wall time), p50 and p99 latency per mode, and the ratios
batching / no batching.

    python benchmarks/serve_load.py [--clients 1 8 32] [--requests 40 | --seconds 10]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODES = (
    ("no batching", ["--batch-max", "1"]),
    ("batching 16 / 5 ms", ["--batch-max", "16", "--batch-wait-ms", "5"]),
)


@dataclass
class Load:
    """Outcome of one load phase."""

    latencies: list[float]
    errors: list[str]
    wall: float

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.wall

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0-1) of the successful requests' latencies, in seconds."""
        return float(np.quantile(np.array(self.latencies), q))


def ham_images(n: int) -> list[tuple[str, bytes]]:
    """``n`` HAM10000 images spread over the label file, as (file name, bytes)."""
    with (SHARED / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = rows[:: max(1, len(rows) // n)][:n]
    return [(Path(r["file"]).name, (SHARED / "ham10000" / r["file"]).read_bytes()) for r in picked]


def dermfm_command() -> str:
    """The ``dermfm`` executable of this interpreter's environment."""
    beside = Path(sys.executable).with_name("dermfm")
    found = str(beside) if beside.is_file() else shutil.which("dermfm")
    if not found:
        raise SystemExit("the dermfm command is not installed in this environment")
    return found


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server process still running (kill it if it does not exit within 15 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_token(dermfm: str, data: Path, env: dict[str, str]) -> str:
    """A clinician ``bench`` and an API token for it, through the CLI."""

    def cli(*args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [dermfm, "server", *args, "--data", str(data)],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"dermfm server {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    cli("user", "add", "bench", "--role", "clinician", "--password-stdin", stdin="bench-pw\n")
    return cli("token", "create", "bench").strip().splitlines()[-1]


class Server:
    """``dermfm serve`` in a subprocess on a free port; stopped on exit from the ``with``."""

    def __init__(self, dermfm: str, options: list[str], data: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data / f"serve-{self.port}.log"
        command = [dermfm, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data", str(data), "--rate-per-minute", "1e9", "--burst", "1000000"]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command + options, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def wait_ready(self, timeout: float) -> None:
        """Poll ``GET /api/health`` until it answers; exits with the server's log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/api/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit within 15 s)."""
        stop_process(self.process)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_load(
    url: str,
    token: str,
    images: list[tuple[str, bytes]],
    clients: int,
    requests_each: int,
    seconds: float | None,
) -> Load:
    """``clients`` threads posting images to ``/api/diagnose``, all released at once."""
    start = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    ends = [0.0] * clients

    def client(i: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            start.wait()
            stop_at = time.monotonic() + seconds if seconds else None
            j = 0
            while time.monotonic() < stop_at if stop_at else j < requests_each:
                name, data = images[(i * 7 + j) % len(images)]
                began = time.perf_counter()
                reply = session.post(
                    f"{url}/api/diagnose", files={"image": (name, data, "image/jpeg")}, timeout=300
                )
                if reply.status_code == 200:
                    latencies[i].append(time.perf_counter() - began)
                else:
                    errors.append(f"{reply.status_code} {reply.text[:200]}")
                j += 1
            ends[i] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    done = [x for per_client in latencies for x in per_client]
    if not done:
        raise SystemExit(f"every request failed; first error: {errors[0]}")
    return Load(done, errors, max(ends) - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    parser.add_argument("--seconds", type=float, default=None, help="time per phase instead")
    parser.add_argument("--images", type=int, default=32, help="distinct HAM10000 images")
    parser.add_argument("--model", default=None, help="--model of dermfm serve")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    args = parser.parse_args()
    if not (SHARED / "ham10000" / "labels.csv").is_file():
        raise SystemExit(f"needs the real images at {SHARED / 'ham10000'}")

    dermfm = dermfm_command()
    images = ham_images(args.images)
    results: dict[tuple[str, int], Load] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "DERMFM_CACHE": str(Path(tmp) / "cache")}
        token = create_token(dermfm, data, env)
        for mode, options in MODES:
            if args.model:
                options = [*options, "--model", args.model]
            with Server(dermfm, options, data, env) as server:
                server.wait_ready(args.start_timeout)
                run_load(server.url, token, images, 1, 3, None)  # warm-up, untimed
                run_load(server.url, token, images, max(args.clients), 1, None)
                for clients in args.clients:
                    results[mode, clients] = run_load(
                        server.url, token, images, clients, args.requests, args.seconds
                    )

    per_client = f"{args.seconds:g} s" if args.seconds else f"{args.requests} requests"
    print(
        f"POST /api/diagnose, {len(images)} HAM10000 images ({per_client} per client), "
        f"model {args.model or 'bundled'}, {os.cpu_count()} cores; servers run one at a time"
    )
    print("clients | mode | requests | req/s | p50 | p99 | errors")
    for (mode, clients), load in results.items():
        print(
            f"{clients} | {mode} | {len(load.latencies)} | {load.rate:.1f}/s | "
            f"{load.quantile(0.5):.3f} s | {load.quantile(0.99):.3f} s | {len(load.errors)}"
        )
    reference, batched = (mode for mode, _ in MODES)
    print("clients | req/s batching vs no batching | p50 ratio | p99 ratio")
    for clients in args.clients:
        a, b = results[reference, clients], results[batched, clients]
        print(
            f"{clients} | {b.rate / a.rate:.2f}x | {b.quantile(0.5) / a.quantile(0.5):.2f}x | "
            f"{b.quantile(0.99) / a.quantile(0.99):.2f}x"
        )
    failed = [e for load in results.values() for e in load.errors]
    if failed:
        print(f"{len(failed)} requests failed; first: {failed[0]}")


if __name__ == "__main__":
    main()
