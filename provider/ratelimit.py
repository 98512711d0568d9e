"""Throttles built on `limits`: login failures per account and per client address.

Growing waits, never a lockout: each tier (e.g. 5/minute, 20/hour, 100/day) that is
exhausted makes the caller wait until its window frees a slot, answered with 429 and
Retry-After. Only failures count, and a success clears the account's count. The
account key is the submitted identifier, whether or not such a user exists, so a 429
reveals nothing. Memory storage per process by default; Redis (PROVIDER_REDIS_URL)
makes the limits hold across workers and hosts.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


def _key(value: str) -> str:
    # Identifiers may be emails: keep them out of Redis keys in clear text.
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


class Throttle:
    """A named set of tiers; ``retry_after`` says how long until another try is allowed."""

    def __init__(self, limiter: MovingWindowRateLimiter, name: str, tiers: str) -> None:
        self._limiter = limiter
        self._name = name
        self._tiers: Sequence[RateLimitItem] = parse_many(tiers) if tiers else []

    async def retry_after(self, identifier: str) -> int | None:
        """Seconds to wait when any tier is exhausted, else None."""
        key = _key(identifier)
        wait = 0.0
        for tier in self._tiers:
            if not await self._limiter.test(tier, self._name, key):
                stats = await self._limiter.get_window_stats(tier, self._name, key)
                wait = max(wait, stats.reset_time - time.time())
        return max(1, math.ceil(wait)) if wait > 0 else None

    async def hit(self, identifier: str) -> None:
        key = _key(identifier)
        for tier in self._tiers:
            await self._limiter.hit(tier, self._name, key)

    async def clear(self, identifier: str) -> None:
        key = _key(identifier)
        for tier in self._tiers:
            await self._limiter.clear(tier, self._name, key)


class Throttles:
    """Every throttle of the process, on one storage."""

    def __init__(self, storage_url: str | None, *, login_account: str, login_address: str,
                 email_code: str = "", registration: str = "") -> None:
        url = _async_storage_url(storage_url)
        storage = storage_from_string(url)
        if not isinstance(storage, Storage):
            raise ValueError(f"not an async rate-limit storage: {url}")
        self.storage = storage
        limiter = MovingWindowRateLimiter(self.storage)
        self.login_account = Throttle(limiter, "login-account", login_account)
        self.login_address = Throttle(limiter, "login-address", login_address)
        self.email_code = Throttle(limiter, "email-code", email_code)
        self.registration = Throttle(limiter, "registration", registration)


def _async_storage_url(url: str | None) -> str:
    if not url:
        return "async+memory://"
    if url.startswith(("redis://", "rediss://", "redis+unix://")):
        return "async+" + url
    return url
