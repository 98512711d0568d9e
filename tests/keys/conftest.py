"""RSA keys made once per run: generating one costs tens of milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from provider.keys.store import KeyStore


@pytest.fixture(scope="session")
def rsa_keys() -> list[RSAKey]:
    return [RSAKey.generate_key(2048, private=True) for _ in range(6)]


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")
