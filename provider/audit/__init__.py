"""The audit trail: who did what, when, from where; never a secret or a typed value."""
