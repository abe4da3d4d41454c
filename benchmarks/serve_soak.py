"""Load soak of ``dermfm serve``: many concurrent clinicians for minutes, mixing uploads, chat and
document downloads, on loopback. Pass/fail on: no 5xx, server RSS at the end within 20 % of the
start, every acknowledged case readable afterwards; p50/p95/p99 latency per operation reported.

What runs, in order, in one temporary data folder (nothing is read from ../shared/data):

1. **Users**: ``--users`` clinicians (default: one per client) and an API token for each, made by
   the real commands ``dermfm server user add NAME --role clinician --password-stdin`` and
   ``dermfm server token create NAME``. They run in one helper process through the CLI app itself
   (``typer.testing.CliRunner`` on ``dermfm.cli.app``), because each ``dermfm`` process start
   costs seconds (12 s on a busy 2-core machine) and 64 of them would take longer than the soak.
   Tokens, not ``/api/login``, so that sign-in throttling (per account and per client address,
   and every client here comes from 127.0.0.1) is not what gets measured.
2. **Server**: the real ``dermfm serve`` in a subprocess on 127.0.0.1, a free port, the bundled
   model unless ``--model``. **Rate limiting is lifted for the soak** through the server's own
   options: ``--rate-per-minute 1e9 --burst 1000000`` (``--server-rate default`` keeps the server's
   defaults, e.g. to see 429s). The options are taken from ``dermfm serve --help`` at run time, so
   a server without them is started without them (and the soak says so). With one user per client
   and the limit lifted, neither a per-token nor a per-user bucket throttles the soak; a 429 that
   still comes is counted on its own (expected behaviour, not a failure) and the client waits for
   its ``Retry-After``. Everything else (body limits, concurrency caps on decoding and inference)
   stays at the server's defaults: that is what is measured.
3. **Warm-up, single client** (the latency reference, measured in the same run): one untimed round
   of every operation (the first consult builds the class embeddings), then ``--warmup`` timed
   rounds; the median per operation is the reference that the soak's p50/p99 are divided by.
4. **Warm-up, concurrent**: every client uploads one case at once (untimed), so the soak starts
   with one case per client and the server's thread pool and allocator have seen full
   concurrency. RSS is sampled after the single-client warm-up and again after this one; the
   second, after 2 s idle, is the **start RSS** of the criterion (the RSS criterion is about
   growth over the soak, a leak; the one-time cost of the first concurrent burst is shown as its
   own row).
5. **Soak**: ``--clients`` threads (each its own keep-alive ``httpx.Client``, its own user) for
   ``--duration`` seconds, all released at once. Each picks an operation by the ``--mix`` weights:

   * ``consult``: ``POST /api/cases`` with a lesion-like JPEG generated in memory (PIL, a fresh
     image every time: skin-toned noisy background, irregular brown lesion, a few hairs; 320-720 px)
     and random patient fields and question;
   * ``chat``: ``POST /api/cases/{id}/messages`` on one of the client's own cases;
   * ``report.pdf`` / ``soap.md``: ``GET /api/cases/{id}/documents/...`` of one of its cases;
   * ``list``: ``GET /api/cases?limit=20`` (about one in four with a ``q`` search).

   Bounded: every request has a ``--timeout``; all clients together make at most
   ``--max-requests``; a client starts no request after the deadline, and the run gives up on
   clients still busy ``--timeout`` + 30 s after it. The server's RSS (``/proc/PID/status``) is
   sampled every ``--sample-every`` s during the soak.
6. **End RSS**: sampled right after the burst and again after ``--idle`` seconds of idleness (the
   latter is the criterion's end).
7. **Read back**: every acknowledged case (a 201 from a consult, in any phase) is read with
   ``GET /api/cases/{id}`` (200, same id, at least one report, at least as many user messages as
   chat turns that were acknowledged with 200) and ``GET /api/cases/{id}/image`` (200, an image
   Pillow can decode), by its owner.

Latency figures are over the 2xx answers of the soak phase; every answer of every phase counts
towards the status table. Exit status 0 when every criterion holds, 1 when one fails (each is
printed with PASS/FAIL): no 5xx in any phase; no request left unanswered (timeouts, refused or
reset connections) and the server process alive at the end; no 4xx other than 429 (the soak only
sends valid requests for the client's own cases); end RSS <= ``--rss-limit`` (1.2) x start RSS;
every acknowledged case readable. Exit 2 when the soak could not run (server did not start).

    python benchmarks/serve_soak.py [--clients 64] [--duration 300] [--max-requests 200000]
        [--mix consult=2,chat=3,report.pdf=1,soap.md=1,list=1] [--json soak.json]

A short validation run: ``python benchmarks/serve_soak.py --clients 8 --duration 20``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.table import Table
from serve_load import dermfm_command, free_port, stop_process  # sibling start-up helpers

OPS = ("consult", "chat", "report.pdf", "soap.md", "list")
DEFAULT_MIX = "consult=2,chat=3,report.pdf=1,soap.md=1,list=1"
#: Server options that lift the rate limit for the soak (only those ``dermfm serve`` offers).
LIFT_RATE = {"--rate-per-minute": "1e9", "--burst": "1000000"}

SITES = ("back", "chest", "forearm", "thigh", "face", "scalp", "abdomen", "lower leg")
DURATIONS = ("2 weeks", "3 months", "a year", "since childhood", "6 weeks")
QUESTIONS = (
    None,
    "Is this lesion suspicious?",
    "What should I look for at follow-up?",
    "New mole, patient worried. Next steps?",
)
CHATS = (
    "It has grown over the last three months.",
    "It bleeds sometimes when scratched.",
    "What are the red flags I should check?",
    "The patient is 54 and has fair skin.",
    "Should I refer to dermatology?",
    "It is itchy but has not changed.",
    "Can you explain the top candidate?",
    "What would dermoscopy add here?",
)

#: Wide enough for the latency table when the output goes to a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=150)


# --------------------------------------------------------------------------- images


def lesion_jpeg(rng: random.Random) -> bytes:
    """A lesion-like photo, generated: skin-toned noisy background, an irregular brown blob with
    a darker centre, a few hairs, slight blur; 320-720 px wide, JPEG quality 85-95."""
    w = rng.randrange(320, 721, 8)
    h = int(w * rng.uniform(0.66, 1.0))
    gen = np.random.default_rng(rng.getrandbits(32))
    skin = np.array([rng.uniform(190, 240), rng.uniform(140, 190), rng.uniform(110, 160)])
    pixels = skin + gen.normal(0, 6, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    base = min(w, h) * rng.uniform(0.15, 0.3)
    harmonics = [(rng.uniform(0.05, 0.2), rng.randint(2, 7), rng.uniform(0, 6.3)) for _ in range(3)]
    for scale, colour in ((1.0, (120, 75, 50)), (0.55, (70, 40, 30))):
        points = []
        for k in range(72):
            a = 2 * math.pi * k / 72
            r = base * scale * (1 + sum(amp * math.sin(n * a + ph) for amp, n, ph in harmonics))
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        jitter = tuple(int(c + rng.uniform(-15, 15)) for c in colour)
        draw.polygon(points, fill=jitter)
    for _ in range(rng.randint(0, 6)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        draw.line((x, y, x + rng.uniform(-80, 80), y + rng.uniform(-80, 80)), (40, 30, 25), 1)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=rng.randint(85, 95))
    return out.getvalue()


# --------------------------------------------------------------------------- server and users


USERS_SCRIPT = r"""
import json, sys
from typer.testing import CliRunner
from dermfm.cli import app

job = json.load(sys.stdin)
runner = CliRunner()
tokens = {}
for name in job["names"]:
    steps = (
        (["server", "user", "add", name, "--role", "clinician", "--password-stdin"],
         job["password"] + "\n"),
        (["server", "token", "create", name, "--days", "2"], None),
    )
    for args, stdin in steps:
        done = runner.invoke(app, [*args, "--data", job["data"]], input=stdin)
        if done.exit_code:
            sys.stderr.write(f"dermfm {' '.join(args)}: exit {done.exit_code}\n{done.output}\n")
            sys.exit(2)
    tokens[name] = done.stdout.strip().splitlines()[-1]
print(json.dumps(tokens))
"""


def create_users(dermfm: str, data: Path, n: int, env: dict[str, str]) -> dict[str, str]:
    """``n`` clinicians ``soak00``... and an API token each, through the CLI (see the docstring)."""
    python = Path(dermfm).with_name("python")
    job = {
        "data": str(data),
        "names": [f"soak{i:02d}" for i in range(n)],
        "password": "soak-" + os.urandom(12).hex(),
    }
    done = subprocess.run(
        [str(python) if python.is_file() else sys.executable, "-c", USERS_SCRIPT],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if done.returncode:
        raise SystemExit(f"creating the users failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve_options(dermfm: str, env: dict[str, str], server_rate: str) -> tuple[list[str], str]:
    """The options that lift the rate limit (those ``dermfm serve --help`` lists) and a note."""
    if server_rate == "default":
        return [], "server defaults (rate limit not lifted)"
    listed = subprocess.run(
        [dermfm, "serve", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
        timeout=120,
    ).stdout
    options = [x for flag, value in LIFT_RATE.items() if flag in listed for x in (flag, value)]
    missing = [flag for flag in LIFT_RATE if flag not in listed]
    note = "lifted: " + (" ".join(options) or "nothing")
    if missing:
        note += f" (dermfm serve has no {', '.join(missing)})"
    return options, note


class Server:
    """``dermfm serve`` in a subprocess on a free loopback port."""

    def __init__(self, dermfm: str, options: list[str], data: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "serve.log"
        command = [dermfm, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data", str(data), *options]
        self.command = command
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> None:
        """Poll ``GET /api/health`` until it answers 200; exit 2 with the log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        console.print(f"the server did not start:\n{self.tail()}", markup=False)
        raise SystemExit(2)

    def rss(self) -> int:
        """Resident set size of the server process in bytes (0 when it is gone)."""
        return _proc_status(self.process.pid, "VmRSS") * 1024

    def threads(self) -> int:
        """OS threads of the server process."""
        return _proc_status(self.process.pid, "Threads")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def tail(self) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit within 15 s)."""
        stop_process(self.process)


def _proc_status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def settled_rss(server: Server, samples: int = 3, every: float = 0.5) -> int:
    """Median of a few RSS samples taken ``every`` seconds apart."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(every)
        values.append(server.rss())
    return int(statistics.median(values))


# --------------------------------------------------------------------------- clients


@dataclass
class Record:
    """One request: phase, operation, HTTP status (0: no answer), latency in seconds."""

    phase: str
    op: str
    status: int
    latency: float
    detail: str = ""


@dataclass
class Ack:
    """An acknowledged case: its owner's token and the chat turns acknowledged with 200."""

    user: str
    token: str
    chats: int = 0


@dataclass
class Client:
    """One simulated clinician: a user, a keep-alive HTTP client and the cases it created."""

    index: int
    user: str
    token: str
    http: httpx.Client
    rng: random.Random
    cases: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    acks: dict[str, Ack] = field(default_factory=dict)

    def request(self, phase: str, op: str, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request, record its status and latency; ``None`` when nothing came back."""
        began = time.perf_counter()
        try:
            reply = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.records.append(
                Record(phase, op, 0, time.perf_counter() - began, type(exc).__name__)
            )
            return None
        latency = time.perf_counter() - began
        detail = "" if reply.status_code < 400 else reply.text[:200]
        self.records.append(Record(phase, op, reply.status_code, latency, detail))
        return reply

    def do(self, phase: str, op: str) -> Any:
        """One operation of the mix (a consult when the client has no case yet)."""
        if op != "consult" and op != "list" and not self.cases:
            op = "consult"
        rng = self.rng
        if op == "consult":
            fields = {
                "age": str(rng.randint(18, 90)),
                "sex": rng.choice(("female", "male")),
                "site": rng.choice(SITES),
                "duration": rng.choice(DURATIONS),
            }
            question = rng.choice(QUESTIONS)
            if question:
                fields["question"] = question
            name = f"lesion-{self.index:02d}-{len(self.cases):04d}.jpg"
            files = {"image": (name, lesion_jpeg(rng), "image/jpeg")}
            reply = self.request(phase, op, "POST", "/api/cases", data=fields, files=files)
            if reply is not None and reply.status_code == 201:
                case_id = reply.json()["case"]["case_id"]
                self.cases.append(case_id)
                self.acks[case_id] = Ack(self.user, self.token)
            return reply
        if op == "list":
            params: dict[str, Any] = {"limit": 20}
            if rng.random() < 0.25:
                params["q"] = rng.choice(SITES)
            return self.request(phase, op, "GET", "/api/cases", params=params)
        case_id = rng.choice(self.cases)
        if op == "chat":
            body = {"text": rng.choice(CHATS)}
            path = f"/api/cases/{case_id}/messages"
            reply = self.request(phase, op, "POST", path, json=body)
            if reply is not None and reply.status_code == 200:
                self.acks[case_id].chats += 1
            return reply
        return self.request(phase, op, "GET", f"/api/cases/{case_id}/documents/{op}")


def retry_after(reply: Any) -> float:
    """Seconds to wait after a 429 (its ``Retry-After``, 1 s when absent or unreadable)."""
    try:
        return max(0.05, float(reply.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


class Tickets:
    """At most ``limit`` requests across all clients."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def soak(
    clients: list[Client], weights: dict[str, float], seconds: float, tickets: Tickets
) -> float:
    """Every client runs the mix until the deadline or the request budget; the wall time."""
    ops = [op for op in OPS if weights.get(op, 0) > 0]
    cum = [weights[op] for op in ops]
    barrier = threading.Barrier(len(clients) + 1)
    deadline = [0.0]

    def run(client: Client) -> None:
        barrier.wait()
        while time.monotonic() < deadline[0] and tickets.take():
            op = client.rng.choices(ops, cum)[0]
            reply = client.do("soak", op)
            if reply is None:
                time.sleep(0.2)  # a failed connection: do not spin
            elif reply.status_code == 429:
                time.sleep(min(retry_after(reply), max(0.0, deadline[0] - time.monotonic())))

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds
    began = time.perf_counter()
    barrier.wait()
    give_up = deadline[0] + clients[0].http.timeout.read + 30
    for t in threads:
        t.join(max(0.0, give_up - time.monotonic()))
    stuck = [c for t, c in zip(threads, clients, strict=True) if t.is_alive()]
    if stuck:
        console.print(f"[red]{len(stuck)} clients still busy after the deadline; abandoned[/red]")
        for c in stuck:
            c.records.append(Record("soak", "stuck", 0, 0.0, "client abandoned"))
    return time.perf_counter() - began


# --------------------------------------------------------------------------- read back


def read_back(url: str, acks: dict[str, Ack], timeout: float, workers: int = 8) -> dict[str, Any]:
    """Read every acknowledged case and its image; what could not be read, and the requests."""
    local = threading.local()
    records: list[Record] = []
    lock = threading.Lock()

    def get(token: str, path: str) -> Any:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=timeout)
        for _ in range(5):
            began = time.perf_counter()
            try:
                reply = local.http.get(path, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                with lock:
                    records.append(Record("read back", "read back", 0, 0.0, type(exc).__name__))
                return None
            latency = time.perf_counter() - began
            detail = "" if reply.status_code < 400 else reply.text[:200]
            with lock:
                records.append(Record("read back", "read back", reply.status_code, latency, detail))
            if reply.status_code != 429:
                return reply
            time.sleep(retry_after(reply))
        return reply

    def check(item: tuple[str, Ack]) -> str | None:
        case_id, ack = item
        reply = get(ack.token, f"/api/cases/{case_id}")
        if reply is None or reply.status_code != 200:
            return f"{case_id}: case {getattr(reply, 'status_code', 'no answer')}"
        case = reply.json()
        if case.get("case_id") != case_id or not case.get("reports"):
            return f"{case_id}: case body without its id or a report"
        asked = sum(1 for m in case.get("messages", []) if m.get("role") == "user")
        if asked < ack.chats:
            return f"{case_id}: {ack.chats} chat turns acknowledged, {asked} user messages stored"
        reply = get(ack.token, case.get("image_url") or f"/api/cases/{case_id}/image")
        if reply is None or reply.status_code != 200:
            return f"{case_id}: image {getattr(reply, 'status_code', 'no answer')}"
        try:
            with Image.open(io.BytesIO(reply.content)) as image:
                image.load()
        except Exception as exc:
            return f"{case_id}: stored image unreadable ({type(exc).__name__})"
        return None

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        problems = [p for p in pool.map(check, acks.items()) if p]
    return {
        "cases": len(acks),
        "chat_turns": sum(a.chats for a in acks.values()),
        "unreadable": problems,
        "records": records,
        "seconds": time.perf_counter() - began,
    }


# --------------------------------------------------------------------------- figures


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of ``values`` (None when empty)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.array(values)
    return {
        "p50": float(np.quantile(a, 0.5)),
        "p95": float(np.quantile(a, 0.95)),
        "p99": float(np.quantile(a, 0.99)),
        "max": float(a.max()),
    }


def status_counts(records: list[Record]) -> dict[str, int]:
    """2xx, 429, other 4xx, 5xx and unanswered counts."""
    counts = Counter()
    for r in records:
        if r.status == 0:
            counts["no answer"] += 1
        elif r.status >= 500:
            counts["5xx"] += 1
        elif r.status == 429:
            counts["429"] += 1
        elif r.status >= 400:
            counts["4xx"] += 1
        else:
            counts["2xx"] += 1
    return {k: counts.get(k, 0) for k in ("2xx", "429", "4xx", "5xx", "no answer")}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def parse_mix(text: str) -> dict[str, float]:
    """``consult=2,chat=3,...`` as weights; unknown operations are refused."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, _, value = part.partition("=")
        if op not in OPS:
            raise SystemExit(f"--mix: unknown operation {op!r} (choose from {', '.join(OPS)})")
        weights[op] = float(value or 1)
    if not any(w > 0 for w in weights.values()):
        raise SystemExit("--mix: give at least one operation a positive weight")
    return weights


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (threads)")
    parser.add_argument("--duration", type=float, default=300.0, help="soak seconds")
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="requests of all clients together"
    )
    parser.add_argument("--users", type=int, default=None, help="clinicians (default: one each)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"weights (default {DEFAULT_MIX})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--warmup", type=int, default=3, help="timed single-client rounds")
    parser.add_argument("--idle", type=float, default=10.0, help="idle seconds before end RSS")
    parser.add_argument("--sample-every", type=float, default=1.0, help="RSS sampling period")
    parser.add_argument("--rss-limit", type=float, default=1.2, help="end RSS / start RSS bound")
    parser.add_argument(
        "--server-rate",
        choices=("lift", "default"),
        default="lift",
        help="lift the server's rate limit for the soak (default) or keep its defaults",
    )
    parser.add_argument("--model", default=None, help="--model of dermfm serve")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--keep", type=Path, default=None, help="copy the data folder here")
    args = parser.parse_args()
    weights = parse_mix(args.mix)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        raise SystemExit("--clients, --duration and --max-requests must be positive")
    n_users = max(1, min(args.users or args.clients, args.clients))

    dermfm = dermfm_command()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="dermfm-soak-") as tmp:
        data = Path(tmp) / "data"
        began = time.perf_counter()
        tokens = create_users(dermfm, data, n_users, env)
        console.print(f"{n_users} users and tokens in {time.perf_counter() - began:.1f} s")
        options, rate_note = serve_options(dermfm, env, args.server_rate)
        if args.model:
            options += ["--model", args.model]
        server = Server(dermfm, options, data, env)
        try:
            result = run(args, weights, server, tokens, rate_note)
        finally:
            server.stop()
            if args.keep:
                shutil.copytree(data, args.keep, dirs_exist_ok=True)
                shutil.copy(server.log, args.keep / "serve.log")
    return report(args, weights, result)


def run(
    args: argparse.Namespace,
    weights: dict[str, float],
    server: Server,
    tokens: dict[str, str],
    rate_note: str,
) -> dict[str, Any]:
    """Warm-ups, soak, RSS samples and read-back against a started server."""
    server.wait_ready(args.start_timeout)
    console.print(f"server on {server.url}, pid {server.process.pid}; rate limit {rate_note}")
    users = list(tokens.items())
    clients = []
    for i in range(args.clients):
        user, token = users[i % len(users)]
        http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=args.timeout,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        )
        clients.append(Client(i, user, token, http, random.Random(args.seed * 1000 + i)))
    rss: dict[str, Any] = {"loaded": server.rss()}

    # single-client warm-up: one cold round, then timed rounds (the reference)
    first = clients[0]
    cold_http = first.http
    first.http = httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {first.token}"},
        timeout=max(args.timeout, args.start_timeout),
    )
    for op in OPS:
        first.do("cold", op)
    first.http.close()
    first.http = cold_http
    for _ in range(args.warmup):
        for op in OPS:
            first.do("warm-up", op)
    time.sleep(1.0)
    rss["after single-client warm-up"] = settled_rss(server)
    # concurrent warm-up: every client opens its first case at the same time
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda c: c.do("concurrent warm-up", "consult"), clients))
    time.sleep(2.0)
    rss["start"] = settled_rss(server)
    console.print(
        f"start RSS {mib(rss['start'])} ({server.threads()} threads); "
        f"soak: {args.clients} clients, {args.duration:g} s, mix {args.mix}"
    )

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler() -> None:
        while not stop.wait(args.sample_every):
            samples.append((time.monotonic() - t0, server.rss()))

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    tickets = Tickets(args.max_requests)
    wall = soak(clients, weights, args.duration, tickets)
    stop.set()
    watcher.join()
    rss["end of burst"] = server.rss()
    rss["threads at end of burst"] = server.threads()
    time.sleep(args.idle)
    rss["end"] = settled_rss(server)
    rss["threads at end"] = server.threads()
    rss["during"] = samples
    acks: dict[str, Ack] = {}
    for c in clients:
        acks.update(c.acks)
        c.http.close()
    console.print(f"reading back {len(acks)} acknowledged cases ...")
    back = read_back(server.url, acks, args.timeout)
    return {
        "records": [r for c in clients for r in c.records] + back.pop("records"),
        "wall": wall,
        "budget_left": tickets.left,
        "rss": rss,
        "read_back": back,
        "alive": server.alive(),
        "server_log_tail": server.tail(),
        "rate_note": rate_note,
        "server_command": server.command,
    }


def report(args: argparse.Namespace, weights: dict[str, float], result: dict[str, Any]) -> int:
    """Print the tables, write ``--json``, and the exit status from the criteria."""
    records: list[Record] = result["records"]
    soak_records = [r for r in records if r.phase == "soak"]
    warm = [r for r in records if r.phase == "warm-up" and 200 <= r.status < 300]
    reference = {
        op: statistics.median(x) for op in OPS if (x := [r.latency for r in warm if r.op == op])
    }
    per_op: dict[str, Any] = {}
    table = Table(
        title=f"Soak: {args.clients} clients, {result['wall']:.0f} s, {os.cpu_count()} cores "
        "(latency in s over 2xx answers; ref = single-client warm-up median)"
    )
    for col in ("operation", "requests", "2xx", "429", "4xx", "5xx", "no answer"):
        table.add_column(col, justify="right")
    for col in ("p50", "p95", "p99", "max", "ref", "p50/ref", "p99/ref"):
        table.add_column(col, justify="right")
    for op in (*OPS, "all"):
        mine = [r for r in soak_records if op in ("all", r.op)]
        if not mine and op != "all":
            continue
        counts = status_counts(mine)
        q = quantiles([r.latency for r in mine if 200 <= r.status < 300])
        ref = reference.get(op)
        ratio50 = q["p50"] / ref if ref and q["p50"] is not None else None
        ratio99 = q["p99"] / ref if ref and q["p99"] is not None else None
        per_op[op] = {"requests": len(mine), **counts, **q, "reference": ref}
        per_op[op] |= {"p50_vs_reference": ratio50, "p99_vs_reference": ratio99}
        table.add_row(
            op,
            str(len(mine)),
            *(str(counts[k]) for k in ("2xx", "429", "4xx", "5xx", "no answer")),
            *(secs(q[k]) for k in ("p50", "p95", "p99", "max")),
            secs(ref),
            "-" if ratio50 is None else f"{ratio50:.1f}x",
            "-" if ratio99 is None else f"{ratio99:.1f}x",
        )
    console.print(table)
    done = per_op["all"]["2xx"]
    console.print(
        f"throughput {len(soak_records) / result['wall']:.1f} requests/s "
        f"({done / result['wall']:.1f} 2xx/s); ended by "
        f"{'the request budget' if result['budget_left'] == 0 else 'the deadline'}; "
        f"rate limit {result['rate_note']}"
    )

    rss = result["rss"]
    during = [v for _, v in rss["during"]]
    start = rss["start"]
    ratio = rss["end"] / start if start else float("inf")
    peak = max(during, default=0) / start if start else float("inf")
    rows = [
        ("model loaded (server ready)", rss["loaded"]),
        ("after single-client warm-up", rss["after single-client warm-up"]),
        ("start (after concurrent warm-up, idle 2 s)", start),
        ("during soak: min", min(during, default=0)),
        ("during soak: median", int(statistics.median(during)) if during else 0),
        ("during soak: peak", max(during, default=0)),
        ("end of burst", rss["end of burst"]),
        (f"end (after {args.idle:g} s idle)", rss["end"]),
    ]
    memory = Table(title="Server RSS (/proc/PID/status VmRSS)")
    memory.add_column("when")
    memory.add_column("RSS", justify="right")
    memory.add_column("vs start", justify="right")
    for name, value in rows:
        memory.add_row(name, mib(value), f"{value / start:.2f}x" if start else "-")
    console.print(memory)

    back = result["read_back"]
    every = status_counts(records)
    by_phase = {
        phase: status_counts([r for r in records if r.phase == phase])
        for phase in dict.fromkeys(r.phase for r in records)
    }
    unexpected = [r for r in records if 400 <= r.status < 500 and r.status != 429]
    server_errors = [r for r in records if r.status >= 500]
    unanswered = [r for r in records if r.status == 0]
    checks = [
        ("no 5xx (all phases)", every["5xx"] == 0, f"{every['5xx']} 5xx of {len(records)}"),
        (
            "every request answered, server alive",
            not unanswered and result["alive"],
            f"{len(unanswered)} unanswered; server {'alive' if result['alive'] else 'DEAD'}",
        ),
        ("no 4xx except 429", not unexpected, f"{len(unexpected)} (429s: {every['429']})"),
        (
            f"end RSS <= {args.rss_limit:g} x start",
            ratio <= args.rss_limit,
            f"{mib(rss['end'])} / {mib(start)} = {ratio:.2f}x (peak {peak:.2f}x)"
            if start
            else "no RSS",
        ),
        (
            "every acknowledged case readable",
            not back["unreadable"] and back["cases"] > 0,
            f"{back['cases'] - len(back['unreadable'])}/{back['cases']} cases with image, "
            f"{back['chat_turns']} acknowledged chat turns",
        ),
    ]
    verdict = Table(title="Criteria")
    verdict.add_column("criterion")
    verdict.add_column("result")
    verdict.add_column("figures")
    for name, ok, figures in checks:
        verdict.add_row(name, "[green]PASS[/green]" if ok else "[red]FAIL[/red]", figures)
    console.print(verdict)
    for label, bad in (("5xx", server_errors), ("4xx", unexpected), ("no answer", unanswered)):
        for r in bad[:3]:
            console.print(f"  {label}: {r.phase} {r.op} {r.status} {r.detail}", markup=False)
    for problem in back["unreadable"][:5]:
        console.print(f"  unreadable: {problem}", markup=False)
    if server_errors or not result["alive"]:
        console.print("server log (end):\n" + result["server_log_tail"], markup=False)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    }
                    | {"weights": weights, "cpu_count": os.cpu_count()},
                    "server_command": result["server_command"],
                    "rate_limit": result["rate_note"],
                    "wall_s": result["wall"],
                    "operations": per_op,
                    "statuses_by_phase": by_phase,
                    "rss_bytes": {k: v for k, v in rss.items() if k != "during"},
                    "rss_during": rss["during"],
                    "rss_end_vs_start": ratio,
                    "read_back": back,
                    "errors": [vars(r) for r in (server_errors + unexpected + unanswered)[:50]],
                    "checks": {name: {"pass": ok, "figures": f} for name, ok, f in checks},
                },
                indent=2,
            )
        )
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
