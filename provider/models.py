"""Every table, imported in one place for Alembic and metadata-wide operations."""

from provider.audit.models import AuditEvent
from provider.clients.models import Client
from provider.codes.models import EmailCode
from provider.consents.models import Consent
from provider.db import Base
from provider.keys.models import SigningKey, SigningKeyState
from provider.mfa.models import MfaToken, RecoveryCode, TotpAuthenticator
from provider.tokens.models import (
    AuthorizationCode,
    LoginSession,
    RefreshToken,
    RevokedAccessToken,
)
from provider.users.models import User
from provider.web.models import BrowserSession

__all__ = ["AuditEvent", "AuthorizationCode", "Base", "BrowserSession", "Client", "Consent",
           "EmailCode", "LoginSession", "MfaToken", "RecoveryCode", "RefreshToken",
           "RevokedAccessToken", "SigningKey", "SigningKeyState", "TotpAuthenticator", "User"]
