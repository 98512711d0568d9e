"""Consents: which scopes a user granted a third-party client (the consent page)."""
