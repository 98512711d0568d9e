"""Server-rendered pages of the authorization code flow: login, consent, logout."""
