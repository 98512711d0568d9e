"""Settings read durations from the environment as seconds or ISO 8601."""

from __future__ import annotations

from datetime import timedelta

import pytest

from provider.settings import Settings


@pytest.mark.parametrize(("raw", "expected"), [
    ("900", timedelta(minutes=15)),
    ("1.5", timedelta(seconds=1.5)),
    ("PT15M", timedelta(minutes=15)),
])
def test_durations_from_the_environment_take_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: timedelta
) -> None:
    monkeypatch.setenv("PROVIDER_ACCESS_TOKEN_TTL", raw)
    monkeypatch.setenv("PROVIDER_REFRESH_REUSE_GRACE", raw)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.access_token_ttl == expected
    assert settings.refresh_reuse_grace == expected


def test_a_duration_that_is_neither_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_ACCESS_TOKEN_TTL", "fifteen minutes")
    with pytest.raises(ValueError, match="access_token_ttl"):
        Settings(_env_file=None)  # type: ignore[call-arg]
