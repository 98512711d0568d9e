"""The OAuth clients table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, LargeBinary, String, false
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class Client(Base):
    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # SHA-256 of a 256-bit generated secret; None for public clients.
    secret_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    name: Mapped[str] = mapped_column(String(200))
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    grant_types: Mapped[list[str]] = mapped_column(JSON)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The authorization code flow (OAuth 2.1): where codes may be sent (exact match; a
    # loopback http URI matches any port, RFC 8252 §7.3), where a logout may return to
    # (OIDC RP-Initiated Logout), and whether the client is ours (no consent screen, but
    # for a public native app).
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default="[]")
    is_first_party: Mapped[bool] = mapped_column(Boolean, default=False,
                                                 server_default=false())
    # When the client was last made active again after a deactivation: its own access
    # tokens (client_credentials) issued before then stay dead (provider.tokens.revocation).
    reactivated_at: Mapped[datetime | None]
    # When the client was last deactivated: its own tokens of that second or before stay
    # dead, also after a reactivation in the same second (their `iat` has whole seconds).
    deactivated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
