"""Tables of the database key store: the signing keys, and one version counter that
every change moves on, so that each server process notices a change with one cheap read.

Private keys are stored encrypted (AES-256-GCM under a key derived from the server
secret, bound to their kid); a retired key keeps its row for the record, not its key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class SigningKey(Base):
    __tablename__ = "signing_keys"

    # The RFC 7638 thumbprint (43 base64url characters).
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    # active (signs), published (in the JWKS: before its activation, or while tokens it
    # signed may live), retired (out of the JWKS for good).
    status: Mapped[str] = mapped_column(String(16))
    # Published from this instant on (a key is published as soon as it is stored).
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]
    deactivated_at: Mapped[datetime | None]
    # Nonce and ciphertext of the PKCS#8 PEM (provider.keys.store.KeyBox); None once
    # retired: a key that may never sign again needs no private half.
    private_key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)


class SigningKeyState(Base):
    """One row: the key set's version, moved on by every change in the same transaction.

    Servers poll it once a second. A change is applied only if the version is still the
    one it was planned from (``UPDATE ... WHERE version = :seen``), so of several
    processes that decide to rotate at the same moment exactly one does.
    """

    __tablename__ = "signing_key_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)
