"""Password policy (length, NFKC, blocklist, email) and hashing (argon2id, bcrypt import)."""

from __future__ import annotations

import asyncio
import threading
import unicodedata

import anyio
import bcrypt
import pytest

from provider.passwords import (
    MAX_PASSWORD_LENGTH,
    PasswordHasher,
    WeakPassword,
    check_password_policy,
    common_passwords,
    normalize_password,
)
from provider.settings import Settings

# Not on the blocklist, no pattern worth rejecting: the base of the length tests.
STRONG = "Qv7-oxbow-tangerine-quill"


@pytest.fixture
def settings() -> Settings:
    # Small argon2 parameters: these tests are about behaviour, not cost.
    return Settings(argon2_memory_cost=1024, argon2_time_cost=1)


@pytest.fixture
def hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(settings)


def exactly(length: int) -> str:
    return (STRONG * (length // len(STRONG) + 1))[:length]


def fullwidth(text: str) -> str:
    """The same ASCII text typed in fullwidth forms (U+FF01..U+FF5E), as CJK keyboards do."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# --- policy: length ------------------------------------------------------------------


def test_policy_rejects_password_shorter_than_minimum() -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(exactly(7), min_length=8)
    error = caught.value
    assert error.body() == {
        "type": "about:blank",
        "title": "The password does not meet the policy.",
        "status": 422,
        "code": "weak_password",
        "detail": "The password must be at least 8 characters long.",
    }


def test_policy_names_configured_minimum() -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(exactly(14), min_length=15)
    assert caught.value.detail == "The password must be at least 15 characters long."


@pytest.mark.parametrize("length", [8, 64, MAX_PASSWORD_LENGTH])
def test_policy_accepts_length_within_bounds(length: int) -> None:
    password = exactly(length)
    assert check_password_policy(password, min_length=8) == password


async def test_policy_rejects_password_longer_than_maximum_before_hashing(
    hasher: PasswordHasher,
) -> None:
    password = exactly(MAX_PASSWORD_LENGTH + 1)
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(password, min_length=8)
    assert caught.value.detail == "The password must be at most 1024 characters long."
    # The hasher refuses it too, rather than hashing (or truncating) it.
    with pytest.raises(WeakPassword):
        await hasher.hash(password)
    with pytest.raises(WeakPassword):
        hasher.hash_sync(password)


def test_policy_counts_length_as_typed_and_after_normalisation() -> None:
    # U+FDFA is one code point that NFKC expands to 18 ("ﷺ" -> an Arabic phrase): one
    # character typed is one character to guess.
    assert len(normalize_password("\ufdfa")) == 18
    with pytest.raises(WeakPassword, match="at least 8"):
        check_password_policy("\ufdfa", min_length=8)
    assert (check_password_policy("\ufdfa" * 8, min_length=8)
            == normalize_password("\ufdfa" * 8))
    # 1011 code points typed, 1011 + 17 after NFKC: too long.
    with pytest.raises(WeakPassword, match="at most 1024"):
        check_password_policy("\ufdfa" + exactly(1010), min_length=8)
    # Decomposed accents compose: 8 code points typed, 4 after NFKC.
    with pytest.raises(WeakPassword, match="at least 8"):
        check_password_policy("e\u0301" * 4, min_length=8)


def test_policy_counts_emoji_as_code_points() -> None:
    key = "\N{KEY}"  # 1 code point, 4 UTF-8 bytes
    assert check_password_policy(key * 8, min_length=8) == key * 8
    with pytest.raises(WeakPassword, match="at least 8"):
        check_password_policy(key * 7, min_length=8)
    # A thumbs-up with a skin tone is 2 code points: 4 of them are 8.
    thumbs = "\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"
    assert check_password_policy(thumbs * 4, min_length=8) == thumbs * 4


def test_policy_does_not_require_character_classes() -> None:
    for password in ("correcthorsebatterystaple", "88889999000011", "éèêëéèêëà"):
        assert check_password_policy(password, min_length=8) == normalize_password(password)


def test_policy_rejects_unencodable_password() -> None:
    with pytest.raises(WeakPassword, match="not valid Unicode"):
        check_password_policy("abc\ud800defgh", min_length=8)


@pytest.mark.parametrize("control", ["\x00", "\x01", "\t", "\x7f", "\x9b"])
def test_policy_rejects_control_characters(control: str) -> None:
    """NUL cannot reach a sign-in (the forms refuse it), and no control character can be
    typed: a password holding one would be set and then never usable."""
    with pytest.raises(WeakPassword, match="control characters"):
        check_password_policy(f"juniper{control}lantern quay", min_length=8)


# --- policy: normalisation ------------------------------------------------------------


def test_normalize_maps_fullwidth_to_ascii() -> None:
    typed = "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44\uff11\uff12\uff13\uff14"
    assert typed == fullwidth("password1234")
    assert normalize_password(typed) == "password1234"


def test_normalize_composes_decomposed_accents() -> None:
    assert normalize_password("cafe\u0301-terrasse") == "caf\u00e9-terrasse"
    assert normalize_password("\u212bngstr\u00f6m-lab") == "\u00c5ngstr\u00f6m-lab"


def test_policy_returns_normalised_password() -> None:
    assert check_password_policy(fullwidth("tangerine-oxbow"), min_length=8) == "tangerine-oxbow"


# --- policy: blocklist and email ------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    ["password", "123456789", "Password1", "PASSWORD1", "iloveyou", "qwertyuiop", "#1stunna"],
)
def test_policy_rejects_common_password_case_insensitively(password: str) -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(password, min_length=8)
    assert caught.value.detail == (
        "The password is on a list of commonly used or breached passwords; choose a different one."
    )


def test_policy_checks_blocklist_after_normalisation() -> None:
    with pytest.raises(WeakPassword, match="commonly used or breached"):
        check_password_policy(fullwidth("Password1"), min_length=8)


@pytest.mark.parametrize("password", ["password\u00a0", " Password1", "qwerty123\u3000",
                                      "password\u200b", "pass\u00adword", "\u200bqwerty123",
                                      "\ufeffletmein1"])
def test_policy_checks_blocklist_without_spaces_around_or_invisible_characters(
    password: str,
) -> None:
    # A no-break space (U+00A0) or an ideographic one (U+3000) becomes a plain space
    # under NFKC; a zero-width space, a soft hyphen or a BOM is not seen: still a common
    # password.
    with pytest.raises(WeakPassword, match="commonly used or breached"):
        check_password_policy(password, min_length=8)


def test_policy_rejects_email_local_part_with_spaces_around_it() -> None:
    with pytest.raises(WeakPassword, match="local part"):
        check_password_policy("alice.liddell\u00a0", min_length=8,
                              email="alice.liddell@example.com")


def test_policy_checks_blocklist_on_whole_password_only() -> None:
    # Contains "password" but is not itself on the list: no substring matching.
    password = "password-tangerine-oxbow"
    assert check_password_policy(password, min_length=8) == password


def test_blocklist_has_at_least_ten_thousand_lowercase_entries() -> None:
    passwords = common_passwords()
    assert len(passwords) >= 10_000
    assert {"123456", "password", "qwerty", "letmein"} <= passwords
    assert not any(line.startswith("# ") for line in passwords)  # header stripped
    assert common_passwords() is passwords  # loaded once


def test_policy_rejects_email_local_part() -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy("Alice.Liddell", min_length=8, email="alice.liddell@example.com")
    assert caught.value.detail == (
        "The password must not be the same as your email's local part (the part before the @)."
    )


def test_policy_rejects_whole_email() -> None:
    with pytest.raises(WeakPassword) as caught:
        check_password_policy(
            "Alice.Liddell@Example.com", min_length=8, email="alice.liddell@example.com"
        )
    assert caught.value.detail == "The password must not be the same as your email address."


def test_policy_accepts_password_containing_local_part() -> None:
    password = "alice.liddell-tangerine"
    email = "alice.liddell@example.com"
    assert check_password_policy(password, min_length=8, email=email) == password


def test_policy_reports_first_failed_rule() -> None:
    # Short and on the list: length is reported (the cheaper, clearer rule).
    with pytest.raises(WeakPassword, match="at least 8"):
        check_password_policy("abc123", min_length=8)


# --- hashing --------------------------------------------------------------------------


async def test_hash_then_verify_roundtrip(hasher: PasswordHasher) -> None:
    password_hash = await hasher.hash(STRONG)
    assert password_hash.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await hasher.verify(STRONG, password_hash) == (True, None)


async def test_hash_is_salted(hasher: PasswordHasher) -> None:
    assert await hasher.hash(STRONG) != await hasher.hash(STRONG)


async def test_verify_wrong_password_is_false(hasher: PasswordHasher) -> None:
    password_hash = await hasher.hash(STRONG)
    assert await hasher.verify(STRONG + "x", password_hash) == (False, None)
    assert await hasher.verify(STRONG.upper(), password_hash) == (False, None)


async def test_verify_unknown_user_is_false(hasher: PasswordHasher) -> None:
    assert await hasher.verify(STRONG, None) == (False, None)
    # The dummy hash is made once, with the configured parameters.
    dummy_hash = hasher._dummy_hash
    assert dummy_hash is not None
    assert dummy_hash.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await hasher.verify("anything-else", None) == (False, None)
    assert hasher._dummy_hash == dummy_hash


async def test_verify_accepts_other_normalisation_form(hasher: PasswordHasher) -> None:
    wide = fullwidth("tangerine-oxbow")
    ascii_form = "tangerine-oxbow"
    assert await hasher.verify(ascii_form, await hasher.hash(wide)) == (True, None)
    assert await hasher.verify(wide, await hasher.hash(ascii_form)) == (True, None)
    decomposed = "cafe\u0301-terrasse"
    composed = unicodedata.normalize("NFC", decomposed)
    assert await hasher.verify(composed, await hasher.hash(decomposed)) == (True, None)


def test_hash_sync_roundtrip_without_event_loop(hasher: PasswordHasher) -> None:
    password_hash = hasher.hash_sync(fullwidth("tangerine-oxbow"))
    assert anyio.run(hasher.verify, "tangerine-oxbow", password_hash) == (True, None)


async def test_hashes_run_in_parallel_up_to_the_cap_and_no_further() -> None:
    hasher = PasswordHasher(
        Settings(argon2_memory_cost=1024, argon2_time_cost=4, password_hash_concurrency=2)
    )
    real = hasher._password_hash
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    class Watched:
        """The real hasher, with the hashes in progress counted, each held until released."""

        def hash(self, password: str) -> str:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                release.wait(10)
                return real.hash(password)
            finally:
                with lock:
                    running -= 1

    hasher._password_hash = Watched()  # type: ignore[assignment]
    pending = asyncio.gather(*(hasher.hash(f"{STRONG}-{i}") for i in range(6)))
    for _ in range(1000):  # until two hashes are held at once (a state, not a duration)
        if running == 2:
            break
        await asyncio.sleep(0.01)
    # Two at once, by two threads: the pool makes no third however many wait.
    assert running == 2
    assert len(hasher._executor._threads) == 2  # type: ignore[attr-defined]
    release.set()
    hashes = await pending
    assert peak == 2
    hasher._password_hash = real
    for i, password_hash in enumerate(hashes):
        assert await hasher.verify(f"{STRONG}-{i}", password_hash) == (True, None)
    hasher.close()


async def test_a_hash_cancelled_before_its_turn_never_runs() -> None:
    hasher = PasswordHasher(
        Settings(argon2_memory_cost=1024, argon2_time_cost=1, password_hash_concurrency=1)
    )
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []
    real = hasher._password_hash

    class Gate:
        def hash(self, password: str) -> str:
            ran.append(password)
            started.set()
            release.wait(10)
            return real.hash(password)

    hasher._password_hash = Gate()  # type: ignore[assignment]
    first = asyncio.ensure_future(hasher.hash(f"{STRONG}-first"))
    await asyncio.to_thread(started.wait, 10)
    queued = asyncio.ensure_future(hasher.hash(f"{STRONG}-queued"))
    await asyncio.sleep(0)  # submitted to the pool, behind the first
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.sleep(0)  # asyncio passes the cancellation on to the pool's future
    release.set()
    assert (await first).startswith("$argon2id$")
    hasher.close()
    await asyncio.to_thread(hasher._executor.shutdown, wait=True)
    assert ran == [f"{STRONG}-first"]


# --- imported and outdated hashes -----------------------------------------------------


def bcrypt_hash(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()


async def test_verify_bcrypt_hash_returns_argon2_replacement(hasher: PasswordHasher) -> None:
    legacy = bcrypt_hash(STRONG.encode())
    is_valid, new_hash = await hasher.verify(STRONG, legacy)
    assert is_valid is True
    assert new_hash is not None
    assert new_hash.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await hasher.verify(STRONG, new_hash) == (True, None)


async def test_verify_bcrypt_wrong_password_is_false(hasher: PasswordHasher) -> None:
    assert await hasher.verify("not-it-at-all", bcrypt_hash(STRONG.encode())) == (False, None)


async def test_verify_bcrypt_over_72_bytes_is_false_without_raising(
    hasher: PasswordHasher,
) -> None:
    # Old bcrypt silently used only the first 72 bytes; pyca/bcrypt >= 5 raises ValueError.
    first_72 = exactly(72)
    legacy = bcrypt_hash(first_72.encode())
    assert await hasher.verify(exactly(100), legacy) == (False, None)
    is_valid, new_hash = await hasher.verify(first_72, legacy)
    assert is_valid is True
    assert new_hash is not None


async def test_verify_bcrypt_hash_of_unnormalised_password(hasher: PasswordHasher) -> None:
    # Imported systems hashed the password as typed: here with a decomposed accent.
    typed = "cafe\u0301-terrasse"
    legacy = bcrypt_hash(typed.encode())
    is_valid, new_hash = await hasher.verify(typed, legacy)
    assert is_valid is True
    assert new_hash is not None
    # The replacement is of the normalised form, so every form verifies from now on.
    assert await hasher.verify("caf\u00e9-terrasse", new_hash) == (True, None)
    assert await hasher.verify(typed, new_hash) == (True, None)


@pytest.mark.parametrize(
    "password_hash",
    [
        "",
        "not-a-hash",
        "$argon2id$v=19$m=1024,t=1,p=1$bad",
        "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$!!!!",
        "$argon2id$v=19$m=0,t=0,p=0$c29tZXNhbHQ$c29tZWhhc2g",
        "$2b$99$J9cR0mT8yXYYIyuOJOaIKuL96is5WHDNpv6k7YlQqpZbNN/Nt6Hxi",
        "$2b$04$.....................................................",
        "$2b$04$short",
        "$1$saltsalt$md5cryptisnotaccepted",
        "\ud800",
    ],
)
async def test_verify_malformed_hash_is_false(hasher: PasswordHasher, password_hash: str) -> None:
    assert await hasher.verify(STRONG, password_hash) == (False, None)


async def test_verify_unencodable_password_is_false(hasher: PasswordHasher) -> None:
    password_hash = await hasher.hash(STRONG)
    assert await hasher.verify("abc\ud800", password_hash) == (False, None)
    assert await hasher.verify("abc\ud800", None) == (False, None)


async def test_verify_rehashes_when_argon2_parameters_change(settings: Settings) -> None:
    old = PasswordHasher(settings)
    new = PasswordHasher(Settings(argon2_memory_cost=2048, argon2_time_cost=1))
    old_hash = await old.hash(STRONG)
    is_valid, new_hash = await new.verify(STRONG, old_hash)
    assert is_valid is True
    assert new_hash is not None
    assert new_hash.startswith("$argon2id$v=19$m=2048,t=1,p=1$")
    assert await new.verify(STRONG, new_hash) == (True, None)
    # A wrong password never yields a replacement hash.
    assert await new.verify("wrong-password", old_hash) == (False, None)
