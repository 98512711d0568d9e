"""Email one-time codes: verify an address, reset a password, confirm a new address."""
