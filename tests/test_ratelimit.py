"""provider.ratelimit on both storages: memory, and the real Redis of
PROVIDER_TEST_REDIS_URL (127.0.0.1:6379 in CI; identifiers are unique per run).

Reservations are limits' atomic hits; a refused reservation holds nothing; a refund and
a wait read limits' own windows. Redis unreachable is ThrottleUnavailable, in bounded time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from pydantic import ValidationError

from provider.ratelimit import (
    LocalStorage,
    ThrottleConfig,
    Throttled,
    Throttles,
    ThrottleUnavailable,
    client_key,
)
from provider.services import throttle_config
from provider.settings import Settings

REDIS_URL = os.environ.get("PROVIDER_TEST_REDIS_URL")
REQUIRE_REDIS = os.environ.get("PROVIDER_TEST_REQUIRE_POSTGRES") == "1"

CONFIG = ThrottleConfig(
    login_account="5 per minute; 8 per hour",
    login_address="3 per minute",
    code_account="2 per minute",
)


def unique() -> str:
    return f"id-{secrets.token_hex(8)}"


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="session")
async def throttles(request: pytest.FixtureRequest) -> AsyncIterator[Throttles]:
    if request.param == "redis":
        if not REDIS_URL:
            if REQUIRE_REDIS:
                pytest.fail("PROVIDER_TEST_REDIS_URL is required in CI")
            pytest.skip("no PROVIDER_TEST_REDIS_URL")
        instance = Throttles(REDIS_URL, CONFIG)
    else:
        instance = Throttles(None, CONFIG)
    try:
        yield instance
    finally:
        await instance.close()


async def reserve_ok(throttles: Throttles, *slots: tuple[object, str]) -> bool:
    try:
        await throttles.reserve(*slots)  # type: ignore[arg-type]
    except Throttled:
        return False
    return True


async def test_parallel_reservations_take_exactly_the_free_slots(throttles: Throttles) -> None:
    name = unique()
    results = await asyncio.gather(*(reserve_ok(throttles, (throttles.login_account, name))
                                     for _ in range(50)))
    assert results.count(True) == 5
    wait = await throttles.login_account.wait(name)
    assert wait is not None and 1 <= wait <= 60


async def test_a_refused_reservation_holds_nothing(throttles: Throttles) -> None:
    """The address tier refuses after the account tier accepted: the account slot is
    given back, so the account is not charged for attempts that never ran."""
    name, address = unique(), unique()
    pair = ((throttles.login_account, name), (throttles.login_address, address))
    outcomes = [await reserve_ok(throttles, *pair) for _ in range(6)]
    assert outcomes == [True] * 3 + [False] * 3
    # Two more slots of the account are free (5 per minute, 3 used).
    assert [await reserve_ok(throttles, (throttles.login_account, name))
            for _ in range(3)] == [True, True, False]


async def test_throttled_carries_the_longest_wait(throttles: Throttles) -> None:
    name = unique()
    for _ in range(5):
        await throttles.login_account.reserve(name)
    with pytest.raises(Throttled) as refused:
        await throttles.login_account.reserve(name)
    assert 1 <= refused.value.retry_after <= 60


async def test_refund_gives_a_slot_back(throttles: Throttles) -> None:
    address = unique()
    for _ in range(3):
        await throttles.login_address.reserve(address)
    assert await throttles.login_address.wait(address) is not None
    await throttles.login_address.refund(address)
    assert await throttles.login_address.wait(address) is None
    assert await reserve_ok(throttles, (throttles.login_address, address))
    assert not await reserve_ok(throttles, (throttles.login_address, address))


async def test_parallel_refunds_and_reservations_keep_the_count(throttles: Throttles) -> None:
    """20 successes (reserve, then refund) at once with 3 failures (reserve): only the
    failures stay counted, whatever the interleaving."""
    wide = Throttles(REDIS_URL if throttles.is_shared else None,
                     ThrottleConfig(login_address="30 per minute"))
    tier, address = wide.login_address, unique()

    async def success() -> None:
        await tier.reserve(address)
        await tier.refund(address)

    try:
        await asyncio.gather(*([success() for _ in range(20)]
                               + [tier.reserve(address) for _ in range(3)]))
        assert [await reserve_ok(wide, (tier, address)) for _ in range(28)] == \
            [True] * 27 + [False]
    finally:
        await wide.close()


async def test_clear_frees_every_tier(throttles: Throttles) -> None:
    name = unique()
    for _ in range(5):
        await throttles.login_account.reserve(name)
    await throttles.login_account.clear(name)
    assert await throttles.login_account.wait(name) is None
    assert await reserve_ok(throttles, (throttles.login_account, name))


async def test_identifiers_are_hashed_and_case_folded(throttles: Throttles) -> None:
    name = f"Person.{secrets.token_hex(4)}@Example.COM"
    await throttles.code_account.reserve(name)
    await throttles.code_account.reserve(name.lower())
    assert await throttles.code_account.wait(f"  {name.upper()} ") is not None


async def test_unreachable_redis_is_unavailable_within_the_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    unreachable = Throttles(f"redis://127.0.0.1:{port}/0", CONFIG,
                            timeout=timedelta(seconds=1))
    started = time.monotonic()
    for call in (unreachable.login_account.reserve(unique()),
                 unreachable.login_account.wait(unique()),
                 unreachable.login_account.refund(unique()),
                 unreachable.login_account.clear(unique())):
        with pytest.raises(ThrottleUnavailable):
            await call
    assert time.monotonic() - started < 10
    await unreachable.close()


async def test_a_silent_redis_is_unavailable_within_the_bound() -> None:
    """A server that accepts connections and never answers (a frozen Redis): bounded."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    silent = Throttles(f"redis://127.0.0.1:{port}/0", CONFIG, timeout=timedelta(seconds=1))
    try:
        started = time.monotonic()
        with pytest.raises(ThrottleUnavailable):
            await silent.login_account.reserve(unique())
        assert time.monotonic() - started < 10
    finally:
        server.close()
        await silent.close()


def test_storage_keys_are_the_keys_limits_builds() -> None:
    throttles = Throttles(None, ThrottleConfig(client_auth="10 per minute; 100 per 2 hours"))
    name = unique()
    assert throttles.client_auth.storage_keys(name) == [
        (tier, tier.key_for("client-auth", key))
        for tier, key in throttles.client_auth.windows(name)]


async def test_local_storage_expires_old_entries_in_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-process storage drops entries older than their window, keeps the rest, and
    never hands the work to a thread (limits' own expiry did, per key, after every hit)."""
    def no_threads(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("expiry must not use a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    storage = LocalStorage()
    storage.EXPIRE_EVERY_S = 0.0
    assert await storage.acquire_entry("long", 2, 60)
    assert await storage.acquire_entry("long", 2, 60)
    assert not await storage.acquire_entry("long", 2, 60)  # the window is full
    assert await storage.acquire_entry("short", 5, 0)  # expired as soon as the clock moves
    await asyncio.sleep(0.01)
    assert await storage.acquire_entry("other", 5, 60)  # a hit runs the expiry
    assert "short" not in storage.events
    assert len(storage.events["long"]) == 2
    assert not await storage.acquire_entry("long", 2, 60)  # still full
    assert await storage.acquire_entry("long", 3, 60)  # a larger window still has room


async def test_memory_throttles_use_the_local_storage() -> None:
    throttles = Throttles(None, ThrottleConfig(client_auth="2 per minute"))
    assert isinstance(throttles.storage, LocalStorage)
    await throttles.reserve((throttles.client_auth, "client\n203.0.113.9"))
    await throttles.reserve((throttles.client_auth, "client\n203.0.113.9"))
    with pytest.raises(Throttled):
        await throttles.reserve((throttles.client_auth, "client\n203.0.113.9"))


@pytest.mark.parametrize(("address", "prefix", "expected"), [
    # IPv4 addresses count one by one; an IPv4-mapped IPv6 address is its IPv4 one.
    ("203.0.113.9", 64, "203.0.113.9"),
    ("::ffff:203.0.113.9", 64, "203.0.113.9"),
    # IPv6: the network of `prefix` bits, however the address is written.
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
    ("2001:0DB8:0001:0002::1", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1%eth0", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2ff:aaaa::1", 56, "2001:db8:1:200::/56"),
    ("2001:db8:1:2::1", 128, "2001:db8:1:2::1/128"),
    ("::1", 64, "::/64"),
    # An IPv6 form of one IPv4 host is that host: NAT64's well-known prefix, the
    # IPv4-translated form, 6to4 (one IPv4 host's 2^16 networks) and Teredo.
    ("64:ff9b::198.51.100.7", 64, "198.51.100.7"),
    ("::ffff:0:198.51.100.7", 64, "198.51.100.7"),
    ("2002:c000:204:1::1", 64, "192.0.2.4"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", 64, "192.0.2.45"),
    # Not an address (no peer): as it is.
    ("unknown", 64, "unknown"),
    ("not:an:address", 64, "not:an:address"),
])
def test_client_key_counts_an_ipv6_client_by_its_network(
    address: str, prefix: int, expected: str
) -> None:
    assert client_key(address, prefix) == expected


def test_the_ipv6_prefix_setting_reaches_the_throttles() -> None:
    def configured(prefix: int) -> Settings:
        return Settings(_env_file=None, env="test",  # type: ignore[call-arg]
                        throttle_ipv6_prefix=prefix)

    assert throttle_config(configured(56)).ipv6_prefix == 56
    for outside in (31, 129):
        with pytest.raises(ValidationError):
            configured(outside)


async def test_addresses_of_one_ipv6_network_share_the_per_address_slots() -> None:
    config = ThrottleConfig(login_address="3 per minute", ipv6_prefix=64)
    throttles = Throttles(None, config)
    high, low = secrets.randbelow(65536), secrets.randbelow(65535)
    network = f"2001:db8:{high:x}:{low:x}"
    try:
        for host in range(1, 4):
            await throttles.login_address.reserve(throttles.client(f"{network}::{host:x}"))
        with pytest.raises(Throttled):
            await throttles.login_address.reserve(throttles.client(f"{network}::ffff"))
        # The next /64 is another client.
        neighbour = f"2001:db8:{high:x}:{low + 1:x}::1"
        await throttles.login_address.reserve(throttles.client(neighbour))
    finally:
        await throttles.close()
