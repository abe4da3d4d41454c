"""Access control: bearer tokens (stored hashed by the database), roles, per-user rate limits and
sign-in throttling, with the error type every route raises."""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.responses import JSONResponse

#: Longest request value quoted back in an error message (longer ones are cut, see :func:`echo`).
ECHO_LIMIT = 100

#: Longest error message sent (longer ones are cut).
MESSAGE_LIMIT = 500

#: Most keys (users, addresses, account-address pairs) a limiter remembers; the least recently
#: seen are forgotten first, so an attacker inventing keys cannot grow memory without bound.
MAX_KEYS = 100_000


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (with ``...``), so that
    an error never sends a large input back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ApiError(Exception):
    """An error the API returns as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON answer. The message is cut to :data:`MESSAGE_LIMIT` characters and
        characters that UTF-8 cannot carry (lone surrogates) are escaped, so any message can
        be sent and none sends a large input back."""
        message = self.message
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 3] + "..."
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return JSONResponse(
            {"error": {"code": self.code, "message": message}}, self.status, headers=self.headers
        )


def too_many(wait: float, what: str) -> ApiError:
    """The 429 answer for a wait of ``wait`` seconds (``Retry-After`` in whole seconds, >= 1)."""
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429, "rate_limited", f"{what}: retry in {seconds} s", {"Retry-After": str(seconds)}
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user's name and role, and the raw token they used."""

    name: str
    role: str
    token: str

    @property
    def is_admin(self) -> bool:
        """Admins see every case and the audit log, and manage users."""
        return self.role == "admin"


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header; 401 when there is none."""
    if not header:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def client_key(address: str | None) -> str:
    """The key of a client address for throttling: IPv4 addresses as they are, IPv6 addresses
    by their /64 network (one subscriber's allocation), anything else as given."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class _Recent(OrderedDict[object, tuple[float, float]]):
    """A mapping that forgets its least recently written keys beyond :data:`MAX_KEYS`."""

    def put(self, key: object, value: tuple[float, float]) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_KEYS:
            self.popitem(last=False)


class RateLimiter:
    """Token buckets per key: ``burst`` requests at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets = _Recent()
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - last) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may spend a request (0 when it may now)."""
        with self._lock:
            level = self._level(key, time.monotonic())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def spend(self, key: str) -> None:
        """Spend one request of ``key``'s bucket (it may go below empty)."""
        now = time.monotonic()
        with self._lock:
            self._buckets.put(key, (self._level(key, now) - 1.0, now))

    def take(self, key: str) -> None:
        """Spend one request of ``key``'s bucket; 429 with ``Retry-After`` when it is empty."""
        with self._lock:
            now = time.monotonic()
            level = self._level(key, now)
            if level < 1.0:
                raise too_many((1.0 - level) / self.rate, "too many requests")
            self._buckets.put(key, (level - 1.0, now))


class LoginThrottle:
    """Sign-in throttling that slows guessing without locking real users out for long.

    Failures are counted per (account, client address): after ``free_failures`` of them each
    further attempt from that address for that account must wait ``backoff_s``, doubled with
    every further failure up to ``backoff_max_s``; a success clears the count. The real user
    signing in from another address is never affected, and from the same address waits at most
    ``backoff_max_s``. Each address also has a looser budget of failures across all accounts
    (``address_burst`` at once, ``address_per_minute`` back), against trying one password on
    many accounts. Attempts that are turned away are not counted, so hammering never extends a
    wait. Addresses are keyed by :func:`client_key`.
    """

    def __init__(
        self,
        free_failures: int,
        backoff_s: float,
        backoff_max_s: float,
        address_burst: int,
        address_per_minute: float,
    ) -> None:
        self.free_failures = free_failures
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._pairs = _Recent()  # (account, address) -> (failures, time of the last one)
        self._addresses = RateLimiter(address_per_minute, address_burst)
        self._lock = threading.Lock()

    def _backoff(self, failures: float) -> float:
        extra = failures - self.free_failures
        return 0.0 if extra <= 0 else min(self.backoff_max_s, self.backoff_s * 2 ** (extra - 1))

    def check(self, account: str, address: str | None) -> None:
        """Refuse an attempt that must wait: 429 ``rate_limited`` with ``Retry-After``."""
        key = client_key(address)
        with self._lock:
            failures, last = self._pairs.get((account, key), (0, 0.0))
        wait = max(last + self._backoff(failures) - time.monotonic(), self._addresses.wait(key))
        if wait > 0:
            raise too_many(wait, "too many failed sign-ins")

    def failed(self, account: str, address: str | None) -> None:
        """Count a failed attempt (wrong password or unknown account)."""
        key = client_key(address)
        with self._lock:
            failures, _ = self._pairs.get((account, key), (0, 0.0))
            self._pairs.put((account, key), (failures + 1, time.monotonic()))
        self._addresses.spend(key)

    def succeeded(self, account: str, address: str | None) -> None:
        """Forget the failures of this account from this address."""
        with self._lock:
            self._pairs.pop((account, client_key(address)), None)


__all__ = [
    "ECHO_LIMIT",
    "MAX_KEYS",
    "MESSAGE_LIMIT",
    "ApiError",
    "LoginThrottle",
    "Principal",
    "RateLimiter",
    "bearer_token",
    "client_key",
    "echo",
    "too_many",
]
