"""A polite HTTP GET for public services: one shared rate limit, timeouts, retries with backoff.

SkyServer publishes a limit of 60 queries a minute per client and sometimes answers with a
transient 5xx or an HTML error page under status 200, so every request of a fetch (SQL
queries and cutouts, from every worker thread) goes through one ``PoliteClient``.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

USER_AGENT = "skyedge-fetch/0.1 (Python urllib)"
# 408 and 429 are the server asking us to come back later, not a verdict on the request.
RETRYABLE_4XX = (408, 429)
MAX_RETRY_AFTER_S = 60.0


class InvalidBody(ValueError):
    """A response body that arrived complete but is not what was asked for (retried)."""


class RequestFailed(Exception):
    """A request that failed for good.

    Attributes:
        url: the URL requested.
        reason: one line saying why (the last attempt's error).
        attempts: how many times it was sent.
        status: the HTTP status of the last answer, or None when there was none.
    """

    def __init__(self, url: str, reason: str, attempts: int, status: int | None = None):
        super().__init__(f"{url}: {reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.url = url
        self.reason = reason
        self.attempts = attempts
        self.status = status


class Unreachable(Exception):
    """No connection could be made and the service has not answered once in this session."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class Stopped(Exception):
    """The client was stopped (Ctrl-C, or another worker hit a fatal error)."""


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart across all threads."""

    def __init__(self, rate: float, stop: threading.Event):
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/second, got {rate}")
        self.interval = 1.0 / rate
        self._stop = stop
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        """Block until this caller's slot comes.

        Raises:
            Stopped: the stop event was set while waiting.
        """
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        # Waiting on the event rather than sleeping lets Ctrl-C stop every worker at once.
        if self._stop.wait(max(0.0, slot - now)) or self._stop.is_set():
            raise Stopped()


class PoliteClient:
    """Thread-safe GET with a shared rate limit, per-request timeout and retries.

    Retried: 5xx, 408, 429, timeouts, dropped connections, truncated bodies and bodies the
    ``check`` callable rejects. Not retried: other 4xx. Before the service has answered once,
    a connection failure (DNS, refused) raises ``Unreachable`` at once: an offline user
    should hear so in a second, not after minutes of backoff.
    """

    def __init__(self, rate: float, timeout: float, retries: int, backoff: float, seed: int = 0,
                 stop: threading.Event | None = None):
        """Create a client.

        Args:
            rate: requests per second for all threads together.
            timeout: seconds per attempt (connect and each read).
            retries: extra attempts after the first.
            backoff: seconds before the first retry, doubled for each further one, plus up
                to 25% jitter from a generator seeded with ``seed``.
            seed: seed of the jitter.
            stop: an event that, once set, makes waiting requests raise ``Stopped``.
        """
        self.stop = stop or threading.Event()
        self.limiter = RateLimiter(rate, self.stop)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._reached = False
        self.requests = 0

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self._lock:
            jitter = self._rng.random() * 0.25
        delay = self.backoff * (2 ** (attempt - 1)) * (1.0 + jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    def _send(self, url: str) -> bytes:
        with self._lock:
            self.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            self._reached = True
            return response.read()

    def get(self, url: str, check: Callable[[bytes], None] | None = None) -> tuple[bytes, int]:
        """GET ``url`` and return ``(body, attempts)``.

        Args:
            url: the full URL.
            check: called with a complete 200 body; raising ``InvalidBody`` marks the answer
                as a transient failure to retry.

        Returns:
            The body that passed ``check`` and how many attempts it took.

        Raises:
            RequestFailed: a 4xx other than 408/429, or every attempt failed.
            Unreachable: no connection before the service ever answered.
            Stopped: the client was stopped.
        """
        attempts = self.retries + 1
        reason, status = "not sent", None
        for attempt in range(1, attempts + 1):
            self.limiter.wait()
            retry_after = None
            try:
                body = self._send(url)
                if check is not None:
                    check(body)
                return body, attempt
            except urllib.error.HTTPError as exc:
                self._reached = True
                status = exc.code
                reason = f"HTTP {exc.code} {exc.reason}"
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                exc.close()
                if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
                    raise RequestFailed(url, reason, attempt, status) from None
            except InvalidBody as exc:
                status, reason = 200, f"invalid body: {exc}"
            except http.client.IncompleteRead as exc:
                status = 200
                reason = f"truncated body ({len(exc.partial)} bytes, {exc.expected} more expected)"
            except urllib.error.URLError as exc:
                status = None
                if isinstance(exc.reason, TimeoutError):
                    reason = f"timed out after {self.timeout:g} s"
                elif not self._reached:
                    raise Unreachable(url, str(exc.reason)) from None
                else:
                    reason = f"connection failed ({exc.reason})"
            except TimeoutError:
                status, reason = None, f"timed out after {self.timeout:g} s"
            except (http.client.HTTPException, ConnectionError, OSError) as exc:
                status, reason = None, f"connection failed ({type(exc).__name__}: {exc})"
            if attempt < attempts and self.stop.wait(self._delay(attempt, retry_after)):
                raise Stopped()
        raise RequestFailed(url, reason, attempts, status)


def _retry_after(value: str | None) -> float | None:
    """Seconds of a numeric Retry-After header (the HTTP-date form is rare enough to ignore)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
