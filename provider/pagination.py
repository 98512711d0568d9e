"""Opaque keyset-pagination cursors: base64url of the last row's key parts."""

from __future__ import annotations

import base64

from provider.errors import ValidationFailed

SEPARATOR = "|"


class InvalidCursor(ValidationFailed):
    code = "invalid_cursor"
    title = "The cursor is not valid."


def encode_cursor(*parts: str) -> str:
    raw = SEPARATOR.join(parts).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    """The key parts of a cursor, or InvalidCursor: never an error from deeper down."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise InvalidCursor() from None
    values = raw.split(SEPARATOR, parts - 1)
    if len(values) != parts or not all(values):
        raise InvalidCursor()
    return values
