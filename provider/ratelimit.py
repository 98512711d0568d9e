"""Throttles built on `limits` that reserve before they check.

Every throttle takes its slot with limits' atomic moving-window hit *before* the work it
guards (an argon2 verify, a code comparison, a mail), so N parallel attempts count
exactly like N sequential ones: of 50 parallel wrong passwords, as many get through as
the tiers allow, the rest wait. Tiers (e.g. 5/minute; 20/hour; 100/day) make the waits
grow, answered with 429 and Retry-After; nothing is a permanent lockout.

Where only failures should count, a success gives its slot back (``refund``): the newest
entry of each tier's window is removed atomically (LPOP in Redis, under the key's lock
in memory). Removing the newest rather than "ours" changes no count, only when that one
slot frees: by the few milliseconds between two parallel hits.

Memory storage per process by default; Redis (PROVIDER_REDIS_URL) makes the limits hold
across workers and hosts. Redis unreachable: every throttled request fails closed with
``ThrottleUnavailable`` (503) within ``timeout``, never a 500 or a hang.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Any, TypeVar

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.memory import Entry
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

T = TypeVar("T")

# One round trip for "is any of these windows full, and for how long": the entry at
# index limit-1 of a moving window (newest first, as limits keeps it) is the one whose
# expiry frees the next slot.
_WAIT_SCRIPT = """
local now = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    local entry = redis.call('lindex', key, limit - 1)
    if entry and tonumber(entry) >= now - expiry then
        wait = math.max(wait, tonumber(entry) + expiry - now)
    end
end
return tostring(wait)
"""
# Give back one slot in each window: drop its newest entry.
_REFUND_SCRIPT = """
for _, key in ipairs(KEYS) do
    redis.call('lpop', key)
end
return 0
"""


class ThrottleUnavailable(Exception):
    """The rate-limit storage (Redis) did not answer in time: fail closed (503)."""


class Throttled(Exception):
    """No slot: try again in ``retry_after`` seconds (nothing was reserved)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"throttled for {retry_after} s")
        self.retry_after = retry_after


STORAGE_KEYS_CACHED = 4096
MEMORY_URL = "async+memory://"


# IPv6 forms of one IPv4 host, which count as that host: the NAT64 well-known prefix
# (RFC 6052) and the IPv4-translated form (RFC 6145) carry it in their low 32 bits; the
# mapped form, 6to4 and Teredo are read by ipaddress.
_IPV4_IN_LOW_BITS = (IPv6Network("64:ff9b::/96"), IPv6Network("::ffff:0:0:0/96"))


@functools.lru_cache(maxsize=STORAGE_KEYS_CACHED)
def client_key(address: str, ipv6_prefix: int) -> str:
    """What a client address is counted under: an IPv4 address as it is, and so is an
    IPv6 address that stands for one IPv4 host (mapped, NAT64, 6to4, Teredo); any other
    IPv6 address by its network of ``ipv6_prefix`` bits, since one subscriber's /64
    offers 2^64 fresh starts. Anything else ("unknown") as it is."""
    try:
        ip = ip_address(address)
    except ValueError:
        return address
    if not isinstance(ip, IPv6Address):
        return address
    host = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if host is None and any(ip in network for network in _IPV4_IN_LOW_BITS):
        host = IPv4Address(int(ip) & 0xFFFFFFFF)
    if host is not None:
        return str(host)
    host_bits = 128 - ipv6_prefix
    network = IPv6Address(int(ip) >> host_bits << host_bits)
    return f"{network}/{ipv6_prefix}"


def parse_tiers(tiers: str) -> list[RateLimitItem]:
    """A throttle's tiers from limits' syntax (``"5 per minute; 20 per hour"``); an
    empty string is no tier (the throttle is off). Raises ValueError naming the fault."""
    return list(parse_many(tiers)) if tiers.strip() else []


def _key(value: str) -> str:
    # Identifiers may be emails: keep them out of Redis keys in clear text.
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


class Throttle:
    """A named set of tiers on the shared storage of ``Throttles``."""

    def __init__(self, owner: Throttles, name: str, tiers: str) -> None:
        self._owner = owner
        self.name = name
        self.tiers: Sequence[RateLimitItem] = parse_tiers(tiers)
        # limits' storage key of each tier is head + identifier + tail (what
        # ``tier.key_for(name, key)`` builds): made once, as the token path reads them.
        self._keys = [(tier, f"{tier.namespace}/{name}/",
                       f"/{tier.amount}/{tier.multiples}/{tier.GRANULARITY.name}")
                      for tier in self.tiers]
        # identifier -> its storage keys: the same clients and addresses come back on
        # every request. Bounded: emptied when full, so many identifiers cost nothing more.
        self._storage_keys: dict[str, list[tuple[RateLimitItem, str]]] = {}

    def windows(self, identifier: str) -> list[tuple[RateLimitItem, str]]:
        key = _key(identifier)
        return [(tier, key) for tier in self.tiers]

    def storage_keys(self, identifier: str) -> list[tuple[RateLimitItem, str]]:
        keys = self._storage_keys.get(identifier)
        if keys is None:
            key = _key(identifier)
            keys = [(tier, head + key + tail) for tier, head, tail in self._keys]
            if len(self._storage_keys) >= STORAGE_KEYS_CACHED:
                self._storage_keys.clear()
            self._storage_keys[identifier] = keys
        return keys

    async def reserve(self, identifier: str) -> None:
        """Take a slot in every tier, or raise Throttled holding none."""
        await self._owner.reserve((self, identifier))

    async def refund(self, identifier: str) -> None:
        """Give the slot of a success back (where only failures count)."""
        await self._owner.refund((self, identifier))

    async def clear(self, identifier: str) -> None:
        await self._owner.clear((self, identifier))

    async def wait(self, identifier: str) -> int | None:
        """Seconds until a slot frees when any tier is full, else None (reserves nothing)."""
        return await self._owner.wait((self, identifier))


Slot = tuple[Throttle, str]


@dataclass(frozen=True)
class ThrottleConfig:
    """Tiers of each throttle, in limits' syntax (``"5 per minute; 20 per hour"``)."""

    login_account: str = ""
    login_address: str = ""
    email_code: str = ""
    email_notice: str = ""
    registration: str = ""
    email_change: str = ""
    client_auth: str = ""
    client_auth_address: str = ""
    code_account: str = ""
    code_address: str = ""
    mfa_account: str = ""
    # Bits of an IPv6 client address that make one client (client_key).
    ipv6_prefix: int = 64


class Throttles:
    """Every throttle of the process, on one storage."""

    def __init__(self, storage_url: str | None, config: ThrottleConfig, *,
                 timeout: timedelta = timedelta(seconds=2)) -> None:
        url = _async_storage_url(storage_url)
        self._timeout = timeout.total_seconds()
        options: dict[str, Any] = {}
        if url.startswith("async+redis"):
            # Bounded connect and reads: an unreachable or frozen Redis gives a 503 in
            # seconds, never a hang.
            options = {"connect_timeout": self._timeout, "stream_timeout": self._timeout}
        storage: Any = (LocalStorage(url, wrap_exceptions=True) if url == MEMORY_URL
                        else storage_from_string(url, wrap_exceptions=True, **options))
        if not isinstance(storage, Storage):
            raise ValueError(f"not an async rate-limit storage: {url}")
        self.storage = storage
        self.is_shared = not isinstance(storage, MemoryStorage)
        self._limiter = MovingWindowRateLimiter(storage)
        self._redis: Any = None
        if isinstance(storage, RedisStorage):
            self._redis = storage.bridge
            connection = self._redis.get_connection()
            self._wait_script = connection.register_script(_WAIT_SCRIPT)
            self._refund_script = connection.register_script(_REFUND_SCRIPT)
        elif not isinstance(storage, MemoryStorage):
            raise ValueError(f"unsupported rate-limit storage: {url} (memory or Redis)")
        self.login_account = Throttle(self, "login-account", config.login_account)
        self.login_address = Throttle(self, "login-address", config.login_address)
        # Mails per target address: codes, and notices in a window of their own.
        self.email_code = Throttle(self, "email-code", config.email_code)
        self.email_notice = Throttle(self, "email-notice", config.email_notice)
        self.registration = Throttle(self, "registration", config.registration)
        self.email_change = Throttle(self, "email-change", config.email_change)
        # Client authentication failures per (client_id, address) and per address.
        self.client_auth = Throttle(self, "client-auth", config.client_auth)
        self.client_auth_address = Throttle(self, "client-auth-address",
                                            config.client_auth_address)
        # Email-code submissions per client address; wrong codes per account.
        self.code_account = Throttle(self, "code-account", config.code_account)
        self.code_address = Throttle(self, "code-address", config.code_address)
        # Wrong second-factor codes per user (provider.mfa.service).
        self.mfa_account = Throttle(self, "mfa-account", config.mfa_account)
        self._ipv6_prefix = config.ipv6_prefix

    def client(self, address: str) -> str:
        """The identifier of a client address in every per-address throttle."""
        if ":" not in address:
            return address  # IPv4 (the token path's usual case): no parsing, no cache
        return client_key(address, self._ipv6_prefix)

    # --- the operations ------------------------------------------------------------------

    async def reserve(self, *slots: Slot) -> None:
        """Take one slot in every tier of every throttle, in order, each with limits'
        atomic hit; when one is refused, give back those already taken and raise
        Throttled: a refused attempt holds nothing and counts nowhere."""
        taken: list[tuple[RateLimitItem, str, str]] = []
        for throttle, identifier in slots:
            for tier, key in throttle.windows(identifier):
                if not await self._bounded(self._limiter.hit(tier, throttle.name, key)):
                    await self._refund_windows(taken)
                    raise Throttled(await self.wait(*slots) or 1)
                taken.append((tier, throttle.name, key))

    async def refund(self, *slots: Slot) -> None:
        await self._refund_windows([(tier, throttle.name, key) for throttle, identifier in slots
                                    for tier, key in throttle.windows(identifier)])

    async def clear(self, *slots: Slot) -> None:
        for throttle, identifier in slots:
            for tier, key in throttle.windows(identifier):
                if isinstance(self.storage, MemoryStorage):
                    # Emptied under the key's lock rather than popped (limits' clear): its
                    # expiry task reads the key after taking that lock, and would fail.
                    full_key = tier.key_for(throttle.name, key)
                    async with self.storage.locks[full_key]:
                        if full_key in self.storage.events:
                            self.storage.events[full_key] = []
                else:
                    await self._bounded(self._limiter.clear(tier, throttle.name, key))

    async def wait(self, *slots: Slot) -> int | None:
        """Seconds until every full window of ``slots`` frees a slot; None when none is
        full. One round trip to Redis whatever the number of tiers."""
        windows = [window for throttle, identifier in slots
                   for window in throttle.storage_keys(identifier)]
        if not windows:
            return None
        now = time.time()
        if isinstance(self.storage, MemoryStorage):
            seconds = 0.0
            for tier, key in windows:
                events = self.storage.events.get(key, [])
                if len(events) >= tier.amount:
                    entry = events[tier.amount - 1]
                    if entry.atime >= now - tier.get_expiry():
                        seconds = max(seconds, entry.atime + tier.get_expiry() - now)
        else:
            args: list[Any] = [repr(now)]
            for tier, _ in windows:
                args += [tier.amount, tier.get_expiry()]
            keys = [self._redis.prefixed_key(key) for _, key in windows]
            seconds = float(await self._bounded(self._wait_script(keys=keys, args=args)))
        return max(1, math.ceil(seconds)) if seconds > 0 else None

    # --- helpers ------------------------------------------------------------------------

    async def _refund_windows(self, windows: Sequence[tuple[RateLimitItem, str, str]]) -> None:
        keys = [tier.key_for(name, key) for tier, name, key in windows]
        if not keys:
            return
        if isinstance(self.storage, MemoryStorage):
            for key in keys:
                async with self.storage.locks[key]:
                    events = self.storage.events.get(key)
                    if events:
                        del events[0]
        else:
            await self._bounded(self._refund_script(
                keys=[self._redis.prefixed_key(key) for key in keys], args=[]))

    async def _bounded(self, call: Awaitable[T]) -> T:
        """One storage call, bounded in time; any storage failure is ThrottleUnavailable.
        The process's own memory has no time to bound (its calls never wait on I/O)."""
        if not self.is_shared:
            return await call
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (StorageError, TimeoutError, OSError) as exc:
            raise ThrottleUnavailable(type(exc).__name__) from exc
        except Exception as exc:
            if self._redis is not None and isinstance(exc, self._redis.base_exceptions):
                raise ThrottleUnavailable(type(exc).__name__) from exc
            raise

    async def close(self) -> None:
        """Close the Redis connections (the app's lifespan ends with it)."""
        if self._redis is not None:
            self._redis.get_connection().connection_pool.disconnect()
            await asyncio.sleep(0)  # the transports close on the loop's next turn


class LocalStorage(MemoryStorage):
    """limits' in-process moving-window storage, expiring old entries without threads.

    limits' own expiry runs after every hit that finds it idle and walks every key,
    handing each key's bisect to a worker thread: under a stream of sign-ins it ran back
    to back, several thread round trips per request (bench/README.md). Here the same
    walk runs in the event loop, at most once per ``EXPIRE_EVERY_S``. An entry is only
    dropped once it is older than its own window, so what each window counts is the same.
    """

    EXPIRE_EVERY_S = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False,
                 **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._expired_at = time.monotonic()

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        self._expire()
        # limits' own body, without its expiry: no await between the check and the write.
        timestamp = time.time()
        events = self.events.setdefault(key, [])
        entry = events[limit - amount] if len(events) > limit - amount else None
        if entry is not None and entry.atime >= timestamp - expiry:
            return False
        events[:0] = [Entry(expiry)] * amount
        return True

    def _expire(self) -> None:
        if time.monotonic() - self._expired_at < self.EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        now = time.time()
        for key in list(self.events):
            # Newest first; the expired ones are at the end.
            events = self.events[key]
            live = bisect.bisect_left(events, -now, key=lambda event: -event.expiry)
            if live:
                del events[live:]
            else:
                del self.events[key]
                self.locks.pop(key, None)


def _async_storage_url(url: str | None) -> str:
    if not url:
        return MEMORY_URL
    if url.startswith(("redis://", "rediss://", "redis+unix://")):
        return "async+" + url
    return url
