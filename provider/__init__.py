"""provider: an OAuth2 / OIDC-style token provider."""

__version__ = "0.1.0"
