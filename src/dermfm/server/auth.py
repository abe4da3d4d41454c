"""Access control: bearer tokens (stored hashed by the database), roles and per-token rate
limits, with the error type every route raises."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


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


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user's name and role, and which token (its hash) they used."""

    name: str
    role: str
    token_hash: str

    @property
    def is_admin(self) -> bool:
        """Admins see every case and the audit log."""
        return self.role == "admin"


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header; 401 when there is none."""
    if not header:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


class RateLimiter:
    """Token buckets per key: ``burst`` requests at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one request of ``key``'s bucket; 429 with ``Retry-After`` when it is empty."""
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level < 1.0:
                wait = max(1, int((1.0 - level) / self.rate + 0.999))
                self._buckets[key] = (level, now)
                raise ApiError(
                    429,
                    "rate_limited",
                    f"too many requests: retry in {wait} s",
                    {"Retry-After": str(wait)},
                )
            self._buckets[key] = (level - 1.0, now)


__all__ = ["ApiError", "Principal", "RateLimiter", "bearer_token"]
