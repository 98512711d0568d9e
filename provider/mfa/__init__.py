"""Multi-factor authentication: TOTP (RFC 6238) with recovery codes, and the mfa_tokens
of the password grant's open ``mfa_required`` flow."""
